"""`ppo_train` itself, end to end, on models small enough to reason about by hand (docs/ppo.md, tags [PPO-n]).

Policies and critics are the toy Llamas of tests/toy.py. Reward models are either a real tiny
sequence-classification Llama or a stub with `per_token_scores`' interface
whose score is rigged (a count of one word in the response, or a constant).
"""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from toy import A_ID, ASSISTANT_ID, SAMPLED, WORDS, causal_lm, one_thread, toy_tokenizer, value_model  # noqa: F401  (one_thread: an autouse fixture)

from rlhf_dag.config import PPOConfig
from rlhf_dag.data.chat import EOS
from rlhf_dag.training.monitor import TrainingDivergedError
from rlhf_dag.training.ppo import ppo_train

PROMPTS = ["a b", "c d e f", "g", "h a b c d e"]  # different lengths, so rollouts are left-padded


class RiggedReward(nn.Module):
    """A reward model with `per_token_scores`' interface: a backbone at `base_model_prefix` and a `score` head.

    The score at a position is weight * (occurrences of `token` in the response so far) + bias,
    so the RM score of a rollout is weight * count + bias; weight 0 makes it the constant `bias`.
    """

    base_model_prefix = "counter"

    def __init__(self, token: int = A_ID, weight: float = 1.0, bias: float = 0.0):
        super().__init__()
        self.token = token
        self.score = nn.Linear(1, 1)
        with torch.no_grad():
            self.score.weight.fill_(weight)
            self.score.bias.fill_(bias)

    def counter(self, input_ids, attention_mask=None, **_):
        in_response = (input_ids == ASSISTANT_ID).cumsum(dim=1) > 0
        hits = ((input_ids == self.token) & in_response).cumsum(dim=1)
        # a counter keeps no keys or values: after a prompt opening run once ([PPO-20]) it counts in the rows alone
        return SimpleNamespace(last_hidden_state=hits.float().unsqueeze(-1), cache=SimpleNamespace(layers=[]))


def ppo_config(**overrides) -> PPOConfig:
    values = dict(
        iterations=2,
        rollout_batch_size=16,
        minibatch_size=4,
        ppo_epochs=2,
        max_new_tokens=8,
        temperature=1.0,
        learning_rate=1e-2,
        kl_coef=0.01,
        adaptive_kl=False,
        missing_eos_penalty=None,
        seed=0,
    )
    return PPOConfig(**{**values, **overrides})


def train(policy, reward_model, cfg: PPOConfig, reference=None, critic=None):
    reference = copy.deepcopy(policy) if reference is None else reference
    return ppo_train(policy, reference, reward_model, critic or value_model(), toy_tokenizer(), PROMPTS, cfg)


# ---------------------------------------------------------------- PPO raises the reward it is given


@pytest.mark.parametrize("seed", [0, 1])
def test_ppo_raises_a_rigged_reward_far_above_an_lr_0_control(seed):
    """Guards the sign and wiring of the whole update: +1 per "a" in the response must be learned.

    Control (lr=0, same seed): a near-uniform choice among 8 words and EOS for up to 8 tokens
    gives E[count of "a"] = sum_t (8/9)^t / 9 = 1 - (8/9)^8 = 0.61. Its final score (mean over
    the last fifth: 3 iterations x 16 rollouts) has a standard error of about 0.12, so a margin
    of 3 more "a"s per response is over 20 standard errors; the trained policy has 8 positions to fill.
    """
    cfg = ppo_config(iterations=15, seed=seed)
    trained = train(causal_lm(seed), RiggedReward(A_ID), cfg)
    control = train(causal_lm(seed), RiggedReward(A_ID), cfg.model_copy(update={"learning_rate": 0.0}))
    assert abs(control.metrics["final_rm_score"] - (1 - (8 / 9) ** 8)) < 0.4, control.history
    assert trained.metrics["final_rm_score"] > control.metrics["final_rm_score"] + 3.0, [
        r["rm_score"] for r in trained.history
    ]


