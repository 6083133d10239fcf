"""A NaN/inf loss in pretraining, SFT or reward-model training fails the asset naming the step and the global step; nothing is saved."""

from __future__ import annotations

import re

import dagster as dg
import pytest

from rlhf_dag.config import artifacts_dir

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("model", ["base_model", "sft_model", "reward_model"])
def test_a_diverging_learning_rate_stops_training_naming_the_global_step(smoke_run, model):
    defs, instance, _ = smoke_run
    before = instance.get_latest_materialization_event(dg.AssetKey(model))
    job = defs.resolve_implicit_global_asset_job_def()
    result = job.execute_in_process(
        instance=instance,
        asset_selection=[dg.AssetKey(model)],
        run_config={"ops": {model: {"config": {"learning_rate": 1e30}}}},  # the weights overflow after one full step
        raise_on_error=False,
    )
    assert not result.success
    error = result.get_step_failure_events()[0].event_specific_data.error.cause  # under Dagster's step error
    assert error.cls_name == "TrainingDivergedError", error.message
    assert re.search(
        rf"TrainingDivergedError: {model}: non-finite training loss \(nan\) at global step \d+ of \d+( \(the loss is logged every \d+ steps\))?; lower learning_rate",
        error.message,
    ), error.message
    assert not (artifacts_dir() / model / result.run_id).exists()  # no model directory under a final name
    assert instance.get_latest_materialization_event(dg.AssetKey(model)).run_id == before.run_id
