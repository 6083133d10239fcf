"""Scheduled retraining: datasets follow labels at once, models wait for the cron tick and retrain only if an input changed."""

from __future__ import annotations

import datetime as dt
import json

import dagster as dg
import pytest

from rlhf_dag.pipeline.lineage import observe_labels

pytestmark = pytest.mark.slow

MODELS = {"base_model", "sft_model", "reward_model", "ppo_policy", "policy_evaluation"}


def _requested(result) -> set[str]:
    return (
        {key.to_user_string() for key in result.get_requested_asset_keys()}
        if hasattr(result, "get_requested_asset_keys")
        else {r.key.to_user_string() for r in result.results if r.true_subset.size}
    )


def test_models_retrain_at_the_cron_tick_only_after_a_label_edit(smoke_run, isolated_env):
    defs, instance, _ = smoke_run
    today = dt.datetime.now(dt.UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    # Nothing changed: neither the first evaluation nor the next nightly tick requests anything.
    first = dg.evaluate_automation_conditions(defs=defs, instance=instance, evaluation_time=today)
    nightly = dg.evaluate_automation_conditions(
        defs=defs, instance=instance, evaluation_time=today + dt.timedelta(hours=15, minutes=5), cursor=first.cursor
    )
    assert _requested(nightly) & (MODELS | {"comparison_dataset", "sft_dataset"}) == set()

    path = isolated_env / "labels" / "comparisons.jsonl"
    original = path.read_bytes()
    path.write_bytes(
        original
        + (json.dumps({"id": "auto", "prompt": "What is 1 + 1?", "chosen": "2.", "rejected": "3."}) + "\n").encode()
    )
    try:
        observe_labels(defs, instance)
        # Right after the edit, before the next tick: the dataset follows eagerly, no model retrains.
        after_edit = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, evaluation_time=today + dt.timedelta(hours=16), cursor=nightly.cursor
        )
        assert "comparison_dataset" in _requested(after_edit)
        assert _requested(after_edit) & MODELS == set()
        assert _materialize(defs, instance, "comparison_dataset")
        # At the next nightly tick the reward model retrains; the models upstream of the edit do not.
        tick = dg.evaluate_automation_conditions(
            defs=defs,
            instance=instance,
            evaluation_time=today + dt.timedelta(days=1, hours=15, minutes=5),
            cursor=after_edit.cursor,
        )
        assert {"reward_model", "ppo_policy", "policy_evaluation"} <= _requested(tick)
        assert _requested(tick) & {"base_model", "sft_model"} == set()
    finally:
        path.write_bytes(original)
        observe_labels(defs, instance)
        assert _materialize(defs, instance, "comparison_dataset")  # back to the shipped file's data version


def _materialize(defs, instance, asset: str) -> bool:
    job = defs.resolve_implicit_global_asset_job_def()
    return job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey(asset)]).success


def test_the_automation_sensor_runs_by_default_and_automation_off_stops_it(monkeypatch):
    """docs/guide.md: saving a label file is enough, since the sensor starts running; RLHF_DAG_AUTOMATION=off starts it stopped."""
    import importlib

    from rlhf_dag.pipeline import automation

    try:
        monkeypatch.delenv("RLHF_DAG_AUTOMATION", raising=False)
        assert importlib.reload(automation).automation_sensor.default_status == dg.DefaultSensorStatus.RUNNING
        monkeypatch.setenv("RLHF_DAG_AUTOMATION", "off")
        assert importlib.reload(automation).automation_sensor.default_status == dg.DefaultSensorStatus.STOPPED
    finally:
        monkeypatch.undo()
        importlib.reload(automation)
    from rlhf_dag.definitions import build_definitions

    assert (
        build_definitions().get_sensor_def("rlhf_automation").default_status
        == automation.automation_sensor.default_status
    )


def test_an_edit_observed_while_no_daemon_ran_is_picked_up_when_it_starts(smoke_run, isolated_env):
    """`rlhf-dag status` observed the edit before `make ui` started: the first evaluation (a fresh cursor) still sees
    the dataset stale and the labels get observed; at the next nightly tick the models downstream retrain."""
    defs, instance, _ = smoke_run
    today = dt.datetime.now(dt.UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    path = isolated_env / "labels" / "comparisons.jsonl"
    original = path.read_bytes()
    path.write_bytes(
        original
        + (json.dumps({"id": "offline", "prompt": "What is 2 + 1?", "chosen": "3.", "rejected": "4."}) + "\n").encode()
    )
    try:
        observe_labels(defs, instance)  # what `rlhf-dag status` does, with no daemon running
        start = dg.evaluate_automation_conditions(defs=defs, instance=instance, evaluation_time=today)
        assert _requested(start) - {
            f"labels/{n}" for n in ("prompts", "demonstrations", "comparisons", "eval_prompts")
        } == {"comparison_dataset"}
        assert "labels/comparisons" in _requested(start)
        again = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, evaluation_time=today + dt.timedelta(minutes=1), cursor=start.cursor
        )
        assert "comparison_dataset" not in _requested(again)  # requested once, not at every evaluation
        # no model retrains on the stale dataset, even at the nightly tick
        tick = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, evaluation_time=today + dt.timedelta(hours=15, minutes=5), cursor=again.cursor
        )
        assert _requested(tick) & MODELS == set()
        assert _materialize(defs, instance, "comparison_dataset")  # the run the first evaluation requested
        tick = dg.evaluate_automation_conditions(
            defs=defs,
            instance=instance,
            evaluation_time=today + dt.timedelta(days=1, hours=15, minutes=5),
            cursor=tick.cursor,
        )
        assert _requested(tick) & MODELS == {"reward_model", "ppo_policy", "policy_evaluation"}
    finally:
        path.write_bytes(original)
        observe_labels(defs, instance)
        assert _materialize(defs, instance, "comparison_dataset")
