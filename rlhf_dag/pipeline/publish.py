"""The one publisher: what every asset body shares around its step function.

An asset body names its inputs and calls `publish`, which resolves the config,
opens the asset's MLflow run, runs the step (training/steps.py) inside it,
saves the result atomically to `<artifacts>/<asset>/<run_id>/`, logs metrics,
curves and artifacts, and returns the handle as a Dagster `Output` with the
metadata the asset's page shows.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import time
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import dagster as dg
from pydantic import Field, create_model

from .. import graph
from ..artifacts import ArtifactHandle, atomic_dir, run_dir
from ..config import StepConfig, active_profile, artifacts_dir, config_class, labels_dir, resolve
from ..data.label_files import label_file
from ..graph import upstream_labels  # noqa: F401  (the labeling location's asset reads it from here, as the training assets do)
from ..training import steps
from ..training.result import StepResult
from .console import log_run_progress
from .launch import StepLauncher
from .resources import MlflowTracking


def asset_config_class(asset: str) -> type[dg.Config]:
    """The Dagster run config of an asset: the step's config class, every field optional.

    A field left unset takes the value of the active profile (RLHF_DAG_PROFILE),
    so the launchpad shows the same documented fields as `rlhf_dag/config.py`.
    A nested config (`lora`) is given whole: its own fields keep their defaults.
    """
    step_cls = config_class(asset)
    fields = {
        name: (
            Optional[_dagster_type(f.annotation)],  # noqa: UP045  (typing.Optional: what Dagster's config schema reads)
            Field(None, description=f"{f.description} (unset: profile value; default {f.default!r})"),
        )
        for name, f in step_cls.model_fields.items()
    }
    nullable = [name for name, f in step_cls.model_fields.items() if _admits_none(f.annotation)]
    if nullable:
        fields[SET_TO_NONE] = (
            Optional[list[str]],  # noqa: UP045
            Field(
                None,
                description=f"fields to set to None, of {', '.join(nullable)} (Dagster run config "
                "reads a null as unset, so None is asked for here)",
            ),
        )
    name = "".join(part.title() for part in asset.split("_")) + "Config"
    return create_model(name, __base__=dg.Config, __doc__=step_cls.__doc__, **fields)


SET_TO_NONE = "set_to_none"


def _admits_none(annotation) -> bool:
    return annotation is None or type(None) in typing.get_args(annotation)


def _dagster_type(annotation):
    """A config field's type as Dagster config takes it: a nested step config (`LoRAConfig | None`) becomes a dg.Config."""
    nested = [a for a in typing.get_args(annotation) if isinstance(a, type) and issubclass(a, StepConfig)]
    if not nested:
        return annotation
    (cls,) = nested
    fields = {name: (f.annotation, Field(f.default, description=f.description)) for name, f in cls.model_fields.items()}
    return create_model(cls.__name__, __base__=dg.Config, __doc__=cls.__doc__, **fields)


def profile_version(asset: str) -> str:
    """The asset's code version: a hash of the config fields that change what it trains or builds, its own and
    every upstream asset's.

    Changing such a default in config.py or switching RLHF_DAG_PROFILE changes it,
    so the asset is stale ("code version changed") like one with an edited input.
    Upstream configs count because Dagster's own stale status (the UI's "Unsynced")
    looks one edge up only: a new base_model config must mark sft_model and
    everything below it unsynced before base_model is rebuilt, as `rlhf-dag status` does.
    Gate thresholds are not step config at all (see checks.py).
    """
    own = resolve(asset).training_hash()
    upstream = [resolve(a).training_hash() for a in graph.upstream_steps(asset)]
    return hashlib.sha256("\n".join([own, *upstream]).encode()).hexdigest()[:16] if upstream else own


def resolve_config(context: dg.AssetExecutionContext, config: dg.Config) -> StepConfig:
    asset = context.asset_key.path[-1]
    given = config.model_dump()
    to_none = given.pop(SET_TO_NONE, None) or []
    fields = config_class(asset).model_fields
    for name in to_none:
        if name not in fields or not _admits_none(fields[name].annotation):
            raise ValueError(
                f"{asset}: run config {SET_TO_NONE} names {name!r}, which is not one of its fields that can be None"
            )
    resolved = resolve(asset, {k: v for k, v in given.items() if v is not None} | dict.fromkeys(to_none))
    context.log.info(f"{asset}: profile '{active_profile()}', config {resolved.model_dump(mode='json')}")
    return resolved


class _ToDagsterLog(logging.Handler):
    def __init__(self, context):
        super().__init__(logging.INFO)
        self.context = context

    def emit(self, record):
        self.context.log.log(record.levelno, record.getMessage())


