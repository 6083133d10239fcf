"""Step 4: PPO against the reward model with a KL penalty to the SFT model (CleanRL-style, one loop).

TRL 1.13+ has no PPO trainer, so this is ours. Each implementation detail is
tagged `[PPO-n]` and explained, with its source, in docs/ppo.md (the N+
implementation details of RLHF with PPO, Huang et al. 2024; InstructGPT,
Ouyang et al. 2022; Ziegler et al. 2019).
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from ..config import PPOConfig
from .chat import format_prompt
from .generate import generate_tokens, truncate_after_eos
from .reward import per_token_scores
from .trainer_args import TrainingDivergedError

logger = logging.getLogger(__name__)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    return whitened if shift_mean else whitened + mean


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation over response tokens [B, R]; returns (advantages, returns)."""
    values, rewards = values * mask, rewards * mask  # no value or reward past the EOS
    advantages = torch.zeros_like(rewards)
    last = torch.zeros(rewards.shape[0], device=rewards.device)
    for t in reversed(range(rewards.shape[1])):
        next_value = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = delta + gamma * lam * last
        advantages[:, t] = last
    return advantages * mask, (advantages + values) * mask


def kl_penalized_rewards(score: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token reward -kl_coef * (log pi - log pi_ref), plus the sequence score on the last response token."""
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    last = (mask.sum(dim=1) - 1).clamp(min=0).long()
    rewards[torch.arange(len(score)), last] += score
    return rewards, kl


def clipped_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's pessimistic surrogate; returns (loss, fraction of tokens where the clip was active)."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip, 1.0 + clip)
    return masked_mean(torch.max(unclipped, clipped), mask), masked_mean((clipped > unclipped).float(), mask)


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float) -> torch.Tensor:
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    return 0.5 * masked_mean(torch.max((values - returns) ** 2, (clipped - returns) ** 2), mask)


def response_logprobs(model, query_response: torch.Tensor, attention_mask: torch.Tensor, n_query: int, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-prob of each response token, entropy) under `model`, with logits scaled as at sampling."""
    position_ids = (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)
    logits = model(input_ids=query_response, attention_mask=attention_mask, position_ids=position_ids, use_cache=False).logits
    logits = logits[:, n_query - 1 : -1] / temperature  # [PPO-2] same temperature as the rollout
    logp_all = F.log_softmax(logits.float(), dim=-1)
    logprobs = logp_all.gather(-1, query_response[:, n_query:].unsqueeze(-1)).squeeze(-1)
    with torch.no_grad():  # logged only, never optimized
        entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logprobs, entropy


def length_buckets(lengths: torch.Tensor, minibatch_size: int) -> list[torch.Tensor]:
    """Minibatches of rollouts of similar response length, in random order ([PPO-13]).

    The rollouts are shuffled, sorted by length (stably, so ties stay shuffled),
    cut into minibatches, and the minibatches shuffled: each minibatch pads only
    to its own longest response, where a random split pads to the batch's.
    """
    shuffled = torch.randperm(len(lengths))
    by_length = shuffled[torch.sort(lengths[shuffled], stable=True).indices]
    buckets = list(by_length.split(minibatch_size))
    return [buckets[i] for i in torch.randperm(len(buckets)).tolist()]


@dataclass
class PPOResult:
    policy: object
    value_model: object
    history: list[dict] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)


