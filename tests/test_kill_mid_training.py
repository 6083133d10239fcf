"""A materialization killed with SIGKILL in the middle of training, or while saving, leaves the previous model current and loadable."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import mlflow
import pytest
from transformers import AutoModelForCausalLM

from rlhf_dag.config import mlflow_tracking_uri

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent


def test_sigkill_during_sft_keeps_the_previous_model_and_a_rerun_succeeds(smoke_run, isolated_env):
    defs, instance, _ = smoke_run
    before = instance.get_latest_materialization_event(dg.AssetKey("sft_model"))
    previous = defs.load_asset_value("sft_model", instance=instance)
    finals = {d.name for d in Path(previous.path).parent.iterdir() if not d.name.startswith(".tmp-")}

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dagster",
            "asset",
            "materialize",
            "-m",
            "rlhf_dag.definitions",
            "--select",
            "sft_model",
        ],
        cwd=REPO,
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    deadline = time.time() + 180
    started = False
    for (
        line
    ) in proc.stdout:  # kill once training has run optimizer steps (TrainingMonitor logs 'step N/M' every few steps)
        if "sft_model: step " in line:
            started = True
            break
        assert time.time() < deadline, "the materialization never started"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert started and proc.returncode == -signal.SIGKILL

    after = instance.get_latest_materialization_event(dg.AssetKey("sft_model"))
    assert after.run_id == before.run_id  # nothing new became current
    assert {
        d.name for d in Path(previous.path).parent.iterdir() if not d.name.startswith(".tmp-")
    } == finals  # no half-written model under a final name
    AutoModelForCausalLM.from_pretrained(previous.path)  # the previous version still loads

    killed = _mlflow_runs("sft_model", instance.get_runs(limit=1)[0].run_id)
    assert [r.info.status for r in killed] == ["RUNNING"]  # the killed process could not end its MLflow run

    job = defs.resolve_implicit_global_asset_job_def()
    rerun = job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey("sft_model")])
    assert rerun.success
    AutoModelForCausalLM.from_pretrained(rerun.output_for_node("sft_model").path)
    assert mlflow.get_run(killed[0].info.run_id).info.status == "KILLED"  # ended by the next run of the asset


def _mlflow_runs(asset: str, dagster_run_id: str):
    mlflow.set_tracking_uri(mlflow_tracking_uri())
    return mlflow.search_runs(
        experiment_names=["rlhf-dag"],
        output_format="list",
        filter_string=f"tags.`dagster.asset_key` = '{asset}' and tags.`dagster.run_id` = '{dagster_run_id}'",
    )


# Materializes base_model in a subprocess that hangs once the weights and tokenizer are in the temporary folder.
SAVE_THEN_HANG = """
import sys, time
from pathlib import Path
import dagster as dg
from rlhf_dag.definitions import defs
from rlhf_dag.training import result

write_model_card = result.write_model_card

def write_model_card_then_hang(path, *args):
    write_model_card(path, *args)
    Path(sys.argv[1]).write_text(str(path))
    time.sleep(600)

result.write_model_card = write_model_card_then_hang
defs.resolve_implicit_global_asset_job_def().execute_in_process(instance=dg.DagsterInstance.get(), asset_selection=[dg.AssetKey("base_model")])
"""


def test_sigkill_while_saving_keeps_the_previous_model_and_the_rerun_removes_the_leftover(smoke_run, tmp_path):
    defs, instance, _ = smoke_run
    before = instance.get_latest_materialization_event(dg.AssetKey("base_model"))
    previous = defs.load_asset_value("base_model", instance=instance)
    parent = Path(previous.path).parent
    finals = {d.name for d in parent.iterdir() if not d.name.startswith(".tmp-")}

    marker, log = tmp_path / "saving", tmp_path / "log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", SAVE_THEN_HANG, str(marker)],
            cwd=REPO,
            env=dict(os.environ),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.time() + 300
    while not marker.exists():
        assert proc.poll() is None and time.time() < deadline, (
            f"the materialization never reached the save:\n{log.read_text()[-3000:]}"
        )
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)

    leftover = Path(marker.read_text())
    assert (
        leftover.parent == parent and leftover.name.startswith(".tmp-") and list(leftover.glob("*.safetensors"))
    )  # killed mid-save
    assert {d.name for d in parent.iterdir() if not d.name.startswith(".tmp-")} == finals  # nothing under a final name
    assert instance.get_latest_materialization_event(dg.AssetKey("base_model")).run_id == before.run_id
    AutoModelForCausalLM.from_pretrained(previous.path)

    job = defs.resolve_implicit_global_asset_job_def()
    rerun = job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey("base_model")])
    assert rerun.success
    AutoModelForCausalLM.from_pretrained(rerun.output_for_node("base_model").path)
    assert not leftover.exists()  # its process is dead, so the re-run's save removed it