# ---------------------------------------------------------------- [PPO-2] ratio 1 before any update


def test_ratio_is_one_and_nothing_is_clipped_on_the_first_minibatch():
    """[PPO-2]: the scoring pass and the optimizing pass compute the same log-probs (temperature, positions, mode).

    At the first minibatch of each iteration nothing has been updated, so exp(new - old) must be 1
    on every response token and the clip inactive. approx_kl > 0 shows later minibatches did move.
    """
    result = train(causal_lm(0), RiggedReward(A_ID), ppo_config(iterations=3, temperature=0.7, learning_rate=3e-2))
    for row in result.history:
        assert row["first_minibatch_max_ratio_error"] < 1e-5, row
        assert row["first_minibatch_clipfrac"] == 0.0, row
    assert all(row["approx_kl"] > 1e-6 for row in result.history), result.history


# ---------------------------------------------------------------- [PPO-7] the clip range bounds each update


@pytest.mark.parametrize("seed", [0, 1])
def test_a_tight_clip_range_holds_the_policy_near_its_rollout_policy(seed):
    """[PPO-7]: `clip_range` reaches the clipped surrogate of `ppo_train`.

    One rollout of 16, minibatches of 4, 4 epochs: 16 AdamW steps at lr 1e-2 on the same rollout.
    With clip_range 0.05, a token's gradient stops once its ratio leaves [0.95, 1.05] in the direction
    its advantage pushes: after the first steps most tokens are clipped (seen 53-71% over seeds 0-13),
    and the policy ends far closer to the rollout policy. With clip_range 10 the clip would bind only at a
    ratio above 11 (a log-prob up by 2.4), which 16 steps this size never reach: nothing is clipped (seen 0%),
    and the mean 0.5 (log ratio)^2 over the minibatches (`approx_kl`) is 6-20 times the tight run's.
    Both ranges are far from the default 0.2, which would give both runs the same figures.
    """
    runs = {}
    for clip in (0.05, 10.0):
        row = train(
            causal_lm(seed), RiggedReward(A_ID), ppo_config(iterations=1, ppo_epochs=4, clip_range=clip, seed=seed)
        ).history[0]
        runs[clip] = {"clipfrac": row["clipfrac"], "approx_kl": row["approx_kl"]}
    tight, loose = runs[0.05], runs[10.0]
    assert tight["clipfrac"] > 0.3, runs
    assert loose["clipfrac"] < 0.02, runs
    assert tight["approx_kl"] < loose["approx_kl"] / 3, runs


def test_rollout_samples_and_scores_at_the_same_temperature():
    """[PPO-2]: the rollout samples from softmax(logits / T), and log-probs are taken from the same logits / T.

    A context-free policy that emits only EOS (logit 0) or "a" (logit 2.1), at T = 0.7:
    - scoring: every token's logged entropy is H(p) for p = P(EOS) = 1 / (1 + e^(2.1/0.7)) = 0.0474,
      H = 0.1909 (had the logits not been divided by T: p = 0.109, H = 0.3446);
    - sampling: a response of up to 8 tokens ends with probability 1 - (1 - p)^8 = 0.322 (at T = 1: 0.603).
      Over 2 x 64 rollouts the standard error is 0.04: the tolerance 0.12 is 3 of them, and T = 1 is 7 away.
    """
    p = 1 / (1 + math.exp(2.1 / 0.7))
    assert p == pytest.approx(0.0474, abs=1e-4)
    cfg = ppo_config(iterations=2, rollout_batch_size=64, temperature=0.7, learning_rate=0.0)
    history = train(causal_lm(bias={"a": 2.1} | {w: -30.0 for w in WORDS[1:]}), RiggedReward(A_ID), cfg).history
    for row in history:
        assert row["entropy"] == pytest.approx(-p * math.log(p) - (1 - p) * math.log(1 - p), abs=1e-4)
        assert row["entropy"] == pytest.approx(0.1909, abs=1e-4)
    assert sum(row["eos_rate"] for row in history) / len(history) == pytest.approx(1 - (1 - p) ** 8, abs=0.12)


