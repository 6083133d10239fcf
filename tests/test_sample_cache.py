"""A model's samples are generated once: keyed by the model's folder, the prompts and the sampling settings, and reused
wherever the same key comes up again (issue: generation near the machine's limit)."""

from __future__ import annotations

import pytest

from rlhf_dag.training import generate
from rlhf_dag.training.generate import Sample, sample_once


@pytest.fixture
def generations(monkeypatch):
    """Replaces the sampler: each call is recorded, and answers what a model would (a response per text)."""
    calls = []

    def fake_sample(
        model, tokenizer, prompts, texts, max_new_tokens, temperature, batch_size=32, seed=0, precision="fp32"
    ):
        calls.append((model, list(texts), max_new_tokens, temperature, seed, precision))
        return [Sample(p, f"{model} answers {t} ({seed})", True, 3) for p, t in zip(prompts, texts)]

    monkeypatch.setattr(generate, "sample", fake_sample)
    return calls


def _sample(store, model="sft", folder="artifacts/sft_model/run-1", texts=("a?", "b?"), **settings):
    settings = {"max_new_tokens": 8, "temperature": 1.0, "seed": 0} | settings
    return sample_once(folder, model, None, list(texts), [f"<{t}>" for t in texts], store=store, **settings)


def test_a_reused_key_runs_no_generation_and_gives_the_same_samples(tmp_path, generations):
    first, reused = _sample(tmp_path)
    assert (reused, len(generations)) == (False, 1)
    again, reused = _sample(tmp_path)
    assert reused is True
    assert len(generations) == 1  # no generation ran for the reused key
    assert again == first


@pytest.mark.parametrize(
    "change",
    [
        {"folder": "artifacts/ppo_policy/run-2", "model": "ppo"},  # another model
        {"texts": ("a?", "c?")},  # other prompts
        {"max_new_tokens": 16},
        {"temperature": 0.7},
        {"seed": 1},
        {"precision": "bf16"},
    ],
    ids=["model", "prompts", "max_new_tokens", "temperature", "seed", "precision"],
)
def test_any_other_model_prompt_or_setting_generates_anew(tmp_path, generations, change):
    _sample(tmp_path)
    _, reused = _sample(tmp_path, **change)
    assert reused is False and len(generations) == 2


def test_a_folder_written_again_is_another_model(tmp_path, generations):
    """bench/quality.py writes each seed's PPO policy to the same folder, run after run: samples of the policy a
    previous run left there must not come back for the new one (they did, and a seed's evaluation judged them)."""
    folder = tmp_path / "quality" / "seed-1" / "ppo_policy"
    folder.mkdir(parents=True)
    weights = folder / "model.safetensors"
    weights.write_bytes(b"the policy of an earlier run")
    _sample(tmp_path / "store", folder=folder)
    weights.write_bytes(b"this run's policy, trained anew")
    _, reused = _sample(tmp_path / "store", folder=folder)
    assert reused is False and len(generations) == 2
    _, reused = _sample(tmp_path / "store", folder=folder)
    assert reused is True and len(generations) == 2  # the new weights' samples are reused in their turn


def test_the_evaluation_samples_at_its_configured_precision(tmp_path, generations, monkeypatch):
    """`sample_precision` reaches the sampler from the evaluation's config, for the held-out prompts and the source
    prompts alike (a setting that is logged but never used would make bf16 figures read as fp32 ones)."""
    from rlhf_dag.config import EvalConfig
    from rlhf_dag.data.gold import GoldJudge
    from rlhf_dag.training import evaluate

    monkeypatch.setenv("RLHF_DAG_HOME", str(tmp_path))
    monkeypatch.setattr(evaluate, "score_texts", lambda rm, tok, prompts, responses: [0.0] * len(responses))
    monkeypatch.setattr(evaluate, "format_prompt", lambda p, tok: f"<{p}>")
    cfg = EvalConfig(sample_precision="bf16", samples_per_prompt=1, source_prompt_samples=1)
    evaluate.evaluate_policies({"sft": ("sft", True, tmp_path / "sft")}, None, None, ["What is 1 + 2?"], cfg, None)
    evaluate.source_prompt_pass_rates("sft", None, True, cfg, GoldJudge(), tmp_path / "sft")
    assert [call[-1] for call in generations] == ["bf16", "bf16"]
