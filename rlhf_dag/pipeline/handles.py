"""The IO manager of the graph: one small JSON handle per asset and run, never "the latest file".

A handle names a materialization's folder, MLflow run and figures (the weights
stay where the publisher saved them). It is stored as
`<home>/handles/<asset>/<run_id>.json`, so two concurrent runs of one asset
each keep their own. A downstream step loads the version its own run produced
when there is one, else the version of the upstream's latest materialization
in the instance: exactly what Dagster's lineage records as its input.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import dagster as dg

from ..artifacts import ArtifactHandle, atomic_path
from ..config import home_dir


class HandleIOManager(dg.ConfigurableIOManager):
    """Run-scoped JSON handles under `base_dir`."""

    base_dir: str

    def _path(self, asset: dg.AssetKey, run_id: str) -> Path:
        return Path(self.base_dir) / "/".join(asset.path) / f"{run_id}.json"

    def handle_output(self, context: dg.OutputContext, obj: ArtifactHandle) -> None:
        with atomic_path(self._path(context.asset_key, context.run_id)) as tmp:
            tmp.write_text(json.dumps(dataclasses.asdict(obj), indent=1), encoding="utf-8")

    def load_input(self, context: dg.InputContext) -> ArtifactHandle:
        key = context.asset_key
        try:
            own = self._path(key, context.step_context.run_id)
        except dg.DagsterInvariantViolationError:  # loaded outside a run (`Definitions.load_asset_value`)
            own = None
        if own is not None and own.is_file():
            path = own
        else:
            event = context.instance.get_latest_materialization_event(key)
            if event is None:
                raise FileNotFoundError(
                    f"{key.to_user_string()} has never been materialized; materialize it (or select it in the same run) first"
                )
            path = self._path(key, event.run_id)
        return ArtifactHandle(**json.loads(path.read_text(encoding="utf-8")))


def handle_io_manager() -> HandleIOManager:
    """The IO manager of both code locations (definitions.py, labeling_definitions.py): one handle store under RLHF_DAG_HOME."""
    return HandleIOManager(base_dir=str(home_dir() / "handles"))
