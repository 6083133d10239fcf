"""Resources: the outside world the assets talk to (MLflow, the file layout)."""

from __future__ import annotations

import contextlib
import math
import os
import socket
import warnings
from pathlib import Path

import dagster as dg
from pydantic import Field

from ..artifacts import process_alive
from ..config import GATES, GateConfig, home_dir, mlflow_tracking_uri, resolve
from ..data.label_files import file_sha256

SECRET_MARKERS = ("token", "secret", "password", "api_key", "apikey")

# MLflow 3's UI opens an experiment in the view this tag names; without it, an experiment
# with no traces opens on the (empty) GenAI traces page instead of its training runs.
EXPERIMENT_KIND_TAG, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"


def _public(params: dict) -> dict:
    """Drop anything that looks like a credential before it reaches MLflow or Dagster metadata."""
    return {k: v for k, v in params.items() if not any(m in k.lower() for m in SECRET_MARKERS)}


class MlflowTracking(dg.ConfigurableResource):
    """One MLflow run per materialization, in a local SQLite store unless MLFLOW_TRACKING_URI says otherwise."""

    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI; default MLFLOW_TRACKING_URI, else sqlite under RLHF_DAG_HOME"
    )
    experiment: str = Field("rlhf-dag", description="MLflow experiment that holds every run of the graph")

    def resolved_uri(self) -> str:
        return self.tracking_uri or mlflow_tracking_uri()

    def _experiment_id(self, mlflow) -> str:
        experiment = mlflow.get_experiment_by_name(self.experiment)
        if experiment is not None:
            if experiment.tags.get(EXPERIMENT_KIND_TAG) != MODEL_TRAINING:
                mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
            return experiment.experiment_id
        location = None
        if self.resolved_uri().startswith("sqlite:"):
            # A SQLite store would otherwise put artifacts under the current directory.
            location = (home_dir() / "mlartifacts").as_uri()
        return mlflow.create_experiment(
            self.experiment, artifact_location=location, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING}
        )

    @contextlib.contextmanager
    def start_run(self, context: dg.AssetExecutionContext, params: dict, tags: dict):
        """Open the run for this asset materialization, tagged with its Dagster run and asset key."""
        import mlflow

        Path(home_dir()).mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(self.resolved_uri())
        asset = context.asset_key.to_user_string()
        run_tags = {
            "dagster.run_id": context.run_id,
            "dagster.asset_key": asset,
            "rlhf_dag.host": socket.gethostname(),
            "rlhf_dag.pid": str(os.getpid()),
            **tags,
        }
        with mlflow.start_run(
            experiment_id=self._experiment_id(mlflow), run_name=f"{asset}-{context.run_id[:8]}", tags=run_tags
        ) as run:
            mlflow.log_params(_public(params))
            yield run

    @staticmethod
    def log_label_files(files: dict[str, str]) -> None:
        """The labeled files a step read, as the run's input datasets (the runs table's Dataset column): named after
        the file, its digest the file's sha256 (cut to the 36 characters MLflow stores; the whole one is a tag)."""
        import mlflow
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset

        for name, path in files.items():
            sha = file_sha256(path)
            # MLflow registers "local" and "file" sources alike: it warns, and picks one
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                source = resolve_dataset_source(str(path))
            dataset = MetaDataset(source, name=Path(path).name, digest=sha[:36])
            mlflow.log_input(dataset, context="training", tags={"label_file": name, "sha256": sha})

    @staticmethod
    def log_metrics(metrics: dict, step: int | None = None) -> None:
        import mlflow

        finite = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(float(v))}
        mlflow.log_metrics(finite, step=step)

    def log_result(self, result, folder: Path) -> None:
        """A step's final metrics, its curves from loops without a tracker integration (PPO), its tags and its files.

        The TRL trainers' curves are already in the run: transformers' MLflow integration logged them.
        """
        import mlflow

        self.log_metrics(result.metrics)
        by_step: dict[int, dict[str, float]] = {}
        for name, points in result.curves.items():
            for step, value in points:
                by_step.setdefault(step, {})[name] = value
        for step, values in by_step.items():  # one call per step, not per point
            self.log_metrics(values, step=step)
        mlflow.set_tags(result.tags)
        for name in [*result.texts, *result.figures, *result.records, "README.md"]:
            if (folder / name).is_file():
                mlflow.log_artifact(str(folder / name))

    def end_orphaned_runs(self, instance, asset: str) -> None:
        """Mark KILLED the MLflow runs of `asset` still RUNNING whose process is gone (a killed materialization)."""
        import mlflow
        from mlflow.tracking import MlflowClient

        mlflow.set_tracking_uri(self.resolved_uri())
        if mlflow.get_experiment_by_name(self.experiment) is None:
            return
        running = mlflow.search_runs(
            experiment_names=[self.experiment],
            output_format="list",
            filter_string=f"tags.`dagster.asset_key` = '{asset}' and attributes.status = 'RUNNING'",
        )
        for run in running:
            dagster_run = instance.get_run_by_id(run.data.tags.get("dagster.run_id", ""))
            host, pid = run.data.tags.get("rlhf_dag.host"), run.data.tags.get("rlhf_dag.pid", "")
            process_gone = host == socket.gethostname() and pid.isdigit() and not process_alive(int(pid))
            if process_gone or dagster_run is None or dagster_run.is_finished:
                MlflowClient().set_terminated(run.info.run_id, "KILLED")

    def _ui_base(self) -> str:
        """The tracking server, or where `make mlflow-ui` serves a local store."""
        uri = self.resolved_uri()
        return uri.rstrip("/") if uri.startswith("http") else "http://127.0.0.1:5000"

    def run_url(self, run) -> str:
        """A link to the run in the MLflow UI."""
        return f"{self._ui_base()}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"

    def artifact_url(self, run, name: str) -> str:
        """Where the MLflow UI serves one of the run's artifacts (an image a Markdown page can show)."""
        return f"{self._ui_base()}/get-artifact?path={name}&run_uuid={run.info.run_id}"


