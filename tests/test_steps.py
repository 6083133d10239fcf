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
from rlhf_dag.training.dataset_steps import pretraining_corpus, sft_dataset
from rlhf_dag.training.evaluate import policy_evaluation
from rlhf_dag.training.result import StepResult

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
    inputs = {
        "base_model": result.output_for_node("base_model").path,
        "sft_dataset": result.output_for_node("sft_dataset").path,
    }
    spec = {
        "step": "sft_model",
        "inputs": inputs,
        "config": resolve("sft_model").model_dump(mode="json"),
        "output": str(tmp_path / "out"),
    }
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
    assert (
        list((tmp_path / "out").glob("*.safetensors")) and "What is 2 + 2?" in saved.texts["source_prompt_samples.md"]
    )


@pytest.mark.slow
def test_evaluation_refuses_a_reward_model_other_than_the_one_ppo_was_trained_against(
    smoke_run, isolated_env, tmp_path
):
    _, _, result = smoke_run
    other_rm = tmp_path / "other_reward_model"
    shutil.copytree(result.output_for_node("reward_model").path, other_rm)
    inputs = {name: result.output_for_node(name).path for name in ("base_model", "sft_model", "ppo_policy")}
    inputs |= {"reward_model": str(other_rm), "eval_prompts": str(isolated_env / "labels" / "eval_prompts.jsonl")}
    with pytest.raises(ValueError, match="was trained against the reward model .* re-materialize ppo_policy"):
        policy_evaluation(inputs, resolve("policy_evaluation"))


def test_step_results_round_trip_through_their_folder(tmp_path):
    result = StepResult(
        "sft_dataset",
        {"train_records": 3.0},
        ["train_records"],
        inputs={"demonstrations": "d.jsonl"},
        tags={"labels.sha256": "ab"},
        main_file="x.parquet",
        frames={"x.parquet": pd.DataFrame({"a": [1]})},
        texts={"preview.md": "| a |"},
        records={"h.json": [{"iteration": 1}]},
        curves={"ppo/kl": [(1, 0.5)]},
    )
    result.save(tmp_path)
    loaded = StepResult.load(tmp_path)
    assert (loaded.metrics, loaded.inputs, loaded.tags, loaded.main_file) == (
        result.metrics,
        result.inputs,
        result.tags,
        result.main_file,
    )
    assert loaded.texts == result.texts and loaded.records == result.records and loaded.curves == result.curves
    assert pd.read_parquet(tmp_path / "x.parquet")["a"].tolist() == [1]


@pytest.mark.slow
def test_the_evaluation_compares_ppo_with_sft_samples(smoke_run, isolated_env, monkeypatch):
    """Win rates pair each model's gold scores with its opponent's, from the models the inputs name.

    evaluate_policies is replaced by one returning known gold scores per sample: PPO 0.6 everywhere; SFT 0.4 on
    the first quarter of the samples, 0.6 on the second, 0.8 on the second half; base 0.5. So PPO vs SFT wins a
    quarter, ties a quarter and loses half: (1/4 + 1/8) = 0.375; SFT vs base loses a quarter: 0.75; PPO vs base 1.0.
    (PPO against its own samples would tie everywhere: 0.5.)
    """
    import torch

    from rlhf_dag.data.label_files import load_labels
    from rlhf_dag.training import evaluate
    from rlhf_dag.training.generate import Sample
    from rlhf_dag.training.models import load_causal_lm

    _, _, result = smoke_run
    inputs = {
        name: result.output_for_node(name).path for name in ("base_model", "sft_model", "ppo_policy", "reward_model")
    }
    inputs["eval_prompts"] = str(isolated_env / "labels" / "eval_prompts.jsonl")
    seen = {}

    def known_scores(policies, tokenizer, reward_model, prompts, cfg, judge, reused=None):
        seen.update(policies)
        repeated = [p for p in prompts for _ in range(cfg.samples_per_prompt)]
        n = len(repeated)
        gold = {
            "ppo": [0.6] * n,
            "base": [0.5] * n,
            "sft": [0.4 if i < n // 4 else 0.6 if i < n // 2 else 0.8 for i in range(n)],
        }
        return {
            name: {
                "samples": [Sample(p, "2 + 2 = 4.", True, 4) for p in repeated],
                "gold": gold[name],
                "rm": [0.0] * n,
                "gold_mean": sum(gold[name]) / n,
                "gold_judged": n,
                "rm_mean": 0.0,
                "eos_rate": 1.0,
                "response_tokens": 4.0,
            }
            for name in policies
        }

    monkeypatch.setattr(evaluate, "evaluate_policies", known_scores)
    cfg = resolve("policy_evaluation", {"samples_per_prompt": 4})  # 4 x 80 prompts: the quarters split evenly
    metrics = policy_evaluation(inputs, cfg).metrics
    assert metrics["samples"] == 4 * len(load_labels(inputs["eval_prompts"], "eval_prompts").records)
    assert metrics["win_rate_ppo_vs_sft"] == pytest.approx(0.375)
    assert metrics["win_rate_sft_vs_base"] == pytest.approx(0.75)
    assert metrics["win_rate_ppo_vs_base"] == pytest.approx(1.0)
    assert {name: instruct for name, (_, instruct, _) in seen.items()} == {"base": False, "sft": True, "ppo": True}
    # each model's samples are keyed by the folder its input names
    assert {name: str(folder) for name, (_, _, folder) in seen.items()} == {
        "base": inputs["base_model"],
        "sft": inputs["sft_model"],
        "ppo": inputs["ppo_policy"],
    }
    for name in ("base", "sft", "ppo"):  # each model is the one its input names (PPO moved away from SFT)
        asset = {"base": "base_model", "sft": "sft_model", "ppo": "ppo_policy"}[name]
        expected = load_causal_lm(inputs[asset])[0].state_dict()
        assert all(torch.equal(v, expected[k]) for k, v in seen[name][0].state_dict().items()), name
    sft_weights = load_causal_lm(inputs["sft_model"])[0].state_dict()
    assert any(not torch.equal(v, sft_weights[k]) for k, v in seen["ppo"][0].state_dict().items())
