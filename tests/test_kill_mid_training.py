"""A materialization killed with SIGKILL in the middle of training leaves the previous model current and loadable."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
from transformers import AutoModelForCausalLM

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent


def test_sigkill_during_sft_keeps_the_previous_model_and_a_rerun_succeeds(smoke_run, isolated_env):
    defs, instance, _ = smoke_run
    before = instance.get_latest_materialization_event(dg.AssetKey("sft_model"))
    previous = defs.load_asset_value("sft_model", instance=instance)

    proc = subprocess.Popen(
        [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "rlhf_dag.definitions", "--select", "sft_model"],
        cwd=REPO, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    deadline = time.time() + 180
    started = False
    for line in proc.stdout:  # kill as soon as the asset body has begun training
        if "sft_model: profile 'smoke'" in line:
            started = True
            break
        assert time.time() < deadline, "the materialization never started"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert started and proc.returncode == -signal.SIGKILL

    after = instance.get_latest_materialization_event(dg.AssetKey("sft_model"))
    assert after.run_id == before.run_id  # nothing new became current
    run_dirs = [d for d in (Path(previous.path).parent).iterdir() if not d.name.startswith(".tmp-")]
    assert [d.name for d in run_dirs] == [Path(previous.path).name]  # no half-written model under a final name
    AutoModelForCausalLM.from_pretrained(previous.path)  # the previous version still loads

    job = defs.resolve_implicit_global_asset_job_def()
    rerun = job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey("sft_model")])
    assert rerun.success
    AutoModelForCausalLM.from_pretrained(rerun.output_for_node("sft_model").path)
