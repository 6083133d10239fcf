"""Sampling and scoring helpers shared by SFT, PPO and evaluation."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import LogitsProcessor, LogitsProcessorList


@dataclass(frozen=True)
class Sample:
    prompt: str
    response: str
    ended_with_eos: bool
    n_tokens: int


class InverseCDFSampler(LogitsProcessor):
    """Draws each next token from softmax(scores / T) by inverse-CDF sampling, as `generate`'s last logits
    processor under greedy decoding: the drawn token scores 0 and every other -inf, so greedy takes the draw.

    The distribution is `generate(do_sample=True)`'s (tests/test_ppo_speed_paths.py checks the frequencies);
    the cost is not. `torch.multinomial` draws an exponential variate for every vocabulary entry of every row;
    this draws one uniform per row, 13-23% less time per rollout on a CPU ([PPO-17], docs/ppo.md). It also keeps
    each draw's log-prob, PPO's old log-prob ([PPO-12])."""

    def __init__(self, temperature: float):
        self.temperature, self.logprobs = temperature, []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(scores.float() / self.temperature, dim=-1)
        cdf = logp.exp().cumsum(dim=-1)
        u = torch.rand(len(cdf), 1, device=cdf.device) * cdf[:, -1:]
        # the first entry whose cumulative probability exceeds u: a token of probability 0 (PAD) never is
        tokens = torch.searchsorted(cdf, u, right=True).clamp(max=cdf.shape[1] - 1)
        self.logprobs.append(logp.gather(1, tokens))
        return torch.full_like(scores, float("-inf")).scatter_(1, tokens, 0.0)


@torch.no_grad()
def generate_tokens(
    model,
    tokenizer,
    texts: list[str],
    max_new_tokens: int,
    temperature: float,
    generator_seed: int | None = None,
    return_logprobs: bool = False,
):
    """Batched sampling with the KV cache (`model.generate`), left-padded.

    Returns (query ids [B, Q], response ids [B, R]), and with `return_logprobs`
    the log-probability of each sampled token under the distribution it was
    sampled from (logits / temperature) [B, R]: what PPO would otherwise
    recompute with one more forward pass (tests/test_ppo_speed_paths.py checks they match).
    """
    if generator_seed is not None:
        torch.manual_seed(generator_seed)
    tokenizer.padding_side = "left"
    # a prompt opens the sequence: with a BOS where the tokenizer adds one (Llama's), as TRL's trainers tokenize it
    batch = tokenizer(texts, return_tensors="pt", padding=True).to(model.device)
    tokenizer.padding_side = "right"
    sampler = InverseCDFSampler(temperature) if temperature > 0 else None
    out = model.generate(
        **batch,
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        # PAD is not a word: sampled inside a response it would read as padding everywhere downstream
        # (masks, response lengths, the RM's last token). PPO scores with the same exclusion (`ppo._token_logprobs`).
        suppress_tokens=[tokenizer.pad_token_id],
        use_cache=True,
        do_sample=False,  # the sampler draws; greedy decoding takes its draw
        logits_processor=LogitsProcessorList([sampler] if sampler else []),
        return_dict_in_generate=True,
    )
    response = out.sequences[:, batch["input_ids"].shape[1] :]
    if not return_logprobs:
        return batch["input_ids"], response
    if sampler is None:
        raise ValueError(
            "generate_tokens: log-probs of greedy decoding (temperature 0) are not defined; sample with a temperature > 0"
        )
    # PAD is suppressed, so every PAD here is padding after a row's EOS: 0, as everywhere else
    logprobs = torch.cat(sampler.logprobs, dim=1)[:, : response.shape[1]]
    return batch["input_ids"], response, logprobs.masked_fill(response == tokenizer.pad_token_id, 0.0)


def truncate_after_eos(responses: torch.Tensor, eos_id: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad every token after the first EOS; return (responses, ended_with_eos [B] bool)."""
    is_eos = responses == eos_id
    ended = is_eos.any(dim=1)
    after = (is_eos.cumsum(dim=1) - is_eos.long()) > 0
    return responses.masked_fill(after, pad_id), ended


def sample(
    model,
    tokenizer,
    prompts: list[str],
    texts: list[str],
    max_new_tokens: int,
    temperature: float,
    batch_size: int = 32,
    seed: int = 0,
) -> list[Sample]:
    """Sample one response per text; `prompts` are the plain requests the texts were built from."""
    model.eval()
    samples = []
    for start in range(0, len(texts), batch_size):
        _, responses = generate_tokens(
            model, tokenizer, texts[start : start + batch_size], max_new_tokens, temperature, seed + start
        )
        responses, ended = truncate_after_eos(responses, tokenizer.eos_token_id, tokenizer.pad_token_id)
        for i, row in enumerate(responses):
            ids = [t for t in row.tolist() if t not in (tokenizer.pad_token_id, tokenizer.eos_token_id)]
            # A tokenizer trained here starts each text with a space token (training/pretrain.py, `train_tokenizer`):
            # the response's text leaves it out; tokenized again after the prompt it gives the same ids.
            text = tokenizer.decode(ids, skip_special_tokens=True).removeprefix(" ")
            samples.append(Sample(prompts[start + i], text, bool(ended[i]), len(ids)))
    return samples


@torch.no_grad()
def response_loss(model, tokenizer, prompt_texts: list[str], responses: list[str], batch_size: int = 32) -> float:
    """Mean cross-entropy per response token (response + EOS), given the prompt text."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(responses), batch_size):
        p_ids = tokenizer(prompt_texts[start : start + batch_size])[
            "input_ids"
        ]  # with a BOS where the tokenizer adds one
        r_ids = tokenizer(
            [r + tokenizer.eos_token for r in responses[start : start + batch_size]], add_special_tokens=False
        )["input_ids"]
        rows = [p + r for p, r in zip(p_ids, r_ids)]
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), tokenizer.pad_token_id)
        labels = torch.full((len(rows), width), -100)
        for i, (p, r) in enumerate(zip(p_ids, r_ids)):
            ids[i, : len(p) + len(r)] = torch.tensor(p + r)
            labels[i, len(p) : len(p) + len(r)] = torch.tensor(r)
        ids, labels = ids.to(model.device), labels.to(model.device)
        logits = model(input_ids=ids, attention_mask=(labels != -100) | (ids != tokenizer.pad_token_id)).logits
        loss = F.cross_entropy(
            logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), reduction="sum", ignore_index=-100
        )
        total += loss.item()
        count += int((labels[:, 1:] != -100).sum())
    return total / count