@contextlib.contextmanager
def training_logs(context: dg.AssetExecutionContext):
    """Show the step's progress (logger 'rlhf_dag') in the Dagster run's event log."""
    logger = logging.getLogger("rlhf_dag")
    handler = _ToDagsterLog(context)
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def lineage_tags(upstream: dict[str, ArtifactHandle]) -> dict:
    """MLflow tags linking a run to the runs, paths and labeled-file hashes of the assets it was computed from."""
    tags = {}
    for name, handle in upstream.items():
        tags[f"upstream.{name}.mlflow_run_id"] = handle.mlflow_run_id or ""
        tags[f"upstream.{name}.path"] = handle.path
        tags.update({f"upstream.{name}.{key}": value for key, value in handle.tags.items()})
    return tags


def _readable(value: float) -> int | float:
    """A figure as people read it: integers as integers, others to 4 significant digits."""
    return int(value) if float(value).is_integer() else float(f"{value:.4g}")


def embedded_image(png: Path) -> dg.MarkdownMetadataValue:
    """A PNG inside the metadata itself, as a data URI, with its path: the asset page's "[Show Markdown]" shows it
    with nothing else running. (`<figure>_plot` shows it in the table itself, served by the MLflow UI: the page
    renders Markdown inline only under 1000 characters.)"""
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    return dg.MetadataValue.md(f"![{png.stem}](data:image/png;base64,{data})\n\n`{png}`")


def publish(
    context: dg.AssetExecutionContext,
    config: dg.Config,
    mlflow: MlflowTracking,
    launcher: StepLauncher | None = None,
    register: Callable[[StepResult, dict[str, ArtifactHandle]], None] | None = None,
    **upstream: ArtifactHandle,
) -> dg.Output[ArtifactHandle]:
    """Run the asset's step on exactly its upstream versions and labeled files; save, track and return its handle.

    With a `launcher` other than in-process, the step runs in a child (torchrun, accelerate, a pod) that saves
    its result into the same run folder; everything around it (MLflow run, handle, metadata) is the same.
    `register` (an evaluation's, registry.py) runs inside the MLflow run before the result is saved, and adds
    its decision to the result's tags, metrics and texts.
    """
    asset, started = context.asset_key.path[-1], time.perf_counter()
    log_run_progress(context, asset)
    labels = [name for name in graph.step(asset).inputs if name in graph.LABEL_FILES]
    cfg = resolve_config(context, config)
    inputs = {name: handle.path for name, handle in upstream.items()} | {
        name: str(label_file(labels_dir(), name)) for name in labels
    }
    if context.has_partition_key:  # a labeling batch: its name is an input of the step
        inputs["batch"] = context.partition_key
    final = run_dir(artifacts_dir(), asset, context.run_id)
    mlflow.end_orphaned_runs(context.instance, asset)
    with mlflow.start_run(context, cfg.model_dump(mode="json"), lineage_tags(upstream)) as run, training_logs(context):
        mlflow.log_label_files({name: inputs[name] for name in labels})
        if launcher is None or launcher.in_process:
            result = steps.step_function(asset)(inputs, cfg)
            if register is not None:
                register(result, upstream)
            with atomic_dir(final) as tmp:
                result.save(tmp, lineage={"mlflow_run_id": run.info.run_id})
        else:
            launcher.launch(context, asset, inputs, cfg, final, run.info.run_id, mlflow.resolved_uri())
            result = StepResult.load(final)
        mlflow.log_result(result, final)
    context.log.info(f"{asset}: saved to {final}")
    handle = ArtifactHandle(
        asset,
        str(final / result.main_file) if result.main_file else str(final),
        cfg.config_hash(),
        run.info.run_id,
        result.metrics,
        {name: h.path for name, h in upstream.items()},
        result.tags,
    )
    metadata = {
        "path": dg.MetadataValue.path(handle.path),
        "mlflow_run_id": run.info.run_id,
        "mlflow": dg.MetadataValue.url(mlflow.run_url(run)),
        "config_hash": handle.config_hash,
        "seconds": round(time.perf_counter() - started, 1),  # the step, saved and tracked: the next run's estimate
        **(
            {"launcher": launcher.resolved(), "world_size": int(result.metrics.get("world_size", 1))}
            if launcher is not None
            else {}
        ),
        **{k: _readable(result.metrics[k]) for k in result.headline if k in result.metrics},
        **{key.replace(".", "_"): value for key, value in result.tags.items()},
        **{name.rsplit(".", 1)[0]: dg.MetadataValue.md(text) for name, text in result.texts.items()},
        **{
            f"{name.rsplit('.', 1)[0]}_plot": dg.MetadataValue.md(f"![{name}]({mlflow.artifact_url(run, name)})")
            for name in result.figures
        },
        **{f"{name.rsplit('.', 1)[0]}_png": embedded_image(final / name) for name in result.figures},
    }
    # A step may name its output's identity (an imported GGUF's sha256); otherwise Dagster derives one from the code
    # version and the inputs' data versions.
    version = result.tags.get("data_version")
    return dg.Output(handle, metadata=metadata, data_version=dg.DataVersion(version) if version else None)