# ---------------------------------------------------------------- frozen reference and reward model


def test_reference_and_reward_model_weights_are_untouched_while_policy_and_critic_train():
    """The reference and the RM are byte-identical after training; the policy and the critic (RM-initialized, [PPO-11]) changed."""
    policy, reward_model = causal_lm(0), value_model(2)
    reference, critic = copy.deepcopy(policy), copy.deepcopy(reward_model)
    before = {
        name: {k: v.clone() for k, v in model.state_dict().items()}
        for name, model in (
            ("policy", policy),
            ("reference", reference),
            ("reward_model", reward_model),
            ("critic", critic),
        )
    }
    train(policy, reward_model, ppo_config(), reference=reference, critic=critic)
    after = {"policy": policy, "reference": reference, "reward_model": reward_model, "critic": critic}
    for name in ("reference", "reward_model"):
        changed = [k for k, v in after[name].state_dict().items() if not torch.equal(v, before[name][k])]
        assert not changed, f"{name} changed: {changed}"
    for name in ("policy", "critic"):
        assert any(not torch.equal(v, before[name][k]) for k, v in after[name].state_dict().items()), (
            f"{name} did not train"
        )


# ---------------------------------------------------------------- [PPO-5] the missing-EOS penalty


@pytest.mark.parametrize(("eos_logit", "eos_rate", "score"), [(-30.0, 0.0, -5.0), (30.0, 1.0, 2.0)])
def test_missing_eos_penalty_replaces_the_score_of_unended_responses(eos_logit, eos_rate, score):
    """[PPO-5]: with an RM that always says 2, a rollout where no response ends scores -5 (the penalty), one where all end scores 2.

    EOS logit -30 vs 0 for 8 words: P(EOS) per token ~ 1e-14, never sampled; +30: the first token is EOS.
    """
    cfg = ppo_config(iterations=1, missing_eos_penalty=-5.0, learning_rate=0.0)
    row = train(causal_lm(bias={EOS: eos_logit}), RiggedReward(weight=0.0, bias=2.0), cfg).history[0]
    assert row["eos_rate"] == eos_rate
    assert row["rm_score"] == pytest.approx(2.0)
    assert row["score"] == pytest.approx(score)


def test_missing_eos_penalty_on_a_mixed_rollout():
    """[PPO-5] per response: with P(EOS) = 1/9 per token and 4 tokens, (8/9)^4 = 62% do not end;
    the batch's mean score is exactly 2 * eos_rate - 5 * (1 - eos_rate)."""
    cfg = ppo_config(iterations=3, max_new_tokens=4, missing_eos_penalty=-5.0, learning_rate=0.0)
    history = train(causal_lm(bias={}), RiggedReward(weight=0.0, bias=2.0), cfg).history
    assert any(0.0 < row["eos_rate"] < 1.0 for row in history), history
    for row in history:
        assert row["score"] == pytest.approx(2.0 * row["eos_rate"] - 5.0 * (1 - row["eos_rate"]), abs=1e-5), row


def test_missing_eos_penalty_is_what_teaches_the_policy_to_end():
    """[PPO-5] reaches the optimizer: under a constant RM only the penalty separates responses.

    The lr=0 control ends 1 - (8/9)^4 = 0.38 of its responses (standard error ~0.09 over the last
    fifth, 2 iterations x 16 rollouts: a control at 0.56 was seen); PPO must beat that expected rate
    by 0.5, over 5 standard errors. The expectation, not the control's own draw, is the bar: a
    lucky control would otherwise fail a PPO that ends every response.
    """
    cfg = ppo_config(iterations=12, max_new_tokens=4, missing_eos_penalty=-5.0)
    trained = train(causal_lm(0), RiggedReward(weight=0.0, bias=0.0), cfg)
    control = train(causal_lm(0), RiggedReward(weight=0.0, bias=0.0), cfg.model_copy(update={"learning_rate": 0.0}))
    untrained_rate = 1 - (8 / 9) ** 4
    assert abs(control.metrics["final_eos_rate"] - untrained_rate) < 0.25, control.history
    ended = [r["eos_rate"] for r in trained.history]
    # the last fifth of training's rollouts (48) and the final check's samples (8: one without EOS is 0.875)
    assert sum(ended[-3:]) / 3 > untrained_rate + 0.5, ended
    assert trained.metrics["final_eos_rate"] > untrained_rate + 0.45, ended


