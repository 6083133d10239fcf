"""Two runs materializing the same asset at once each write their own complete model directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhf_dag.config import artifacts_dir, home_dir

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent


def test_two_concurrent_materializations_of_base_model_keep_two_complete_models(smoke_run):
    defs, instance, _ = smoke_run
    parent = artifacts_dir() / "base_model"
    before = {d.name for d in parent.iterdir()}
    command = [
        sys.executable,
        "-m",
        "dagster",
        "asset",
        "materialize",
        "-m",
        "rlhf_dag.definitions",
        "--select",
        "base_model",
    ]
    procs = [
        subprocess.Popen(
            command, cwd=REPO, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=600)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], "\n".join(out[-3000:] for out in outputs)

    runs = [
        instance.get_run_record_by_id(r.run_id)
        for r in instance.fetch_materializations(dg.AssetKey("base_model"), limit=2).records
    ]
    assert max(r.start_time for r in runs) < min(r.end_time for r in runs)  # the two runs really overlapped
    new = sorted(d for d in parent.iterdir() if d.name not in before)
    assert [d.name for d in new] == sorted(
        r.dagster_run.run_id for r in runs
    )  # one final directory per run, no temp left
    for path in new:
        AutoModelForCausalLM.from_pretrained(path)
        AutoTokenizer.from_pretrained(path)
    # each run's handle names the model its own run wrote, whichever run finished last
    for run in runs:
        handle = json.loads((home_dir() / "handles" / "base_model" / f"{run.dagster_run.run_id}.json").read_text())
        assert handle["path"] == str(parent / run.dagster_run.run_id)
    assert defs.load_asset_value("base_model", instance=instance).path in {str(d) for d in new}
