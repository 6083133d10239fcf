"""The `rlhf-dag` command line as a user types it: make-labels, run --select, status, retrain --dry-run, step --spec."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from rlhf_dag.cli import main
from rlhf_dag.data.label_files import load_labels
from rlhf_dag.training.result import StepResult

REPO = Path(__file__).resolve().parent.parent
ASSETS = [
    "pretraining_corpus",
    "base_model",
    "sft_dataset",
    "sft_model",
    "comparison_dataset",
    "reward_model",
    "ppo_policy",
    "policy_evaluation",
]
LABEL_FILES = {
    "prompts": "prompts",
    "demonstrations": "demonstrations",
    "comparisons": "comparisons",
    "eval_prompts": "eval_prompts",
}


def test_make_labels_writes_four_valid_files_and_says_how_many_records(tmp_path):
    """Through the installed console script, as the README runs it (seed 1: not the shipped files)."""
    out = tmp_path / "labels"
    script = Path(sys.executable).parent / "rlhf-dag"
    proc = subprocess.run(
        [str(script), "make-labels", "--seed", "1", "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    printed = dict(line.rsplit(": ", 1) for line in proc.stdout.splitlines())
    assert sorted(printed) == sorted(str(out / f"{name}.jsonl") for name in LABEL_FILES)
    for name in LABEL_FILES:
        labels = load_labels(out / f"{name}.jsonl", name)  # the same validation the assets run
        assert printed[str(out / f"{name}.jsonl")] == f"{len(labels.records)} records" and labels.records
    # what made them, to make them again
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["command"] == f"rlhf-dag make-labels --seed 1 --out {out}" and provenance["seed"] == 1
    assert provenance["counts"] == {name: len(load_labels(out / f"{name}.jsonl", name).records) for name in LABEL_FILES}
    eval_prompts = {r["prompt"] for r in load_labels(out / "eval_prompts.jsonl", "eval_prompts").records}
    assert not eval_prompts & {r["prompt"] for r in load_labels(out / "demonstrations.jsonl", "demonstrations").records}
    again = subprocess.run(
        [str(script), "make-labels", "--seed", "1", "--out", str(tmp_path / "again")],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    assert again.returncode == 0
    for name in LABEL_FILES:  # a seed gives byte-identical files
        assert (out / f"{name}.jsonl").read_bytes() == (tmp_path / "again" / f"{name}.jsonl").read_bytes()


@pytest.mark.parametrize(
    "weight,message",
    [("story", "expected KIND=NUMBER"), ("story=two", "expected KIND=NUMBER"), ("poem=2", "unknown kind poem")],
)
def test_make_labels_refuses_a_kind_weight_it_cannot_read(tmp_path, weight, message):
    """Before anything is sampled or written: the weight is named, and --out stays empty."""
    with pytest.raises(SystemExit, match=message):
        main(["make-labels", "--out", str(tmp_path / "out"), "--policy", "unused", "--kind-weight", weight])
    assert not (tmp_path / "out").exists()


def test_make_labels_provenance_names_its_kind_weights():
    """The command in provenance.json, run again, makes the same files: it must carry every --kind-weight."""
    from rlhf_dag.cli import _kind_weights, argv_of

    args = argparse.Namespace(
        seed=0,
        out="assets/x",
        policy=None,
        policy_sft="smollm2",
        samples_per_prompt=4,
        max_new_tokens=96,
        prompts=None,
        demonstrations=None,
        comparisons=320,
        policy_comparisons=320,
        kind_weight=["story=2", "code=1.5"],
        all_pairs=True,
    )
    assert argv_of(args)[-5:] == ["--kind-weight", "story=2", "--kind-weight", "code=1.5", "--all-pairs"]
    assert _kind_weights(args.kind_weight) == {"story": 2.0, "code": 1.5}


def test_step_runs_a_spec_without_dagster(tmp_path, isolated_env, capsys):
    spec = {
        "step": "sft_dataset",
        "inputs": {"demonstrations": str(isolated_env / "labels" / "demonstrations.jsonl")},
        "config": {"validation_fraction": 0.2},
        "output": str(tmp_path / "out"),
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    assert main(["step", "--spec", str(tmp_path / "spec.json")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "out")
    saved = StepResult.load(tmp_path / "out")
    records = len(load_labels(isolated_env / "labels" / "demonstrations.jsonl", "demonstrations").records)
    assert saved.metrics["train_records"] + saved.metrics["validation_records"] == records
    assert 0.1 < saved.metrics["validation_records"] / records < 0.3  # the spec's config reached the step


# outside the core graph: `rlhf-dag run` leaves them out, `status` shows them missing and optional
ALTERNATIVES = [
    "dpo_policy",
    "grpo_policy",
    "rloo_policy",
    "dpo_evaluation",
    "grpo_evaluation",
    "rloo_evaluation",
    "method_comparison",
]


def _latest_runs(instance) -> dict[str, str]:
    return {a: instance.get_latest_materialization_event(dg.AssetKey(a)).run_id for a in ASSETS}


@pytest.mark.slow
def test_status_shows_every_asset_fresh_after_a_run(smoke_run, capsys):
    assert main(["status"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert {row[0]: row[1] for row in rows} == {asset: "FRESH" for asset in ASSETS} | {
        asset: "MISSING" for asset in ALTERNATIVES
    }
    assert all("(optional: rlhf-dag run --select '*')" in " ".join(row) for row in rows if row[0] in ALTERNATIVES)


def test_status_takes_a_relative_dagster_home(smoke_run, monkeypatch, capsys):
    """`DAGSTER_HOME=.rlhf_dag/dagster rlhf-dag status` from the repo root: Dagster itself refuses a relative path."""
    import os

    home = Path(os.environ["DAGSTER_HOME"])
    monkeypatch.chdir(home.parent)
    monkeypatch.setenv("DAGSTER_HOME", home.name)
    assert main(["status"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert {row[0]: row[1] for row in rows} == {asset: "FRESH" for asset in ASSETS} | {
        asset: "MISSING" for asset in ALTERNATIVES
    }
    assert all("(optional: rlhf-dag run --select '*')" in " ".join(row) for row in rows if row[0] in ALTERNATIVES)


@pytest.mark.slow
def test_retrain_dry_run_names_what_an_edit_made_stale_and_does_nothing(smoke_run, isolated_env, capsys):
    _, instance, _ = smoke_run
    before = _latest_runs(instance)
    path = isolated_env / "labels" / "comparisons.jsonl"
    original = path.read_bytes()
    path.write_bytes(
        original
        + (
            json.dumps({"id": "cli-pair", "prompt": "What is 1 + 1?", "chosen": "1 + 1 = 2.", "rejected": "1 + 1 = 3."})
            + "\n"
        ).encode()
    )
    try:
        assert main(["retrain", "--dry-run"]) == 0
        planned = capsys.readouterr().out
        assert main(["status"]) == 0
        status = capsys.readouterr().out
    finally:
        path.write_bytes(original)
    assert (
        "rlhf-dag retrain --dry-run: would materialize comparison_dataset, reward_model, ppo_policy, policy_evaluation"
        in planned
    )
    assert "comparison_dataset     STALE    labels/comparisons changed" in status
    assert _latest_runs(instance) == before  # a dry run materializes nothing
    assert main(["retrain", "--dry-run"]) == 0
    assert capsys.readouterr().out.strip() == "rlhf-dag retrain: everything is fresh; nothing to do"


@pytest.mark.slow
def test_run_select_materializes_only_the_selection_and_prints_its_figures(smoke_run, capsys):
    _, instance, _ = smoke_run
    before = _latest_runs(instance)
    assert main(["run", "--select", "sft_dataset"]) == 0
    out = capsys.readouterr().out
    after = _latest_runs(instance)
    assert {a for a in ASSETS if after[a] != before[a]} == {"sft_dataset"}
    assert "rlhf-dag: profile 'smoke'" in out, out
    assert "\nsft_dataset " in out and "\nsft_dataset: train_records " in out, out
    assert "base_model" not in out, out
    assert main(["status"]) == 0  # the same labels and config give the same data version: nothing downstream went stale
    assert "STALE" not in capsys.readouterr().out
