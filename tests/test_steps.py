"""The step functions below the Dagster layer: runnable from a spec without Dagster, reading only their inputs."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from rlhf_dag.config import resolve
from rlhf_dag.training.result import StepResult
from rlhf_dag.training.steps import policy_evaluation, pretraining_corpus, sft_dataset

REPO = Path(__file__).resolve().parent.parent


def test_a_labeled_file_is_hashed_from_the_bytes_it_was_parsed_from(tmp_path):
    path = tmp_path / "demonstrations.jsonl"
    path.write_text(json.dumps({"id": "d1", "prompt": "What is 1 + 1?", "response": "1 + 1 = 2."}) + "\n")
    result = sft_dataset({"demonstrations": str(path)}, resolve("sft_dataset"))
    assert result.tags["labels.sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert result.metrics["train_records"] + result.metrics["validation_records"] == 1


def test_the_corpus_holds_out_documents_the_base_model_never_trains_on():
    result = pretraining_corpus({}, resolve("pretraining_corpus"))
    frame = result.frames["corpus.parquet"]
    held_out = set(frame.loc[frame["split"] == "validation", "text"])
    assert result.metrics["held_out_documents"] == len(frame[frame["split"] == "validation"]) > 0
    assert not held_out & set(frame.loc[frame["split"] == "train", "text"])  # a document is in one split only


@pytest.mark.slow
def test_a_step_runs_from_a_spec_in_a_process_without_dagster(smoke_run, tmp_path):
    """`python -m rlhf_dag.training.steps --spec` trains sft_model from the smoke run's upstream folders, never importing dagster."""
    _, _, result = smoke_run
    inputs = {"base_model": result.output_for_node("base_model").path, "sft_dataset": result.output_for_node("sft_dataset").path}
    spec = {"step": "sft_model", "inputs": inputs, "config": resolve("sft_model").model_dump(mode="json"), "output": str(tmp_path / "out")}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    code = (
        "import sys, runpy; sys.argv = ['steps', '--spec', sys.argv[1]]\n"
        "try:\n    runpy.run_module('rlhf_dag.training.steps', run_name='__main__')\n"
        "except SystemExit as e:\n    assert e.code == 0, e.code\n"
        "assert 'dagster' not in sys.modules, 'dagster was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "spec.json")], check=True, cwd=REPO, capture_output=True)
    saved = StepResult.load(tmp_path / "out")
    assert saved.step == "sft_model" and saved.inputs == inputs
    assert saved.metrics["validation_loss"] < saved.metrics["base_validation_loss"]
    assert list((tmp_path / "out").glob("*.safetensors")) and "What is 2 + 2?" in saved.texts["source_prompt_samples.md"]


@pytest.mark.slow
def test_evaluation_refuses_a_reward_model_other_than_the_one_ppo_was_trained_against(smoke_run, isolated_env, tmp_path):
    _, _, result = smoke_run
    other_rm = tmp_path / "other_reward_model"
    shutil.copytree(result.output_for_node("reward_model").path, other_rm)
    inputs = {name: result.output_for_node(name).path for name in ("base_model", "sft_model", "ppo_policy")}
    inputs |= {"reward_model": str(other_rm), "eval_prompts": str(isolated_env / "labels" / "eval_prompts.jsonl")}
    with pytest.raises(ValueError, match="was trained against the reward model .* re-materialize ppo_policy"):
        policy_evaluation(inputs, resolve("policy_evaluation"))


def test_step_results_round_trip_through_their_folder(tmp_path):
    result = StepResult("sft_dataset", {"train_records": 3.0}, ["train_records"], inputs={"demonstrations": "d.jsonl"}, tags={"labels.sha256": "ab"},
                        main_file="x.parquet", frames={"x.parquet": pd.DataFrame({"a": [1]})}, texts={"preview.md": "| a |"},
                        records={"h.json": [{"iteration": 1}]}, curves={"ppo/kl": [(1, 0.5)]})
    result.save(tmp_path)
    loaded = StepResult.load(tmp_path)
    assert (loaded.metrics, loaded.inputs, loaded.tags, loaded.main_file) == (result.metrics, result.inputs, result.tags, result.main_file)
    assert loaded.texts == result.texts and loaded.records == result.records and loaded.curves == result.curves
    assert pd.read_parquet(tmp_path / "x.parquet")["a"].tolist() == [1]
