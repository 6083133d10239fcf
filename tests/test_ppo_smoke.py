"""A short PPO run on the smoke graph's SFT model and reward model actually optimizes the reward."""

from __future__ import annotations

import copy

import pytest
import torch

from rlhf_dag.config import resolve
from rlhf_dag.training.models import load_causal_lm, load_reward_model
from rlhf_dag.training.ppo import TrainingDivergedError, ppo_train

pytestmark = pytest.mark.slow

PPO_OVERRIDES = dict(
    iterations=10,
    rollout_batch_size=16,
    minibatch_size=8,
    ppo_epochs=2,
    max_new_tokens=12,
    learning_rate=3e-3,
    kl_coef=0.01,
)


def _config(**overrides):
    # The smoke model rarely emits EOS, and the missing-EOS penalty would hide the RM signal
    # (the penalty itself is tested through ppo_train in test_ppo_train.py).
    return resolve("ppo_policy", {**PPO_OVERRIDES, "missing_eos_penalty": None, **overrides})


def _models(smoke_run):
    _, _, result = smoke_run
    sft, rm = result.output_for_node("sft_model"), result.output_for_node("reward_model")
    policy, tokenizer = load_causal_lm(sft.path)
    reference, _ = load_causal_lm(sft.path)
    scorer, _ = load_reward_model(rm.path)
    critic, _ = load_reward_model(rm.path)
    return policy, reference, scorer, critic, tokenizer


def test_ppo_raises_the_reward_and_changes_the_policy(smoke_run):
    policy, reference, scorer, critic, tokenizer = _models(smoke_run)
    before = copy.deepcopy(policy.state_dict())
    frozen_before = [copy.deepcopy(model.state_dict()) for model in (reference, scorer)]
    prompts = [
        "What is 2 + 2?",
        "What is 3 + 4?",
        "Help me write a Python function that outputs whether a number is even.",
        "Write an email to my mother wishing her Merry Christmas, and ask how dad is doing.",
    ]
    result = ppo_train(policy, reference, scorer, critic, tokenizer, prompts, _config())
    rm = [row["rm_score"] for row in result.history]
    assert sum(rm[-3:]) / 3 > sum(rm[:3]) / 3, rm
    after = result.policy.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    # the frozen models' weights were not touched (not merely marked requires_grad=False, which ppo_train sets itself)
    for model, weights in zip((reference, scorer), frozen_before):
        assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    for key in ("kl", "approx_kl", "clipfrac", "entropy", "vf_loss", "eos_rate", "kl_coef"):
        assert key in result.history[-1]
    # [PPO-2] on a real model: before each iteration's first update the ratio is 1 and nothing is clipped
    assert all(
        row["first_minibatch_max_ratio_error"] < 1e-4 and row["first_minibatch_clipfrac"] == 0 for row in result.history
    )


def test_a_non_finite_reward_stops_ppo_naming_the_iteration(smoke_run):
    policy, reference, scorer, critic, tokenizer = _models(smoke_run)
    with torch.no_grad():
        scorer.score.weight.fill_(float("nan"))
    cfg = _config(iterations=1)
    with pytest.raises(TrainingDivergedError, match="iteration 1"):
        ppo_train(policy, reference, scorer, critic, tokenizer, ["What is 2 + 2?"] * 4, cfg)
