"""The labeling loop's code location (`rlhf_dag_labeling` in workspace.yaml): one labeling batch per partition.

`labeling_candidates` is partitioned (a dynamic partition per batch, added by `rlhf-dag label-batch` or in
the UI), and a partitioned asset in the training graph's location would make
`dagster asset materialize -m rlhf_dag.definitions --select '*'` refuse to run without `--partition`. So it
is served from here. The policies it samples from (`sft_model`, `ppo_policy`) and the labeled files upstream
of it are assets of the `rlhf_dag` location, declared here as external assets: the IO manager loads their
handles from their latest materializations in the same Dagster instance (DAGSTER_HOME).
"""

from __future__ import annotations

import dagster as dg

from .pipeline.console import short_console_logger
from .pipeline.handles import handle_io_manager
from .pipeline.labeling_loop import labeling_candidates
from .pipeline.resources import LabelStudio, MlflowTracking


def build_labeling_definitions() -> dg.Definitions:
    """Definitions of the labeling location for the current environment (RLHF_DAG_HOME: the handles it reads and writes)."""
    upstream = [
        dg.AssetSpec(key, description="Materialized by the rlhf_dag code location (rlhf_dag/definitions.py).")
        for key in sorted(labeling_candidates.dependency_keys, key=lambda k: k.to_user_string())
    ]
    return dg.Definitions(
        assets=[*upstream, labeling_candidates],
        # one short line per message on the console (pipeline/console.py); the UI keeps every event
        loggers={"console": short_console_logger},
        resources={
            "mlflow": MlflowTracking(),
            "label_studio": LabelStudio(),  # LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY (docs/labeling.md)
            "io_manager": handle_io_manager(),
        },
        executor=dg.in_process_executor,
    )


defs = build_labeling_definitions()
