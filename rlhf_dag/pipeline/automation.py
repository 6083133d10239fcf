"""When assets update on their own (with `dagster dev` or the daemon running).

- Label files are observed every few minutes, so a saved edit becomes a new data version.
- Datasets follow their labels eagerly: validating and splitting is cheap.
- Models retrain on a cron tick (default nightly, RLHF_DAG_RETRAIN_CRON), and only
  if an upstream data version changed since they were last materialized.
"""

from __future__ import annotations

import os

import dagster as dg

OBSERVE_CRON = os.environ.get("RLHF_DAG_OBSERVE_CRON", "*/5 * * * *")
RETRAIN_CRON = os.environ.get("RLHF_DAG_RETRAIN_CRON", "0 3 * * *")

label_observation = dg.AutomationCondition.cron_tick_passed(OBSERVE_CRON).with_label(f"observe every tick of {OBSERVE_CRON}")

dataset_automation = dg.AutomationCondition.eager()

# At a tick: retrain if an input was updated since this model was last requested,
# or if an input is being retrained in the same tick (so a chain runs in one go).
model_automation = (
    dg.AutomationCondition.in_latest_time_window()
    & dg.AutomationCondition.cron_tick_passed(RETRAIN_CRON)
    & (
        dg.AutomationCondition.any_deps_updated().since_last_handled()
        | dg.AutomationCondition.missing()
        | dg.AutomationCondition.any_deps_match(dg.AutomationCondition.will_be_requested())
    )
    & ~dg.AutomationCondition.any_deps_missing()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
).with_label(f"retrain at {RETRAIN_CRON} if an upstream changed")

# The daemon (`make ui` runs one) evaluates these conditions; the sensor is on by
# default so that saving a label file is enough. RLHF_DAG_AUTOMATION=off starts it stopped.
automation_sensor = dg.AutomationConditionSensorDefinition(
    "rlhf_automation",
    target=dg.AssetSelection.all(include_sources=True),
    default_status=dg.DefaultSensorStatus.STOPPED if os.environ.get("RLHF_DAG_AUTOMATION", "on") == "off" else dg.DefaultSensorStatus.RUNNING,
    description="Observes the label files, refreshes datasets eagerly and retrains stale models at the nightly tick.",
)
