"""The one place that wires assets, checks, jobs, schedules and resources into Definitions.

`dagster dev` (via workspace.yaml), `dagster asset materialize -m rlhf_dag.definitions`
and the tests all load `defs` from here.
"""

from __future__ import annotations

import dagster as dg

from .config import home_dir
from .pipeline import assets
from .pipeline.automation import automation_sensor
from .pipeline.checks import ASSET_CHECKS
from .pipeline.labeling import label_studio_pull
from .pipeline.labels import LABEL_SOURCES
from .pipeline.handles import HandleIOManager
from .pipeline.launch import StepLauncher
from .pipeline.registry import PolicyRegistry
from .pipeline.resources import LabelStudio, MlflowTracking, QualityGates

LABEL_KEYS = [source.key for source in LABEL_SOURCES]

# Reads every labeled file's sha256 into the instance, so staleness is current.
observe_labels = dg.define_asset_job("observe_labels", selection=dg.AssetSelection.assets(*LABEL_KEYS))


# The core graph, what `rlhf-dag run` materializes (labeling batches are made one at a time, on purpose, by
# `rlhf-dag label-batch`, never by a run of the graph); the alternatives to PPO are a job of their own
# (`rlhf-dag run --select '*'` or the CI command materialize both).
CORE = dg.AssetSelection.groups("rlhf")
# Every asset a run of the graph may build: the core graph and the alternatives, never a labeling batch.
TRAINING_GRAPH = dg.AssetSelection.all() - dg.AssetSelection.assets(assets.labeling_candidates)
rlhf_graph = dg.define_asset_job("rlhf_graph", selection=CORE, description="pretraining -> SFT -> reward model -> PPO -> evaluation")
alternatives = dg.define_asset_job("alternatives", selection=dg.AssetSelection.groups("alternatives"),
                                   description="DPO, GRPO and RLOO beside PPO on the same labels, each evaluated vs SFT and registered; one method table")


def build_definitions() -> dg.Definitions:
    """Definitions for the current environment (RLHF_DAG_HOME decides where the IO manager writes)."""
    return dg.Definitions(
        assets=[
            *LABEL_SOURCES,
            assets.pretraining_corpus,
            assets.base_model,
            assets.sft_dataset,
            assets.sft_model,
            assets.comparison_dataset,
            assets.reward_model,
            assets.ppo_policy,
            assets.policy_evaluation,
            assets.dpo_policy,
            assets.grpo_policy,
            assets.rloo_policy,
            assets.dpo_evaluation,
            assets.grpo_evaluation,
            assets.rloo_evaluation,
            assets.method_comparison,
            assets.labeling_candidates,
        ],
        asset_checks=ASSET_CHECKS,
        jobs=[observe_labels, rlhf_graph, alternatives],
        sensors=[automation_sensor, label_studio_pull],
        resources={
            "mlflow": MlflowTracking(),
            "gates": QualityGates(),
            "registry": PolicyRegistry(),
            "label_studio": LabelStudio(),  # LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY (docs/labeling.md)
            "launcher": StepLauncher(),  # how the trained steps run: RLHF_DAG_LAUNCHER (in-process, torchrun:N, accelerate:<config>, k8s)
            "io_manager": HandleIOManager(base_dir=str(home_dir() / "handles")),
        },
        # Steps run one after another in one process: the graph is a chain of
        # CPU-bound trainings, and a process per step would re-import torch each time.
        executor=dg.in_process_executor,
    )


defs = build_definitions()
