"""The RLHF steps as software-defined assets, built from their rows in graph.py.

Each asset only names its inputs: the step function does the work and the
publisher (publish.py) owns the MLflow run, the atomic save, the handle and the
metadata. Upstream steps are the asset's inputs (their handles); the labeled
files a step reads reach it by path, and every `labels/<name>` source upstream
of an asset is declared as its dependency.

Group `rlhf` is the core graph (`rlhf-dag run`, `make run`); group
`alternatives` holds DPO, GRPO and RLOO beside PPO, their evaluations and the
one table that compares every method (`rlhf-dag run --select '*'`, or the
`alternatives` job). Each evaluation registers its policy in the MLflow model
registry (pipeline/registry.py). The labeling batches (group `labeling`, a
partitioned asset) live in their own code location (labeling_definitions.py).
"""

import dagster as dg

from .. import graph
from ..artifacts import ArtifactHandle
from .automation import alternative_automation, dataset_automation, model_automation
from .publish import asset_config_class, profile_version, publish

AUTOMATION = {"dataset": dataset_automation, "model": model_automation, "alternative": alternative_automation}


def label_keys(*names: str) -> list[dg.AssetKey]:
    return [dg.AssetKey(["labels", name]) for name in names]


def build_asset(step: graph.Step) -> dg.AssetsDefinition:
    """One step's asset. Besides its inputs it depends on every labeled file upstream of it, so that Dagster's
    stale status (the UI's "Unsynced") marks it as soon as such a file is edited, as `rlhf-dag status` does."""
    upstream = [name for name in step.inputs if name not in graph.LABEL_FILES]
    resources = (
        {"mlflow"}
        | ({"launcher"} if step.launched else set())
        | (
            {"registry", "gates"}
            if step.group != "labeling" and step.method and step.name != f"{step.method}_policy"
            else set()
        )
    )

    def body(context: dg.AssetExecutionContext, config, **handles: ArtifactHandle) -> dg.Output[ArtifactHandle]:
        r = context.resources
        register = r.registry.registration(step.method, r.gates) if "registry" in resources else None
        return publish(context, config, r.mlflow, r.launcher if step.launched else None, register=register, **handles)

    body.__annotations__ = {
        "context": dg.AssetExecutionContext,
        "config": asset_config_class(step.name),
        "return": dg.Output[ArtifactHandle],
    }
    return dg.asset(
        name=step.name,
        ins={name: dg.AssetIn(name) for name in upstream},
        required_resource_keys=resources,
        code_version=profile_version(step.name),
        automation_condition=AUTOMATION[step.automation],
        group_name=step.group,
        kinds={step.kind},
        deps=label_keys(*graph.upstream_labels(step.name)),
        description=step.description,
    )(body)


# Every step but the labeling batches, in the table's order.
ASSETS = {step.name: build_asset(step) for step in graph.STEPS if step.group != "labeling"}
