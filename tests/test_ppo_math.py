"""PPO arithmetic on tensors small enough to work out by hand (docs/ppo.md, tags [PPO-n])."""

from __future__ import annotations

import pytest
import torch

from rlhf_dag.training.generate import truncate_after_eos
from rlhf_dag.training.ppo import (
    clipped_policy_loss,
    clipped_value_loss,
    gae,
    kl_penalized_rewards,
    masked_mean,
    masked_whiten,
)


def close(actual: torch.Tensor, expected) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), rtol=0, atol=1e-5)


# ---------------------------------------------------------------- [PPO-4] GAE


def test_gae_full_episode_gamma_1_lambda_095():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.2, 0.4]])
    mask = torch.ones(1, 3)
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    # deltas: d2 = 1 + 0   - 0.4 = 0.6   (no value after the last token)
    #         d1 = 0 + 0.4 - 0.2 = 0.2
    #         d0 = 0 + 0.2 - 0.5 = -0.3
    # A2 = 0.6; A1 = 0.2 + 0.95*0.6 = 0.77; A0 = -0.3 + 0.95*0.77 = 0.4315
    close(advantages, [[0.4315, 0.77, 0.6]])
    # returns = A + V: 0.4315+0.5, 0.77+0.2, 0.6+0.4
    close(returns, [[0.9315, 0.97, 1.0]])


