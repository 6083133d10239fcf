"""Resources: the outside world the assets talk to (MLflow, the file layout)."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import dagster as dg
from pydantic import Field

from ..config import home_dir, mlflow_tracking_uri

SECRET_MARKERS = ("token", "secret", "password", "api_key", "apikey")


def _public(params: dict) -> dict:
    """Drop anything that looks like a credential before it reaches MLflow or Dagster metadata."""
    return {k: v for k, v in params.items() if not any(m in k.lower() for m in SECRET_MARKERS)}


class MlflowTracking(dg.ConfigurableResource):
    """One MLflow run per materialization, in a local SQLite store unless MLFLOW_TRACKING_URI says otherwise."""

    tracking_uri: str | None = Field(None, description="MLflow tracking URI; default MLFLOW_TRACKING_URI, else sqlite under RLHF_DAG_HOME")
    experiment: str = Field("rlhf-dag", description="MLflow experiment that holds every run of the graph")

    def resolved_uri(self) -> str:
        return self.tracking_uri or mlflow_tracking_uri()

    def _experiment_id(self, mlflow) -> str:
        experiment = mlflow.get_experiment_by_name(self.experiment)
        if experiment is not None:
            return experiment.experiment_id
        location = None
        if self.resolved_uri().startswith("sqlite:"):
            # A SQLite store would otherwise put artifacts under the current directory.
            location = (home_dir() / "mlartifacts").as_uri()
        return mlflow.create_experiment(self.experiment, artifact_location=location)

    @contextlib.contextmanager
    def start_run(self, context: dg.AssetExecutionContext, params: dict, tags: dict):
        """Open the run for this asset materialization, tagged with its Dagster run and asset key."""
        import mlflow

        Path(home_dir()).mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(self.resolved_uri())
        asset = context.asset_key.to_user_string()
        run_tags = {"dagster.run_id": context.run_id, "dagster.asset_key": asset, **tags}
        with mlflow.start_run(
            experiment_id=self._experiment_id(mlflow), run_name=f"{asset}-{context.run_id[:8]}", tags=run_tags
        ) as run:
            mlflow.log_params(_public(params))
            yield run

    @staticmethod
    def log_metrics(metrics: dict, step: int | None = None) -> None:
        import mlflow

        finite = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(float(v))}
        mlflow.log_metrics(finite, step=step)

    @staticmethod
    def log_curves(curves: dict[str, list[tuple[int, float]]]) -> None:
        import mlflow

        for name, points in curves.items():
            for step, value in points:
                if math.isfinite(value):
                    mlflow.log_metric(name, value, step=step)

    @staticmethod
    def log_text(text: str, artifact_file: str) -> None:
        import mlflow

        mlflow.log_text(text, artifact_file)

    @staticmethod
    def log_json(obj, artifact_file: str) -> None:
        import mlflow

        mlflow.log_text(json.dumps(obj, indent=2, default=str), artifact_file)

    @staticmethod
    def log_figure(figure, artifact_file: str) -> None:
        import mlflow

        mlflow.log_figure(figure, artifact_file)

    def run_url(self, run) -> str:
        """A link to the run: the server's page when tracking to a server, else the store location."""
        uri = self.resolved_uri()
        if uri.startswith("http"):
            return f"{uri.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
        return f"{uri} (experiment {run.info.experiment_id}, run {run.info.run_id}; `make mlflow-ui` to browse)"
