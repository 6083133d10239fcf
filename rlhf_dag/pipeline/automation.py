"""When assets update on their own (with `dagster dev` or the daemon running).

- Label files are observed when the automation starts and then every few minutes,
  so a saved edit becomes a new data version.
- Datasets follow their labels eagerly: validating and splitting is cheap.
- Models retrain on a cron tick (default nightly, RLHF_DAG_RETRAIN_CRON), and only
  if they are stale, exactly as `rlhf-dag status` says.

Both read staleness from the instance (`stale`, the same code as `rlhf-dag status`),
not only from events seen while the automation was running: an edit saved, or
observed by `rlhf-dag status`, while nothing was running is picked up when the
daemon starts.
"""

from __future__ import annotations

import os

import dagster as dg

from .lineage import STALE, graph_statuses

OBSERVE_CRON = os.environ.get("RLHF_DAG_OBSERVE_CRON", "*/5 * * * *")
RETRAIN_CRON = os.environ.get("RLHF_DAG_RETRAIN_CRON", "0 3 * * *")


class StaleCondition(dg.AutomationCondition):
    """True for an asset `rlhf-dag status` calls STALE: an input's data version or its code version changed since
    its latest materialization, or an upstream asset is stale or missing."""

    @property
    def name(self) -> str:
        return "stale"

    @property
    def description(self) -> str:
        return "stale, as `rlhf-dag status` says"

    def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:
        statuses = {s.key: s.status for s in graph_statuses(context.asset_graph, context.asset_graph_view.instance)}
        stale = statuses.get(context.key.to_user_string()) == STALE
        return dg.AutomationResult(
            context, true_subset=context.candidate_subset if stale else context.get_empty_subset()
        )


stale = StaleCondition()

label_observation = (
    dg.AutomationCondition.initial_evaluation() | dg.AutomationCondition.cron_tick_passed(OBSERVE_CRON)
).with_label(f"observe at start and every tick of {OBSERVE_CRON}")

_not_blocked = (
    ~dg.AutomationCondition.any_deps_missing()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
)

# Eager, and once more when the automation starts for a dataset already stale then
# (newly_true: a failing dataset is not retried on every evaluation).
dataset_automation = (dg.AutomationCondition.eager() | (stale.newly_true() & _not_blocked)).with_label(
    "eager, or stale when the automation starts"
)

# At a tick: retrain if stale or missing, or if an input is being retrained in
# the same tick (so a chain runs in one go).
model_automation = (
    dg.AutomationCondition.in_latest_time_window()
    & dg.AutomationCondition.cron_tick_passed(RETRAIN_CRON)
    & (
        stale
        | dg.AutomationCondition.missing()
        | dg.AutomationCondition.any_deps_match(dg.AutomationCondition.will_be_requested())
    )
    & _not_blocked
    # never on an input that is itself out of date (a dataset whose label file failed validation)
    & ~dg.AutomationCondition.any_deps_match(stale & ~dg.AutomationCondition.will_be_requested())
).with_label(f"retrain at {RETRAIN_CRON} if stale")

# The alternatives to PPO (DPO, GRPO, RLOO and their evaluations) are run on demand first; once
# materialized, they retrain at the tick like the core models when stale.
alternative_automation = (model_automation & ~dg.AutomationCondition.missing()).with_label(
    f"once materialized, retrain at {RETRAIN_CRON} if stale"
)

# The daemon (`make ui` runs one) evaluates these conditions; the sensor is on by
# default so that saving a label file is enough. RLHF_DAG_AUTOMATION=off starts it stopped.
# It runs in the code server (use_user_code_server), where the custom `stale` condition lives.
automation_sensor = dg.AutomationConditionSensorDefinition(
    "rlhf_automation",
    target=dg.AssetSelection.all(include_sources=True),
    default_status=dg.DefaultSensorStatus.STOPPED
    if os.environ.get("RLHF_DAG_AUTOMATION", "on") == "off"
    else dg.DefaultSensorStatus.RUNNING,
    use_user_code_server=True,
    description="Observes the label files, refreshes datasets eagerly and retrains stale models at the nightly tick.",
)
