"""The console logger every job writes to (rlhf_dag/pipeline/console.py): one short line per message a person reads."""

from __future__ import annotations

import logging
import re

from rlhf_dag.pipeline.console import PeopleFilter, ShortLines


def _record(message: str, level: int = logging.INFO, step: str | None = "sft_model", event: object = None):
    record = logging.LogRecord(
        "dagster", level, __file__, 1, f"__ASSET_JOB - 0374c32a - {step} - {message}", None, None
    )
    record.dagster_meta = {"orig_message": message, "step_key": step, "dagster_event": event}
    return record


def test_a_steps_line_is_its_time_and_message_without_dagsters_prefix():
    line = ShortLines().format(_record("sft_model: step 5/15, loss 1.545, 191 s left"))
    assert re.fullmatch(r"\d\d:\d\d:\d\d sft_model: step 5/15, loss 1\.545, 191 s left", line), line
    # a message that does not name its step gets the step's name; a warning says so
    assert ShortLines().format(_record("saved", step="ppo_policy")).endswith(" ppo_policy: saved")
    assert (
        ShortLines()
        .format(_record("sft_model: 3 records cut", logging.WARNING))
        .endswith(" WARNING: sft_model: 3 records cut")
    )


def test_dagsters_bookkeeping_events_show_only_at_debug_or_when_something_failed():
    event = object()  # a DagsterEvent: step started, output handled, ...
    info, debug = PeopleFilter(logging.INFO), PeopleFilter(logging.DEBUG)
    assert info.filter(_record("sft_model: step 1/2")) and not info.filter(_record("Started execution", event=event))
    assert debug.filter(_record("Started execution", event=event))
    assert info.filter(_record("Execution of step failed", logging.ERROR, event=event))


def test_a_steps_first_line_says_where_the_run_stands_and_how_long_the_rest_took_last_time():
    """The whole run's estimate: the steps not yet materialized in this run, each at its last materialization's time."""
    from rlhf_dag.pipeline.console import run_progress

    selection = ["base_model", "sft_model", "reward_model", "ppo_policy"]
    last = {"sft_model": 300.0, "reward_model": 600.0, "ppo_policy": 900.0, "base_model": 40.0}
    assert run_progress("sft_model", selection, {"base_model"}, last) == (
        "sft_model: asset 2 of 4 in this run; about 30 min left by each asset's last time"
    )
    assert run_progress("reward_model", selection, {"base_model", "sft_model"}, {"reward_model": 50.0}) == (
        "reward_model: asset 3 of 4 in this run; about 50 s left by each asset's last time"
        " (and no earlier time of ppo_policy)"
    )
    assert run_progress("base_model", selection, set(), {}) == (
        "base_model: asset 1 of 4 in this run (no earlier time of base_model, ppo_policy, reward_model, sft_model)"
    )
    assert run_progress("ppo_policy", selection, {"base_model", "sft_model", "reward_model"}, {"sft_model": 5.0}) == (
        "ppo_policy: asset 4 of 4 in this run (no earlier time of ppo_policy)"
    )


def test_a_training_step_writes_a_line_at_each_fifth_of_its_run_not_at_every_logged_loss(caplog):
    """100 optimizer steps, the loss logged at each (what a short run does): six lines, the first and the last step's
    among them, each with the loss and the time left; the trainer's every value still goes to MLflow."""
    from types import SimpleNamespace

    from rlhf_dag.training.monitor import TrainingMonitor

    monitor = TrainingMonitor("sft_model")
    state = SimpleNamespace(global_step=0, max_steps=100)
    args = SimpleNamespace(world_size=1, logging_steps=1)
    with caplog.at_level(logging.INFO, logger="rlhf_dag.training.monitor"):
        monitor.on_train_begin(args, state, None)
        for step in range(1, 101):
            state.global_step = step
            monitor.on_log(args, state, None, logs={"loss": 1.0 / step})
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(",")[0] for line in lines] == [f"sft_model: step {n}/100" for n in (1, 21, 41, 61, 81, 100)], (
        lines
    )
    assert lines[-1] == "sft_model: step 100/100, loss 0.010, 0 s left"
