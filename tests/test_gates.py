"""A failed blocking check stops everything downstream in the run, and says why."""

from __future__ import annotations

import dagster as dg
import pytest

pytestmark = pytest.mark.slow


def test_a_reward_model_below_its_accuracy_floor_blocks_ppo(smoke_run):
    defs, instance, _ = smoke_run
    job = defs.resolve_implicit_global_asset_job_def()
    ppo_before = instance.get_latest_materialization_event(dg.AssetKey("ppo_policy")).run_id
    result = job.execute_in_process(
        instance=instance,
        asset_selection=[dg.AssetKey("reward_model"), dg.AssetKey("ppo_policy")],
        run_config={"resources": {"gates": {"config": {"accuracy_floor": 1.01}}}},  # unreachable on purpose
        raise_on_error=False,
    )
    assert not result.success
    (evaluation,) = [e for e in result.get_asset_check_evaluations() if e.check_name == "reward_model_accuracy"]
    assert not evaluation.passed and "below the floor 1.01" in evaluation.description
    materialized = {e.event_specific_data.materialization.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert materialized == {"reward_model"}  # ppo_policy never ran
    assert instance.get_latest_materialization_event(dg.AssetKey("ppo_policy")).run_id == ppo_before


def test_a_threshold_change_reruns_only_the_check_and_stales_nothing(smoke_run):
    """Thresholds live with the checks (the `gates` resource): a stricter one fails the check alone, no model retrains or goes stale."""
    from rlhf_dag.pipeline.lineage import asset_statuses

    defs, instance, _ = smoke_run
    job = defs.resolve_implicit_global_asset_job_def()
    key = dg.AssetCheckKey(dg.AssetKey("reward_model"), "reward_model_accuracy")
    result = job.get_subset(asset_selection=set(), asset_check_selection={key}).execute_in_process(
        instance=instance, run_config={"resources": {"gates": {"config": {"accuracy_floor": 1.01}}}}, raise_on_error=False)
    (evaluation,) = result.get_asset_check_evaluations()
    assert not evaluation.passed and evaluation.metadata["accuracy_floor"].value == 1.01
    assert not result.get_asset_materialization_events()
    assert all(s.status == "FRESH" for s in asset_statuses(defs, instance))
