"""What every asset body shares: its config, its log, its MLflow run, its saved model."""

from __future__ import annotations

import contextlib
import logging
from typing import Optional

import dagster as dg
from pydantic import Field, create_model

from ..artifacts import ArtifactHandle, atomic_dir, run_dir, write_model_card
from ..config import STEP_CONFIGS, StepConfig, active_profile, artifacts_dir, resolve
from ..data.gold import gold_score
from ..training.generate import Sample


def asset_config_class(asset: str) -> type[dg.Config]:
    """The Dagster run config of an asset: the step's config class, every field optional.

    A field left unset takes the value of the active profile (RLHF_DAG_PROFILE),
    so the launchpad shows the same documented fields as `rlhf_dag/config.py`.
    """
    step_cls = STEP_CONFIGS[asset]
    fields = {
        name: (Optional[f.annotation], Field(None, description=f"{f.description} (unset: profile value; default {f.default!r})"))
        for name, f in step_cls.model_fields.items()
    }
    name = "".join(part.title() for part in asset.split("_")) + "Config"
    return create_model(name, __base__=dg.Config, __doc__=step_cls.__doc__, **fields)


def profile_version(asset: str) -> str:
    """The asset's code version: a hash of its config under the active profile.

    Changing a default in config.py or switching RLHF_DAG_PROFILE changes it, so
    Dagster marks the asset stale ("code version changed") like an edited input.
    """
    return resolve(asset).config_hash()


def resolve_config(context: dg.AssetExecutionContext, config: dg.Config) -> StepConfig:
    asset = context.asset_key.path[-1]
    resolved = resolve(asset, config.model_dump())
    context.log.info(f"{asset}: profile '{active_profile()}', config {resolved.model_dump()}")
    return resolved


class _ToDagsterLog(logging.Handler):
    def __init__(self, context):
        super().__init__(logging.INFO)
        self.context = context

    def emit(self, record):
        self.context.log.log(record.levelno, record.getMessage())


@contextlib.contextmanager
def training_logs(context: dg.AssetExecutionContext):
    """Show the training code's progress (logger 'rlhf_dag') in the Dagster run's event log."""
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


def save_model(context, model, tokenizer, *, title: str, description: str, lineage: dict, metrics: dict, extra=None) -> str:
    """Save weights + tokenizer + model card to `<artifacts>/<asset>/<run_id>/`, atomically."""
    asset = context.asset_key.path[-1]
    final = run_dir(artifacts_dir(), asset, context.run_id)
    with atomic_dir(final) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_model_card(tmp, title, description, lineage, metrics)
        if extra is not None:
            extra(tmp)
    context.log.info(f"{asset}: saved to {final}")
    return str(final)


def lineage_tags(**upstream: ArtifactHandle) -> dict:
    """MLflow tags linking a run to the runs (and config hashes) of the assets it was computed from."""
    tags = {}
    for name, handle in upstream.items():
        tags[f"upstream.{name}.mlflow_run_id"] = handle.mlflow_run_id or ""
        tags[f"upstream.{name}.path"] = handle.path
        for key, value in handle.metrics.items():
            if key.endswith("sha256"):
                tags[f"upstream.{name}.{key}"] = value
    return tags


def samples_markdown(samples: list[Sample], title: str = "response") -> str:
    """A table of prompt, response, gold score and EOS flag for Dagster metadata and MLflow."""
    rows = [f"| prompt | {title} | gold | EOS |", "|---|---|---|---|"]
    for s in samples:
        gold = gold_score(s.prompt, s.response, s.ended_with_eos)
        cell = s.response.replace("|", "\\|").replace("\n", "<br>") or "(empty)"
        rows.append(f"| {s.prompt} | {cell} | {gold.score:.2f} | {'yes' if s.ended_with_eos else 'no'} |" if gold else f"| {s.prompt} | {cell} | - | {s.ended_with_eos} |")
    return "\n".join(rows)


def headline_metadata(handle: ArtifactHandle, mlflow_link: str, keys: list[str]) -> dict:
    meta = {"path": dg.MetadataValue.path(handle.path), "mlflow_run_id": handle.mlflow_run_id, "mlflow": mlflow_link, "config_hash": handle.config_hash}
    meta.update({k: float(handle.metrics[k]) for k in keys if k in handle.metrics})
    return meta