def test_gae_padded_position_gets_zero_and_does_not_leak_its_value():
    # Row 0 is the full episode above; row 1 ended after 2 tokens, and its pad position
    # carries junk (value 0.9, reward 5) that must not reach the real tokens.
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 5.0]])
    values = torch.tensor([[0.5, 0.2, 0.4], [0.5, 0.2, 0.9]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    # row 1: A2 = 0 (masked); d1 = 1 + 0 - 0.2 = 0.8 (next value is 0, not 0.9), A1 = 0.8
    #        d0 = 0 + 0.2 - 0.5 = -0.3, A0 = -0.3 + 0.95*0.8 = 0.46
    # (had 0.9 leaked: A1 = 1 + 0.9 - 0.2 = 1.7)
    close(advantages, [[0.4315, 0.77, 0.6], [0.46, 0.8, 0.0]])
    close(returns, [[0.9315, 0.97, 1.0], [0.96, 1.0, 0.0]])


def test_gae_discount_and_lambda_zero_is_one_step_td():
    # gamma=0.5, lam=0: A_t = r_t + 0.5*V_{t+1} - V_t
    rewards = torch.tensor([[1.0, 2.0]])
    values = torch.tensor([[4.0, 2.0]])
    advantages, returns = gae(rewards, values, torch.ones(1, 2), gamma=0.5, lam=0.0)
    # A0 = 1 + 0.5*2 - 4 = -2; A1 = 2 + 0 - 2 = 0; returns = A + V = 2, 2
    close(advantages, [[-2.0, 0.0]])
    close(returns, [[2.0, 2.0]])


# ---------------------------------------------------------------- [PPO-6] whitening


def test_masked_whiten_zero_mean_unit_variance_on_masked_positions():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    out = masked_whiten(x, mask)
    # masked mean = (1+2+3)/3 = 2; variance = (1+0+1)/3 = 2/3; std = 0.816497
    # (x - 2)/0.816497 -> -1.224745, 0, 1.224745
    close(out[mask.bool()], [-1.224745, 0.0, 1.224745])
    assert masked_mean(out, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert masked_mean(out**2, mask).item() == pytest.approx(1.0, abs=1e-5)


def test_masked_whiten_ignores_masked_out_entries():
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    a = masked_whiten(torch.tensor([[1.0, 2.0, 3.0, 100.0]]), mask)
    b = masked_whiten(torch.tensor([[1.0, 2.0, 3.0, -5000.0]]), mask)
    torch.testing.assert_close(a[mask.bool()], b[mask.bool()])


def test_masked_whiten_without_shift_keeps_the_mean():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    # whitened + mean 2 -> 0.775255, 2, 3.224745
    close(masked_whiten(x, mask, shift_mean=False)[mask.bool()], [0.775255, 2.0, 3.224745])


# ---------------------------------------------------------------- [PPO-1] KL-penalized rewards


def test_kl_penalty_on_every_token_and_score_on_the_last_real_token():
    score = torch.tensor([2.0, 3.0])
    logprobs = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -1.0, -9.0]])
    ref_logprobs = torch.tensor([[-1.5, -2.0, -1.0], [-2.0, -0.5, -1.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    rewards, kl = kl_penalized_rewards(score, logprobs, ref_logprobs, mask, kl_coef=0.1)
    # kl = (logp - ref) * mask: row 0: 0.5, 0, 0.5; row 1: 1, -0.5, (-8 masked ->) 0
    close(kl, [[0.5, 0.0, 0.5], [1.0, -0.5, 0.0]])
    # rewards = -0.1*kl, + score at the last unmasked token (index 2 in row 0, index 1 in row 1):
    # row 0: -0.05, 0, -0.05 + 2 = 1.95; row 1: -0.1, 0.05 + 3 = 3.05, 0
    close(rewards, [[-0.05, 0.0, 1.95], [-0.1, 3.05, 0.0]])


# ---------------------------------------------------------------- [PPO-7] clipped policy loss


def test_clipped_policy_loss_and_clip_fraction():
    d = torch.tensor([[0.5, 0.1, -0.5], [-0.5, 3.0, 3.0]])  # logprobs - old_logprobs
    old = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0]])
    advantages = torch.tensor([[1.0, 1.0, -2.0], [1.0, 10.0, 10.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    loss, clipfrac = clipped_policy_loss(old + d, old, advantages, mask, clip=0.2)
    # token    ratio                A    -A*ratio    -A*clip(ratio,0.8,1.2)  max        clip active
    # (0,0)    e^0.5  = 1.648721    1    -1.648721   -1.2                    -1.2       yes
    # (0,1)    e^0.1  = 1.105171    1    -1.105171   -1.105171               -1.105171  no
    # (0,2)    e^-0.5 = 0.606531   -2     1.213061    1.6                     1.6       yes
    # (1,0)    e^-0.5 = 0.606531    1    -0.606531   -0.8                    -0.606531  no (pessimistic side)
    # (1,1), (1,2) masked out
    # loss = (-1.2 - 1.105171 + 1.6 - 0.606531) / 4 = -0.327925; clipfrac = 2/4
    assert loss.item() == pytest.approx(-0.327925, abs=1e-5)
    assert clipfrac.item() == pytest.approx(0.5)


def test_clipped_policy_loss_at_ratio_one_is_minus_mean_advantage():
    logprobs = torch.tensor([[-1.0, -2.0]])
    advantages = torch.tensor([[0.3, -0.9]])
    loss, clipfrac = clipped_policy_loss(logprobs, logprobs.clone(), advantages, torch.ones(1, 2), clip=0.2)
    # ratio 1 everywhere: loss = -(0.3 - 0.9)/2 = 0.3, nothing clipped
    assert loss.item() == pytest.approx(0.3)
    assert clipfrac.item() == 0.0


# ---------------------------------------------------------------- [PPO-8] clipped value loss


def test_clipped_value_loss():
    old = torch.tensor([[0.5, 0.5, 0.5, 0.5]])
    values = torch.tensor([[1.0, 0.6, 0.0, 100.0]])
    returns = torch.tensor([[2.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    loss = clipped_value_loss(values, old, returns, mask, clip=0.2)
    # t0: clipped 0.5+0.2 = 0.7; max((1-2)^2, (0.7-2)^2) = max(1, 1.69) = 1.69
    # t1: 0.6 within the clip;   (0.6-0)^2 = 0.36
    # t2: clipped 0.5-0.2 = 0.3; max(0, 0.09) = 0.09
    # t3: masked (would be 10000)
    # loss = 0.5 * (1.69 + 0.36 + 0.09) / 3 = 0.356667
    assert loss.item() == pytest.approx(0.356667, abs=1e-5)


# ---------------------------------------------------------------- [PPO-3] EOS truncation ([PPO-5] runs through ppo_train in test_ppo_train.py)


EOS, PAD = 1, 0


def test_truncate_after_eos_pads_after_the_first_eos():
    responses = torch.tensor([[5, EOS, 7, 8], [5, 6, 7, 8], [EOS, 5, EOS, 3]])
    out, ended = truncate_after_eos(responses, EOS, PAD)
    assert out.tolist() == [[5, 1, 0, 0], [5, 6, 7, 8], [1, 0, 0, 0]]
    assert ended.tolist() == [True, False, True]
