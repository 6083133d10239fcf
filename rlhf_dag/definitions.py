"""The one place that wires the training graph's assets, checks, jobs, sensors and resources into Definitions.

`dagster dev` (via workspace.yaml), `dagster asset materialize -m rlhf_dag.definitions --select '*'`
and the tests all load `defs` from here. The labeling batches (a partitioned asset) are a code location
of their own, rlhf_dag/labeling_definitions.py, so that every asset here materializes without a partition.
"""

from __future__ import annotations

import dagster as dg

from .pipeline import assets
from .pipeline.automation import automation_sensor
from .pipeline.checks import ASSET_CHECKS
from .pipeline.console import short_console_logger
from .pipeline.handles import handle_io_manager
from .pipeline.label_sources import LABEL_SOURCES
from .pipeline.labeling_loop import label_studio_pull
from .pipeline.launch import StepLauncher
from .pipeline.registry import PolicyRegistry
from .pipeline.resources import LabelStudio, MlflowTracking, QualityGates

LABEL_KEYS = [source.key for source in LABEL_SOURCES]

# Reads every labeled file's sha256 into the instance, so staleness is current.
observe_labels = dg.define_asset_job("observe_labels", selection=dg.AssetSelection.assets(*LABEL_KEYS))


# The core graph, what `rlhf-dag run` materializes; the alternatives to PPO are a job of their own
# (`rlhf-dag run --select '*'` or the CI command materialize both).
CORE = dg.AssetSelection.groups("rlhf")
# Every asset a run of the graph may build: the core graph and the alternatives. A labeling batch is never one
# of them: batches are made one at a time, on purpose (`rlhf-dag label-batch`), in the labeling code location.
TRAINING_GRAPH = dg.AssetSelection.all()
rlhf_graph = dg.define_asset_job(
    "rlhf_graph", selection=CORE, description="pretraining -> SFT -> reward model -> PPO -> evaluation"
)
alternatives = dg.define_asset_job(
    "alternatives",
    selection=dg.AssetSelection.groups("alternatives"),
    description="DPO, GRPO and RLOO beside PPO on the same labels, each evaluated vs SFT and registered; one method table",
)


def build_definitions() -> dg.Definitions:
    """Definitions for the current environment (RLHF_DAG_HOME decides where the IO manager writes)."""
    return dg.Definitions(
        assets=[
            *LABEL_SOURCES,
            *assets.ASSETS.values(),
        ],
        asset_checks=ASSET_CHECKS,
        jobs=[observe_labels, rlhf_graph, alternatives],
        # label_studio_pull reads the batches (dynamic partitions) from the instance and runs observe_labels: it lives here
        sensors=[automation_sensor, label_studio_pull],
        # one short line per message on the console (pipeline/console.py); the UI keeps every event
        loggers={"console": short_console_logger},
        resources={
            "mlflow": MlflowTracking(),
            "gates": QualityGates(),
            "registry": PolicyRegistry(),
            "label_studio": LabelStudio(),  # the pull sensor's: LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY (docs/labeling.md)
            "launcher": StepLauncher(),  # how the trained steps run: RLHF_DAG_LAUNCHER (in-process, torchrun:N, accelerate:<config>, k8s)
            "io_manager": handle_io_manager(),
        },
        # Steps run one after another in one process: the graph is a chain of
        # CPU-bound trainings, and a process per step would re-import torch each time.
        executor=dg.in_process_executor,
    )


defs = build_definitions()
