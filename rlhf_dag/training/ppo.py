"""Step 4: PPO against the reward model with a KL penalty to the SFT model (CleanRL-style, one loop).

TRL 1.13+ has no PPO trainer, so this is ours. Each implementation detail is
tagged `[PPO-n]` and explained, with its source, in docs/ppo.md (the N+
implementation details of RLHF with PPO, Huang et al. 2024; InstructGPT,
Ouyang et al. 2022; Ziegler et al. 2019).
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..config import PPOConfig
from ..data.chat import format_prompt
from . import distributed, lora, resume
from .generate import generate_tokens, shared_prefix_length, truncate_after_eos
from .monitor import TrainingDivergedError
from .result import ModelCard, StepResult, step
from .reward import backbone_and_head, head_scores

logger = logging.getLogger(__name__)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Zero mean, unit variance over the masked entries; under several processes, those of every rank's shard of the batch."""
    total, count = distributed.all_sum((x * mask).sum(), mask.sum())
    mean = total / count.clamp(min=1)
    (squares,) = distributed.all_sum(((x - mean) ** 2 * mask).sum())
    var = squares / count.clamp(min=1)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    return whitened if shift_mean else whitened + mean


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
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


def kl_penalized_rewards(
    score: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token reward -kl_coef * (log pi - log pi_ref), plus the sequence score on the last response token."""
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    last = (mask.sum(dim=1) - 1).clamp(min=0).long()
    rewards[torch.arange(len(score)), last] += score
    return rewards, kl


def clipped_policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's pessimistic surrogate; returns (loss, fraction of tokens where the clip was active)."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip, 1.0 + clip)
    return masked_mean(torch.max(unclipped, clipped), mask), masked_mean((clipped > unclipped).float(), mask)


def clipped_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float
) -> torch.Tensor:
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    return 0.5 * masked_mean(torch.max((values - returns) ** 2, (clipped - returns) ** 2), mask)


def response_logprobs(
    model,
    query_response: torch.Tensor,
    attention_mask: torch.Tensor,
    n_query: int,
    temperature: float,
    pad_id: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-prob of each response token, entropy) under `model`, with logits scaled as at sampling
    and, given `pad_id`, PAD excluded as sampling excludes it (`generate_tokens`)."""
    position_ids = (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)
    logits = model(
        input_ids=query_response, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
    ).logits
    logits = logits[:, n_query - 1 : -1] / temperature  # [PPO-2] same temperature as the rollout
    return _token_logprobs(logits, query_response[:, n_query:], pad_id)


@contextlib.contextmanager
def reference(policy, ref_policy):
    """The reference model: `ref_policy`, or with LoRA (`ref_policy` None) the policy with its adapter disabled ([PPO-14]):
    the SFT model's own weights, which the adapter trains around, never a copy."""
    if ref_policy is not None:
        yield ref_policy
        return
    with policy.disable_adapter():
        yield policy


def _token_logprobs(
    logits: torch.Tensor, tokens: torch.Tensor, pad_id: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    if pad_id is not None:  # [PPO-2] the distribution the rollout was sampled from never includes PAD
        logits = logits.float().index_fill(-1, torch.tensor([pad_id], device=logits.device), -1e9)
    logp_all = F.log_softmax(logits.float(), dim=-1)
    logprobs = logp_all.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    with torch.no_grad():  # logged only, never optimized
        entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logprobs, entropy


@dataclass
class PackedMinibatch:
    """Rollouts laid out without inner padding ([PPO-13]): each row is its query's real tokens then its
    response's, left-padded to the minibatch's longest row. `slots` [B, W] picks, among the last W + 1
    positions, the one whose output predicts response token j of row i. With a `prefix` ([PPO-20]), the
    tokens every row opens with are not in the rows: they run once, before them."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    responses: torch.Tensor  # [B, W] the response tokens, right-padded, as in the rollout
    slots: torch.Tensor
    prefix: torch.Tensor | None = None  # [P] the opening shared by every row's query (a chat template's)

    @property
    def width(self) -> int:
        return self.responses.shape[1]


def pack_minibatch(
    query: torch.Tensor,
    query_mask: torch.Tensor,
    response: torch.Tensor,
    response_lengths: torch.Tensor,
    pad_id: int,
    share_prefix: bool = True,
) -> PackedMinibatch:
    """Drop the query's left padding and the response's right padding of each rollout, then left-pad the rows to one
    width; with `share_prefix`, the queries' common opening (`shared_prefix_length`) moves out of the rows."""
    queries = [q[m] for q, m in zip(query, query_mask)]
    shared = shared_prefix_length([q.tolist() for q in queries]) if share_prefix else 0
    r_lengths = response_lengths.long()
    width = int(r_lengths.max())
    rows = [torch.cat([q[shared:], r[:n]]) for q, r, n in zip(queries, response, r_lengths.tolist())]
    row_lengths = torch.tensor([len(row) for row in rows], device=query.device)
    total = int(row_lengths.max())
    input_ids = torch.full((len(rows), total), pad_id, dtype=query.dtype, device=query.device)
    for i, row in enumerate(rows):
        input_ids[i, total - len(row) :] = row
    attention_mask = torch.arange(total, device=query.device) >= (total - row_lengths).unsqueeze(1)
    j = torch.arange(width, device=query.device)
    slots = (width - r_lengths.unsqueeze(1) + j).clamp(max=width)  # past a row's end: masked out anyway
    return PackedMinibatch(
        input_ids, attention_mask, response[:, :width], slots, queries[0][:shared] if shared else None
    )


def packed_forward(model, mb: PackedMinibatch, **kwargs):
    """`model` (a causal LM, or a score model's backbone) over a packed minibatch, positions counted from each row's
    first real token. With a prefix ([PPO-20]) the opening runs once, as a batch of one, and its keys and values,
    expanded (not copied) to every row, are the cache the rows run after: the same attention as if each row ran
    it, and under autograd the same gradient (the expansion's backward sums the rows' gradients into it)."""
    position_ids = (mb.attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)
    if mb.prefix is None:
        return model(
            input_ids=mb.input_ids,
            attention_mask=mb.attention_mask,
            position_ids=position_ids,
            use_cache=False,
            **kwargs,
        )
    shared, rows = len(mb.prefix), len(mb.input_ids)
    opening = model(
        input_ids=mb.prefix[None],
        position_ids=torch.arange(shared, device=mb.prefix.device)[None],
        use_cache=True,
        **({"logits_to_keep": 1} if "logits_to_keep" in kwargs else {}),  # the opening's logits predict nothing kept
    )
    cache = opening.cache
    for layer in cache.layers:
        layer.keys, layer.values = layer.keys.expand(rows, -1, -1, -1), layer.values.expand(rows, -1, -1, -1)
    mask = torch.cat([mb.attention_mask.new_ones((rows, shared)), mb.attention_mask], dim=1)
    return model(
        input_ids=mb.input_ids,
        attention_mask=mask,
        position_ids=position_ids + shared,
        cache=cache,
        use_cache=False,
        **kwargs,
    )


def packed_scores(model, mb: PackedMinibatch) -> torch.Tensor:
    """A reward or value model's score at every position of the packed rows [B, T] (`reward.per_token_scores`)."""
    backbone, head = backbone_and_head(model)
    return head_scores(head, packed_forward(backbone, mb).last_hidden_state)


def packed_logprobs_and_values(
    policy, value_model, mb: PackedMinibatch, temperature: float, pad_id: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log-probs, entropy, values) [B, W] of a packed minibatch; the policy's vocabulary projection runs only
    on the W + 1 last positions (`logits_to_keep`), not on the queries."""
    keep = mb.width + 1
    logits = packed_forward(policy, mb, logits_to_keep=keep).logits
    logits = logits.gather(1, mb.slots.unsqueeze(-1).expand(-1, -1, logits.shape[-1])) / temperature  # [PPO-2]
    logprobs, entropy = _token_logprobs(logits, mb.responses, pad_id)
    values = packed_scores(value_model, mb)[:, -keep:].gather(1, mb.slots)
    return logprobs, entropy, values


@torch.no_grad()
def score_rollouts(
    policy,
    ref_policy,
    reward_model,
    value_model,
    query: torch.Tensor,
    query_mask: torch.Tensor,
    response: torch.Tensor,
    lengths: torch.Tensor,
    temperature: float,
    pad_id: int,
    chunk: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(reference log-probs [B, R], values [B, R], RM score at the last response token [B]) of the rollouts, packed as the
    minibatches are ([PPO-15]): in length order, `chunk` rollouts per forward, each chunk cut to its own width.
    `ref_policy` as in `reference`."""
    ref_logprobs, values = (
        torch.zeros(response.shape, device=response.device),
        torch.zeros(response.shape, device=response.device),
    )
    scores = torch.zeros(len(response), device=response.device)
    order = torch.sort(
        query_mask.sum(dim=1) + lengths, stable=True
    ).indices  # no randomness: the sampling stream stays the same
    with (
        reference(policy, ref_policy) as ref
    ):  # the critic and the RM are models of their own: an adapter disabled on the policy leaves them as they are
        for idx in order.split(chunk):
            packed = pack_minibatch(query[idx], query_mask[idx], response[idx], lengths[idx], pad_id)
            chunk_logprobs, _, chunk_values = packed_logprobs_and_values(ref, value_model, packed, temperature, pad_id)
            ref_logprobs[idx, : packed.width], values[idx, : packed.width] = chunk_logprobs, chunk_values
            rm_scores = packed_scores(reward_model, packed)
            scores[idx] = rm_scores[:, -1]  # rows are left-padded: the last column is each one's last token
    mask = torch.arange(response.shape[1], device=response.device) < lengths.unsqueeze(1)
    return ref_logprobs * mask, values * mask, scores


def length_buckets(lengths: torch.Tensor, minibatch_size: int) -> list[torch.Tensor]:
    """Minibatches of rollouts of similar length (query + response), in random order ([PPO-13]).

    The rollouts are shuffled, sorted by length (stably, so ties stay shuffled),
    cut into minibatches, and the minibatches shuffled: each minibatch pads only
    to its own longest rollout, where a random split pads to the batch's.
    """
    shuffled = torch.randperm(len(lengths)).to(lengths.device)
    by_length = shuffled[torch.sort(lengths[shuffled], stable=True).indices]
    buckets = list(by_length.split(minibatch_size))
    return [buckets[i] for i in torch.randperm(len(buckets)).tolist()]


class Learner(torch.nn.Module):
    """Policy and critic as one module: under several processes one DistributedDataParallel wrapper
    all-reduces the gradients of both in the backward pass, and every rank takes the same optimizer step."""

    def __init__(self, policy, value_model):
        super().__init__()
        self.policy, self.value_model = policy, value_model

    def forward(
        self, mb: PackedMinibatch, temperature: float, pad_id: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return packed_logprobs_and_values(self.policy, self.value_model, mb, temperature, pad_id)


@dataclass
class PPOResult:
    policy: object
    value_model: object
    history: list[dict] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)


def ppo_train(
    policy,
    ref_policy,
    reward_model,
    value_model,
    tokenizer,
    prompts: list[str],
    cfg: PPOConfig,
    monitor: Callable[[list[str], list[str], list[bool]], float] | None = None,
    checkpoints: Path | None = None,
) -> PPOResult:
    """Optimize `policy` to maximize RM score - kl_coef * KL(policy || ref). `monitor` (e.g. a gold judge) only observes.

    `ref_policy` None: `policy` is a LoRA model (training/lora.py `adapt`) and the reference is its adapter disabled.
    With a `checkpoints` folder (training/resume.py) the loop saves its whole state there every
    `checkpoint_every` iterations and starts from the newest one it finds, so a resumed run ends where an
    uninterrupted one would."""
    start, rng = time.perf_counter(), random.Random(cfg.seed)  # the prompt order: the same on every rank
    torch.manual_seed(cfg.seed + distributed.rank())  # each rank samples its own rollouts
    n_rollouts, n_minibatch = (
        distributed.shard_size(cfg.rollout_batch_size, "rollout_batch_size"),
        distributed.shard_size(cfg.minibatch_size, "minibatch_size"),
    )
    rollout_shard = slice(distributed.rank() * n_rollouts, (distributed.rank() + 1) * n_rollouts)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    for frozen in (ref_policy, reward_model):
        if frozen is not None:
            frozen.eval().requires_grad_(False)
    params = [
        p for p in (*policy.parameters(), *value_model.parameters()) if p.requires_grad
    ]  # with LoRA, the policy's adapter only
    optimizer = torch.optim.AdamW(
        params, lr=cfg.learning_rate, eps=1e-5, fused=True
    )  # [PPO-16] one kernel over every parameter
    learner = Learner(policy, value_model)
    parameter_counts = lora.parameter_counts(learner)  # policy and critic
    if distributed.world_size() > 1:
        learner = torch.nn.parallel.DistributedDataParallel(learner)
    merged = lora.MergedCopy(policy) if lora.is_adapted(policy) else None
    kl_coef, history, order, resumed_from = cfg.kl_coef, [], [], 0
    resumed = resume.latest(checkpoints)
    if resumed is not None:
        policy.load_state_dict(resumed["policy"])
        value_model.load_state_dict(resumed["value_model"])
        optimizer.load_state_dict(resumed["optimizer"])
        kl_coef, history, order = resumed["kl_coef"], resumed["history"], resumed["prompt_order"]
        rng.setstate(resumed["prompt_rng"])
        resume.set_rng_states(resumed["rng"][distributed.rank()])
        resumed_from = resumed["iteration"]
        logger.info(
            "ppo: resumed from the checkpoint of iteration %d/%d in %s", resumed_from, cfg.iterations, checkpoints
        )

    for iteration in range(resumed_from + 1, cfg.iterations + 1):
        # ---- rollout: sample responses from the current policy
        while len(order) < cfg.rollout_batch_size:
            order += rng.sample(range(len(prompts)), len(prompts))
        batch_prompts = [prompts[order.pop()] for _ in range(cfg.rollout_batch_size)][rollout_shard]
        policy.eval()
        # [PPO-12] the log-probs of the sampling pass ([PPO-17] sampler) are the rollout's old log-probs: no second policy forward
        query, response, logprobs = generate_tokens(
            merged.refresh() if merged else policy,  # [PPO-18] a LoRA policy samples from its merged weights
            tokenizer,
            [format_prompt(p, tokenizer) for p in batch_prompts],
            cfg.max_new_tokens,
            cfg.temperature,
            return_logprobs=True,
        )
        response, ended = truncate_after_eos(response, eos, pad)  # [PPO-3] nothing after the first EOS
        mask = (response != pad).float()  # response tokens, the EOS included
        logprobs = logprobs * mask

        # ---- score: RM score at the end, per-token KL to the reference, values from the critic
        lengths, query_mask = mask.sum(dim=1), query != pad
        with torch.no_grad():
            # [PPO-15] reference, critic and RM over the rollouts packed without padding, as the minibatches are
            ref_logprobs, values, score = score_rollouts(
                policy,
                ref_policy,
                reward_model,
                value_model,
                query,
                query_mask,
                response,
                lengths,
                cfg.temperature,
                pad,
                n_minibatch,
            )
            rm_score = score.clone()
            if cfg.missing_eos_penalty is not None:  # [PPO-5] no EOS, no RM score
                score = torch.where(ended, score, torch.full_like(score, cfg.missing_eos_penalty))
            rewards, kl = kl_penalized_rewards(
                score, logprobs, ref_logprobs, mask, kl_coef
            )  # [PPO-1] per-token KL penalty
            # ---- advantages
            advantages, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)  # [PPO-4] GAE, gamma=1, lambda=0.95
            advantages = masked_whiten(advantages, mask)  # [PPO-6] whiten advantages per batch
        if not torch.isfinite(rewards).all():
            raise TrainingDivergedError(f"ppo_policy: non-finite reward at iteration {iteration} (rollout/score step)")

        # ---- optimize: several epochs of minibatch updates on this rollout
        policy.train(), value_model.train()
        stats = {k: [] for k in ("pg_loss", "vf_loss", "clipfrac", "approx_kl", "entropy")}
        for epoch in range(cfg.ppo_epochs):  # [PPO-9] several epochs over minibatches
            for k, mb in enumerate(length_buckets(lengths + query_mask.sum(dim=1), n_minibatch)):
                # [PPO-13] rollouts packed without inner padding: no forward or backward pass over pad tokens
                packed = pack_minibatch(query[mb], query_mask[mb], response[mb], lengths[mb], pad)
                width = packed.width
                old_logprobs, mb_mask, mb_advantages = logprobs[mb, :width], mask[mb, :width], advantages[mb, :width]
                new_logprobs, entropy, new_values = learner(packed, cfg.temperature, pad)
                pg_loss, clipfrac = clipped_policy_loss(
                    new_logprobs, old_logprobs, mb_advantages, mb_mask, cfg.clip_range
                )  # [PPO-7]
                vf_loss = clipped_value_loss(
                    new_values, values[mb, :width], returns[mb, :width], mb_mask, cfg.clip_range_value
                )  # [PPO-8]
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
                    if (
                        epoch == 0 and k == 0
                    ):  # [PPO-2] before any update the policy is the rollout policy: ratio 1, nothing clipped
                        first_minibatch = {
                            "first_minibatch_clipfrac": clipfrac.item(),
                            "first_minibatch_max_ratio_error": ((new_logprobs - old_logprobs).exp() - 1)
                            .abs()
                            .mul(mb_mask)
                            .max()
                            .item(),
                        }

        # ---- log
        seq_kl = distributed.all_mean({"kl": kl.sum(dim=1).mean().item()})[
            "kl"
        ]  # the global batch's: kl_coef stays the same on every rank
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
            texts = [
                tokenizer.decode([t for t in r.tolist() if t not in (pad, eos)], skip_special_tokens=True)
                for r in response
            ]
            row["gold_score"] = monitor(batch_prompts, texts, ended.tolist())
        row = distributed.all_mean(row, maxima=("first_minibatch_max_ratio_error",)) | {
            "iteration": iteration
        }  # the global batch's figures
        history.append(row)
        logger.info(
            "ppo iteration %d/%d: " + ", ".join(f"{k}={v:.3f}" for k, v in row.items() if k != "iteration"),
            iteration,
            cfg.iterations,
        )
        if checkpoints is not None and iteration % cfg.checkpoint_every == 0:
            resume.save(
                checkpoints,
                iteration,
                {
                    "iteration": iteration,
                    "policy": policy.state_dict(),
                    "value_model": value_model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "kl_coef": kl_coef,
                    "history": history,
                    "prompt_order": order,
                    "prompt_rng": rng.getstate(),
                    "rng": distributed.all_gather(
                        resume.rng_states()
                    ),  # each rank samples its own rollouts: every rank's states
                },
            )

    final = history[-1]
    window = history[-max(1, len(history) // 5) :]  # the last fifth of training, less noisy than one batch
    metrics = {
        "initial_rm_score": history[0]["rm_score"],
        "final_rm_score": sum(r["rm_score"] for r in window) / len(window),
        "final_kl": sum(r["kl"] for r in window) / len(window),
        "final_eos_rate": sum(r["eos_rate"] for r in window) / len(window),
        "final_kl_coef": final["kl_coef"],
        # the monitor only observes, and is NaN on prompts the gold labeler cannot judge (a user's own)
        "finite": float(all(math.isfinite(v) for r in history for k, v in r.items() if k != "gold_score")),
        "train_seconds": time.perf_counter() - start,
        **parameter_counts,
        "resumed_from_iteration": resumed_from,
    }
    return PPOResult(policy, value_model, history, metrics)


def ppo_models(sft_model: str, reward_model: str, cfg: PPOConfig):
    """(policy, reference, scorer, critic, tokenizer) as PPO trains them, from the SFT and reward model folders."""
    from .lora import adapt
    from .models import load_causal_lm, load_reward_model

    policy, tokenizer = load_causal_lm(sft_model)
    if cfg.lora:  # [PPO-14] the reference is the policy with its adapter disabled: one frozen copy of the SFT weights
        policy, reference = adapt(policy, cfg.lora), None
    else:
        reference, _ = load_causal_lm(sft_model)
    scorer, _ = load_reward_model(reward_model)
    critic, _ = load_reward_model(reward_model)  # [PPO-11] the value model starts as the reward model
    if cfg.lora and cfg.critic_lora:  # [PPO-19] and trains an adapter of its own, its score head whole
        critic = adapt(critic, cfg.lora, "SEQ_CLS")
    return policy, reference, scorer, critic, tokenizer


@step
def ppo_policy(inputs: dict[str, str], cfg: PPOConfig) -> StepResult:
    from ..data.label_files import load_labels
    from .evaluate import judge_monitor, source_prompt_texts
    from .judge import load_judge
    from .lora import fine_tune_tag
    from .resume import checkpointing

    labels = load_labels(inputs["prompts"], "prompts")
    prompts = [r["prompt"] for r in labels.records]
    policy, reference, scorer, critic, tokenizer = ppo_models(inputs["sft_model"], inputs["reward_model"], cfg)
    with checkpointing("ppo_policy", inputs, cfg) as checkpoints:
        result = ppo_train(
            policy,
            reference,
            scorer,
            critic,
            tokenizer,
            prompts,
            cfg,
            monitor=judge_monitor(load_judge(cfg.judge)),
            checkpoints=checkpoints,
        )
    curves = {
        f"ppo/{k}": [(row["iteration"], row[k]) for row in result.history]
        for k in result.history[0]
        if k != "iteration"
    }
    return StepResult(
        "ppo_policy",
        {**result.metrics, "prompts": len(prompts)},
        ["initial_rm_score", "final_rm_score", "final_kl", "final_eos_rate", "train_seconds", "trainable_parameters"],
        inputs=inputs,
        tags={"labels.prompts.sha256": labels.sha256, **fine_tune_tag(cfg)},
        model=result.policy,
        tokenizer=tokenizer,
        card=ModelCard(
            "rlhf-dag PPO policy",
            "The SFT model optimized with PPO to maximize the reward model's score minus a KL penalty to the SFT model. The critic is kept in value_model/.",
        ),
        submodels={"value_model": result.value_model},
        records={"ppo_history.json": result.history},
        curves=curves,
        texts=source_prompt_texts(result.policy, tokenizer, True, cfg, cfg.seed, "answer (PPO policy)"),
    )