# ---------------------------------------------------------------- [PPO-1] / [PPO-10] KL and its adaptive coefficient


SEQ_KL = 8 * math.log(SAMPLED)  # policy: always "a" (logit 30); reference: uniform over 9 -> log 9 per token, 8 tokens


@pytest.mark.parametrize(("target_kl", "step"), [(1.0, 0.2), (100.0, -0.2), (SEQ_KL / 1.1, 0.1)])
def test_adaptive_kl_coefficient_moves_toward_the_target(target_kl, step):
    """[PPO-1] the logged KL is the per-token log-ratio summed over the response: 8 * log 9 = 17.578 here.
    [PPO-10] kl_coef *= 1 + clip(KL / target - 1, +-0.2) * rollout_batch_size / 10000:
    above the target it rises (clipped at +0.2), below it falls (-0.2), proportionally in between (+0.1)."""
    cfg = ppo_config(
        iterations=2, rollout_batch_size=64, learning_rate=0.0, kl_coef=0.1, adaptive_kl=True, target_kl=target_kl
    )
    result = train(causal_lm(bias={"a": 30.0}), RiggedReward(A_ID), cfg, reference=causal_lm(bias={}))
    kl_coef = 0.1
    for row in result.history:
        assert row["kl"] == pytest.approx(SEQ_KL, abs=1e-4)
        kl_coef *= 1 + step * 64 / 10000
        assert row["kl_coef"] == pytest.approx(kl_coef, rel=1e-9)


def test_kl_coefficient_is_constant_without_the_controller():
    """Without `adaptive_kl` the coefficient stays as configured even far from the target."""
    cfg = ppo_config(iterations=2, learning_rate=0.0, kl_coef=0.1, adaptive_kl=False, target_kl=1.0)
    result = train(causal_lm(bias={"a": 30.0}), RiggedReward(A_ID), cfg, reference=causal_lm(bias={}))
    assert [row["kl_coef"] for row in result.history] == [0.1, 0.1]


# ---------------------------------------------------------------- [PPO-6] whitened advantages


def test_advantages_are_whitened_over_the_rollout_batch():
    """[PPO-6]: with one epoch and one minibatch holding the whole rollout, the one logged pg_loss is computed
    before any update (ratio 1), so it is -mean(advantages) over response tokens: 0 once whitened.

    The RM always says 5 and the critic starts near 0, so unwhitened advantages would all be near +5 * 0.95^k.
    """
    cfg = ppo_config(iterations=2, rollout_batch_size=16, minibatch_size=16, ppo_epochs=1)
    history = train(causal_lm(0), RiggedReward(weight=0.0, bias=5.0), cfg).history
    for row in history:
        assert row["rm_score"] == pytest.approx(5.0)
        assert abs(row["pg_loss"]) < 1e-5, row


def test_a_non_finite_loss_stops_ppo_naming_the_iteration():
    """A critic whose values are NaN leaves the rewards finite (they come from the RM and the KL) but not the loss:
    the optimize step refuses it before any weight is updated."""
    critic = value_model()
    with torch.no_grad():
        critic.score.weight.fill_(float("nan"))
    policy = causal_lm(0)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    with pytest.raises(TrainingDivergedError, match=r"ppo_policy: non-finite loss at iteration 1 \(optimize step\)"):
        train(policy, RiggedReward(A_ID), ppo_config(iterations=1), critic=critic)
    assert all(torch.equal(v, before[k]) for k, v in policy.state_dict().items())
