"""The sample CI workflow retrains only what changed: its commands, run twice against one persisted home."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
WORKFLOW = yaml.safe_load((REPO / ".github" / "workflows" / "rlhf.yml").read_text())
STEPS = WORKFLOW["jobs"]["retrain"]["steps"]


def _step(name: str) -> dict:
    (step,) = [s for s in STEPS if s.get("name") == name]
    return step


def test_the_home_persists_keyed_on_the_label_files():
    cache = _step("restore the last home")
    assert cache["uses"].startswith("actions/cache@")
    assert WORKFLOW["jobs"]["retrain"]["env"]["RLHF_DAG_HOME"] == "${{ github.workspace }}/" + cache["with"]["path"]
    assert "hashFiles('assets/*.jsonl'" in cache["with"]["key"]
    assert cache["with"]["key"].startswith(cache["with"]["restore-keys"])  # a miss restores the latest home


def test_the_second_run_of_the_workflow_builds_nothing(tmp_path):
    env = {
        **os.environ,
        "RLHF_DAG_PROFILE": "smoke",
        "RLHF_DAG_HOME": str(tmp_path / "home"),
        "RLHF_DAG_LABELS_DIR": str(tmp_path / "labels"),
        "OMP_NUM_THREADS": "1",
    }
    env.pop("DAGSTER_HOME")  # as on the runner: the instance lives in the persisted home
    env.pop("MLFLOW_TRACKING_URI", None)
    shutil.copytree(REPO / "assets", tmp_path / "labels")
    script = _step("retrain what changed")["run"]

    def ci_run() -> str:
        done = subprocess.run(
            ["bash", "-e", "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done.stdout

    first = ci_run()
    built = re.search(r"^materialized (.+) in ", first, re.MULTILINE)
    assert built and set(built[1].split(", ")) == {
        "pretraining_corpus",
        "base_model",
        "sft_dataset",
        "sft_model",
        "comparison_dataset",
        "reward_model",
        "ppo_policy",
        "policy_evaluation",
    }, first
    runs = sorted((tmp_path / "home" / "artifacts").glob("*/*"))

    second = ci_run()
    assert "everything is fresh; nothing to do" in second and not re.search(r"^materialized ", second, re.MULTILINE), (
        second
    )
    assert sorted((tmp_path / "home" / "artifacts").glob("*/*")) == runs
