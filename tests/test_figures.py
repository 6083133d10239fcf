"""`make figures`: the README's figures block is rewritten from a real `rlhf-dag run`, naming the machine."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from figures import BEGIN, END  # noqa: E402
from harness import machine  # noqa: E402


def test_make_figures_rewrites_only_the_marked_block_and_names_the_cpu(tmp_path):
    readme = tmp_path / "README.md"
    text = (REPO / "README.md").read_text()
    assert text.count(BEGIN) == 1 and text.count(END) == 1
    readme.write_text(text)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, "bench/figures.py", "--profile", "smoke", "--readme", str(readme)],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    new = readme.read_text()
    before, _, rest = new.partition(BEGIN)
    block, _, after = rest.partition(END)
    assert before == text.partition(BEGIN)[0] and after == text.partition(END)[2]
    assert machine()["cpu"] in block and f"torch {torch.__version__}" in block and "profile `smoke`" in block
    lines = {line.split(": ", 1)[0]: line for line in block.splitlines() if ": " in line}
    assert (
        " validation_accuracy 0." in lines["reward_model"] and " win_rate_ppo_vs_sft 0." in lines["policy_evaluation"]
    )
    assert "Which figures vary" in block