class QualityGates(dg.ConfigurableResource):
    """The blocking checks' thresholds. Unset fields take the active profile's value (config.py, `gates`).

    Set one in the launchpad under `resources: gates: config:` to re-run a check
    against another threshold: no model is retrained, since thresholds are no part of any asset's code version.
    """

    accuracy_floor: float | None = Field(None, description=GateConfig.model_fields["accuracy_floor"].description)
    kl_budget: float | None = Field(None, description=GateConfig.model_fields["kl_budget"].description)
    eos_rate_floor: float | None = Field(None, description=GateConfig.model_fields["eos_rate_floor"].description)

    def thresholds(self) -> GateConfig:
        given = {
            "accuracy_floor": self.accuracy_floor,
            "kl_budget": self.kl_budget,
            "eos_rate_floor": self.eos_rate_floor,
        }
        return resolve(GATES, {k: v for k, v in given.items() if v is not None})


class LabelStudio(dg.ConfigurableResource):
    """A Label Studio server: where `labeling_candidates` pushes a batch, and where pulls read the rankings back.

    URL and token come from the environment (LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY: a personal access
    token, docs/labeling.md); the token never reaches MLflow or a materialization's metadata.
    """

    url: str | None = Field(
        None,
        description="Label Studio's address; default LABEL_STUDIO_URL, else http://127.0.0.1:8080 (`make label-studio`)",
    )

    def resolved_url(self) -> str:
        return self.url or os.environ.get("LABEL_STUDIO_URL") or "http://127.0.0.1:8080"

    def client(self):
        from ..data.label_studio import LabelStudioClient

        return LabelStudioClient(self.resolved_url(), os.environ.get("LABEL_STUDIO_API_KEY", ""))

    def push_batch(self, batch: str, candidates: list[dict], policy: str, policy_run_id: str) -> dict:
        """Create the batch's project (titled with the batch name) and import one task per prompt; returns metadata.

        A batch goes out once: a project of that name that already has tasks is an error, not a second copy.
        """
        from ..data.label_studio import LabelStudioError, task_data

        client = self.client()
        project = client.project_id(batch)
        if project is not None and client.export(project):
            raise LabelStudioError(
                f"batch {batch!r} is already in Label Studio ({self.resolved_url()}/projects/{project}); "
                f"add a new partition of labeling_candidates for a new batch"
            )
        if project is None:
            project = client.create_project(
                batch, f"rlhf-dag labeling batch {batch}: responses of {policy} (MLflow run {policy_run_id})"
            )
        tasks = [
            task_data(c["prompt_id"], c["prompt"], c["responses"], batch, policy, policy_run_id) for c in candidates
        ]
        return {
            "label_studio_project": dg.MetadataValue.url(f"{self.resolved_url()}/projects/{project}/data"),
            "tasks_pushed": client.import_tasks(project, tasks),
        }