def ppo_train(policy, ref_policy, reward_model, value_model, tokenizer, prompts: list[str], cfg: PPOConfig,
              monitor: Callable[[list[str], list[str], list[bool]], float] | None = None) -> PPOResult:
    """Optimize `policy` to maximize RM score - kl_coef * KL(policy || ref). `monitor` (e.g. a gold judge) only observes."""
    start, rng = time.perf_counter(), random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    for frozen in (ref_policy, reward_model):
        frozen.eval().requires_grad_(False)
    params = list(policy.parameters()) + list(value_model.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, eps=1e-5)
    kl_coef, history, order = cfg.kl_coef, [], []

    for iteration in range(1, cfg.iterations + 1):
        # ---- rollout: sample responses from the current policy
        while len(order) < cfg.rollout_batch_size:
            order += rng.sample(range(len(prompts)), len(prompts))
        batch_prompts = [prompts[order.pop()] for _ in range(cfg.rollout_batch_size)]
        policy.eval()
        # [PPO-12] the log-probs of the sampling pass are the rollout's old log-probs: no second policy forward
        query, response, logprobs = generate_tokens(policy, tokenizer, [format_prompt(p) for p in batch_prompts], cfg.max_new_tokens, cfg.temperature,
                                                    return_logprobs=True)
        response, ended = truncate_after_eos(response, eos, pad)  # [PPO-3] nothing after the first EOS
        n_query = query.shape[1]
        query_response = torch.cat([query, response], dim=1)
        attention_mask = query_response != pad
        mask = (response != pad).float()  # response tokens, the EOS included
        logprobs = logprobs * mask

        # ---- score: RM score at the end, per-token KL to the reference, values from the critic
        with torch.no_grad():
            ref_logprobs, _ = response_logprobs(ref_policy, query_response, attention_mask, n_query, cfg.temperature)
            values = per_token_scores(value_model, query_response, attention_mask)[:, n_query - 1 : -1]
            last = n_query + mask.sum(dim=1).long() - 1
            score = per_token_scores(reward_model, query_response, attention_mask)[torch.arange(len(last)), last]
            rm_score = score.clone()
            if cfg.missing_eos_penalty is not None:  # [PPO-5] no EOS, no RM score
                score = torch.where(ended, score, torch.full_like(score, cfg.missing_eos_penalty))
            rewards, kl = kl_penalized_rewards(score, logprobs, ref_logprobs, mask, kl_coef)  # [PPO-1] per-token KL penalty
            # ---- advantages
            advantages, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)  # [PPO-4] GAE, gamma=1, lambda=0.95
            advantages = masked_whiten(advantages, mask)  # [PPO-6] whiten advantages per batch
        if not torch.isfinite(rewards).all():
            raise TrainingDivergedError(f"ppo_policy: non-finite reward at iteration {iteration} (rollout/score step)")

        # ---- optimize: several epochs of minibatch updates on this rollout
        policy.train(), value_model.train()
        stats = {k: [] for k in ("pg_loss", "vf_loss", "clipfrac", "approx_kl", "entropy")}
        lengths = mask.sum(dim=1)
        for epoch in range(cfg.ppo_epochs):  # [PPO-9] several epochs over minibatches
            for step, mb in enumerate(length_buckets(lengths, cfg.minibatch_size)):
                # [PPO-13] each minibatch is cut to its own width: no forward or backward pass over all-pad columns
                q0, width = int(attention_mask[mb, :n_query].any(dim=0).float().argmax()), int(lengths[mb].max())
                qr, am = query_response[mb, q0 : n_query + width], attention_mask[mb, q0 : n_query + width]
                old_logprobs, mb_mask, mb_advantages = logprobs[mb, :width], mask[mb, :width], advantages[mb, :width]
                new_logprobs, entropy = response_logprobs(policy, qr, am, n_query - q0, cfg.temperature)
                new_values = per_token_scores(value_model, qr, am)[:, n_query - q0 - 1 : -1]
                pg_loss, clipfrac = clipped_policy_loss(new_logprobs, old_logprobs, mb_advantages, mb_mask, cfg.clip_range)  # [PPO-7]
                vf_loss = clipped_value_loss(new_values, values[mb, :width], returns[mb, :width], mb_mask, cfg.clip_range_value)  # [PPO-8]
                loss = pg_loss + cfg.vf_coef * vf_loss
                if not torch.isfinite(loss):
                    raise TrainingDivergedError(f"ppo_policy: non-finite loss at iteration {iteration} (optimize step)")
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                with torch.no_grad():
                    stats["pg_loss"].append(pg_loss.item())
                    stats["vf_loss"].append(vf_loss.item())
                    stats["clipfrac"].append(clipfrac.item())
                    stats["approx_kl"].append(masked_mean(0.5 * (new_logprobs - old_logprobs) ** 2, mb_mask).item())
                    stats["entropy"].append(masked_mean(entropy, mb_mask).item())
                    if epoch == 0 and step == 0:  # [PPO-2] before any update the policy is the rollout policy: ratio 1, nothing clipped
                        first_minibatch = {"first_minibatch_clipfrac": clipfrac.item(),
                                           "first_minibatch_max_ratio_error": ((new_logprobs - old_logprobs).exp() - 1).abs().mul(mb_mask).max().item()}

        # ---- log
        seq_kl = kl.sum(dim=1).mean().item()
        if cfg.adaptive_kl:  # [PPO-10] proportional controller toward target_kl (Ziegler et al. 2019)
            kl_coef *= 1 + max(-0.2, min(0.2, seq_kl / cfg.target_kl - 1)) * cfg.rollout_batch_size / 10000
        row = {
            "iteration": iteration,
            "rm_score": rm_score.mean().item(),
            "score": score.mean().item(),
            "kl": seq_kl,
            "kl_coef": kl_coef,
            "non_score_reward": (-kl_coef * kl.sum(dim=1)).mean().item(),
            "eos_rate": ended.float().mean().item(),
            "response_length": mask.sum(dim=1).mean().item(),
            **{k: sum(v) / len(v) for k, v in stats.items()},
            **first_minibatch,
        }
        if monitor is not None:
            texts = [tokenizer.decode([t for t in r.tolist() if t not in (pad, eos)], skip_special_tokens=True) for r in response]
            row["gold_score"] = monitor(batch_prompts, texts, ended.tolist())
        history.append(row)
        logger.info("ppo iteration %d/%d: " + ", ".join(f"{k}={v:.3f}" for k, v in row.items() if k != "iteration"), iteration, cfg.iterations)

    final = history[-1]
    window = history[-max(1, len(history) // 5):]  # the last fifth of training, less noisy than one batch
    metrics = {
        "initial_rm_score": history[0]["rm_score"],
        "final_rm_score": sum(r["rm_score"] for r in window) / len(window),
        "final_kl": sum(r["kl"] for r in window) / len(window),
        "final_eos_rate": sum(r["eos_rate"] for r in window) / len(window),
        "final_kl_coef": final["kl_coef"],
        "finite": float(all(math.isfinite(v) for r in history for v in r.values())),
        "train_seconds": time.perf_counter() - start,
    }
    return PPOResult(policy, value_model, history, metrics)
