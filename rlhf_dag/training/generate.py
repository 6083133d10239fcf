"""Sampling and scoring helpers shared by SFT, PPO and evaluation."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import DynamicCache

# Rows decoded together. A decoding step reads every weight once whatever the batch, so small batches are bound by
# memory, not arithmetic: at 135M on 2 CPU cores a step takes 135 ms at 16 rows, 185 at 32, 243 at 64 (118, 173 and
# 263 new tokens/s while every row is writing; bench/generation.py, docs/benchmarks.md).
SAMPLE_BATCH = 64
# A sampling call that takes longer says what it did (the evaluation samples for minutes at 135M on a CPU).
REPORT_AFTER_S = 5.0

logger = logging.getLogger(__name__)

# The weights a sampler may draw with. bf16 halves what a decoding step reads and, on a CPU with AVX512-BF16 (or a
# GPU), runs its matrix products natively: 1.5-1.9x a step at 135M on this box (docs/benchmarks.md section 7). Its
# logits differ from fp32's in the third digit, so its samples are another (close) distribution: the evaluation and
# the labeling candidates may use it; PPO's rollouts never do (their log-probs are PPO's old log-probs, [PPO-12]).
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass
class GenerationClock:
    """Seconds spent in `decode` and the new tokens it wrote, in this process so far: a step's generation figures are
    the difference across it (`result.step`)."""

    seconds: float = 0.0
    new_tokens: int = 0


CLOCK = GenerationClock()


@dataclass(frozen=True)
class Sample:
    prompt: str
    response: str
    ended_with_eos: bool
    n_tokens: int


def draw(logits: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row from softmax(logits / T) by inverse-CDF sampling, and its log-prob under that distribution.

    The distribution is `torch.multinomial`'s (tests/test_ppo_speed_paths.py checks the frequencies); the cost is
    not: `multinomial` draws an exponential variate for every vocabulary entry of every row, this one uniform per
    row, 13-23% less time per rollout on a CPU ([PPO-17], docs/ppo.md). The log-prob is PPO's old log-prob ([PPO-12])."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    cdf = logp.exp().cumsum(dim=-1)
    u = torch.rand(len(cdf), 1, device=cdf.device) * cdf[:, -1:]
    # the first entry whose cumulative probability exceeds u: a token of probability 0 (PAD) never is
    tokens = torch.searchsorted(cdf, u, right=True).clamp(max=cdf.shape[1] - 1)
    return tokens.squeeze(1), logp.gather(1, tokens).squeeze(1)


def shared_prefix_length(rows: list[list[int]]) -> int:
    """The length of the rows' longest common prefix, short of the shortest row's last token (so that every row
    keeps a token of its own after it); 0 below two tokens, where sharing saves nothing."""
    shared = min(len(r) for r in rows) - 1
    first = rows[0]
    for row in rows[1:]:
        shared = next((i for i in range(shared) if row[i] != first[i]), shared)
    return shared if shared >= 2 else 0


def _shared_prefix(model, input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """The prompts' longest common prefix (their real tokens, `shared_prefix_length`) and its KV cache, computed
    once: a chat template opens every prompt with the same tokens (SmolLM2's system prompt is half of a short
    request). None below two tokens."""
    rows = [ids[mask.bool()].tolist() for ids, mask in zip(input_ids, attention_mask)]
    shared = shared_prefix_length(rows)
    if not shared:
        return None
    ids = torch.tensor([rows[0][:shared]], device=input_ids.device)
    out = model(input_ids=ids, position_ids=torch.arange(shared, device=ids.device)[None], use_cache=True)
    return out.cache


def _prefill(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, prefix=None):
    """Run left-padded prompts through the model: (cache, mask, next positions [B, 1], last logits [B, V]).

    With a `prefix` (`_shared_prefix`'s cache, P tokens) only what follows it runs: the rows' suffixes, left-padded,
    after the prefix's keys (the mask [1]*P + [0]*pad + [1]*suffix, positions P onward). A prompt that comes more than
    once (the evaluation asks each source prompt 16 times) runs once, its cache and logits copied to the others.
    Columns that are padding in every row are left out."""
    shared = prefix.get_seq_length() if prefix is not None else 0
    if shared:  # drop each row's first `shared` real tokens, and left-pad what is left again
        lengths = attention_mask.sum(dim=1)
        width = int(lengths.max()) - shared
        columns = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
        take = columns >= (input_ids.shape[1] - (lengths - shared))[:, None]  # each row's last (length - P) tokens
        keep = columns[:, :width] >= (width - (lengths - shared))[:, None]
        suffix = torch.zeros((len(input_ids), width), dtype=input_ids.dtype, device=input_ids.device)
        suffix[keep] = input_ids[take]
        input_ids, attention_mask = suffix, keep.to(attention_mask.dtype)
    first = int(attention_mask.any(dim=0).long().argmax())
    input_ids, attention_mask = input_ids[:, first:], attention_mask[:, first:]
    unique, inverse = torch.unique(torch.where(attention_mask.bool(), input_ids, -1), dim=0, return_inverse=True)
    rows = (inverse[:, None] == torch.arange(len(unique), device=inverse.device)).long().argmax(dim=0)
    ids, mask = input_ids[rows], attention_mask[rows]  # one row per distinct prompt
    position = (mask.long().cumsum(dim=1) - 1).clamp(min=0) + shared
    past = None  # the prefix's keys and values, one copy per row
    if shared:
        past = DynamicCache(config=model.config)
        for i, layer in enumerate(prefix.layers):
            past.update(layer.keys.expand(len(ids), -1, -1, -1), layer.values.expand(len(ids), -1, -1, -1), i)
        mask = torch.cat([torch.ones_like(mask[:, :1]).expand(-1, shared), mask], dim=1)
    out = model(input_ids=ids, attention_mask=mask, position_ids=position, cache=past, use_cache=True, logits_to_keep=1)
    cache, logits = out.cache, out.logits[:, -1]
    if not torch.equal(inverse, torch.arange(len(inverse), device=inverse.device)):  # back to the rows' order
        cache.batch_select_indices(inverse)
    return cache, mask[inverse], position[inverse, -1:], logits[inverse]


def _join(cache, mask: torch.Tensor, joining, joining_mask: torch.Tensor) -> torch.Tensor:
    """Append the rows of `joining` (a cache of newly prefilled prompts) to `cache`, each left-padded to the wider
    of the two; returns the joint attention mask. A row's keys keep the positions they were computed at, so padding
    on the left changes nothing but the mask (as in any left-padded batch)."""
    width = max(mask.shape[1], joining_mask.shape[1])
    widen = lambda t, w: F.pad(t, (0, 0, width - w, 0))  # noqa: E731  [B, H, W, D]: pad W on the left
    for ours, theirs in zip(cache.layers, joining.layers):
        ours.keys = torch.cat([widen(ours.keys, mask.shape[1]), widen(theirs.keys, joining_mask.shape[1])])
        ours.values = torch.cat([widen(ours.values, mask.shape[1]), widen(theirs.values, joining_mask.shape[1])])
    return torch.cat([F.pad(mask, (width - mask.shape[1], 0)), F.pad(joining_mask, (width - joining_mask.shape[1], 0))])


def _keep(cache, mask: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Keep the rows `keep` of the cache, and drop the columns on the left that none of them attends to (a prompt
    longer than any left); returns their mask."""
    cache.batch_select_indices(keep)
    mask = mask[keep]
    first = int(mask.any(dim=0).long().argmax())
    if first:
        for layer in cache.layers:
            layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]
    return mask[:, first:]


@torch.no_grad()
def decode(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    temperature: float,
    eos_id: int,
    pad_id: int,
    slots: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The sampler every path uses: a KV-cached decoding loop that keeps up to `slots` rows writing (all by default).

    Each step runs the model on one new token per row and draws from its last logits (`draw`; greedy at temperature
    0). It computes what `generate(do_sample=True)` with PAD suppressed computes, without `generate`'s per-step
    machinery (logits processors over the whole vocabulary, stopping criteria, input preparation), and without its
    waste: `generate` runs every row of a batch until the last one ends, at a batch that is ever less full.
    - A row that wrote EOS (or `max_new_tokens`) stops writing; once an eighth of the batch has, those rows leave it
      with their KV cache (leaving copies the cache, so not one row at a time).
    - Continuous batching: when a quarter of the slots are free and prompts are waiting, the next prompts are
      prefilled together and join the batch, so a decoding step runs at a full batch, not at the last few rows of
      one: a step reads every weight whatever the batch, and on a CPU costs little more at 64 rows than at 16.
    Returns (response ids [B, R], PAD after a row's EOS; log-probs [B, R], 0 at PAD), rows in the order given."""
    started, total, device = time.perf_counter(), len(input_ids), input_ids.device
    slots = min(slots or total, total)
    tokens = torch.full((total, max_new_tokens), pad_id, dtype=torch.long, device=device)
    logprobs = torch.zeros((total, max_new_tokens), device=device)
    rows = torch.zeros(0, dtype=torch.long, device=device)  # the prompt each row of the batch writes for
    written = torch.zeros(0, dtype=torch.long, device=device)  # tokens each row has written
    writing = torch.zeros(0, dtype=torch.bool, device=device)
    cache = mask = position = logits = None
    queued, prefix = 0, _shared_prefix(model, input_ids, attention_mask)
    while True:
        free = slots - int(writing.sum())
        if queued < total and (free == slots or free >= max(1, slots // 4)):
            if not bool(writing.all()):
                keep = writing.nonzero().squeeze(1)
                mask = _keep(cache, mask, keep)
                rows, written, writing, position, logits = (t[keep] for t in (rows, written, writing, position, logits))
            joining = slice(queued, min(queued + free, total))
            new_cache, new_mask, new_position, new_logits = _prefill(
                model, input_ids[joining], attention_mask[joining], prefix
            )
            if len(rows):
                mask = _join(cache, mask, new_cache, new_mask)
                position, logits = torch.cat([position, new_position]), torch.cat([logits, new_logits])
            else:
                cache, mask, position, logits = new_cache, new_mask, new_position, new_logits
            rows = torch.cat([rows, torch.arange(joining.start, joining.stop, device=device)])
            written = torch.cat([written, torch.zeros(joining.stop - joining.start, dtype=torch.long, device=device)])
            writing = torch.cat([writing, torch.ones(joining.stop - joining.start, dtype=torch.bool, device=device)])
            queued = joining.stop
        # PAD is not a word: sampled inside a response it would read as padding everywhere downstream
        # (masks, response lengths, the RM's last token). PPO scores with the same exclusion (`ppo._token_logprobs`).
        logits = logits.float()
        logits[:, pad_id] = float("-inf")
        if temperature > 0:
            token, logp = draw(logits, temperature)
        else:
            token, logp = logits.argmax(dim=-1), torch.zeros(len(logits), device=device)
        now = writing.nonzero().squeeze(1)
        tokens[rows[now], written[now]] = token[now]
        logprobs[rows[now], written[now]] = logp[now]
        written = written + writing.long()
        writing = writing & (token != eos_id) & (written < max_new_tokens)
        if not bool(writing.any()) and queued == total:
            break
        if not bool(writing.any()) or int((~writing).sum()) >= max(1, len(rows) // 8):
            if bool(writing.any()):  # rows that stopped writing leave the batch
                keep = writing.nonzero().squeeze(1)
                mask = _keep(cache, mask, keep)
                rows, written, writing, position, token = (t[keep] for t in (rows, written, writing, position, token))
            else:  # all stopped and prompts are waiting: the next ones start a batch of their own
                rows, written, writing = rows[:0], written[:0], writing[:0]
                cache = mask = position = logits = None
                continue
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        position = position + 1
        out = model(input_ids=token[:, None], attention_mask=mask, position_ids=position, cache=cache, use_cache=True)
        cache, logits = out.cache, out.logits[:, -1]
    written_at = tokens != pad_id
    CLOCK.seconds += time.perf_counter() - started
    CLOCK.new_tokens += int(written_at.sum())
    width = int(written_at.any(dim=0).nonzero().max()) + 1 if bool(written_at.any()) else 1
    return tokens[:, :width], logprobs[:, :width]


@torch.no_grad()
def generate_tokens(
    model,
    tokenizer,
    texts: list[str],
    max_new_tokens: int,
    temperature: float,
    generator_seed: int | None = None,
    return_logprobs: bool = False,
    slots: int | None = None,
):
    """Batched sampling (`decode`, up to `slots` rows writing at a time: all by default), left-padded.

    Returns (query ids [B, Q], response ids [B, R]), and with `return_logprobs`
    the log-probability of each sampled token under the distribution it was
    sampled from (logits / temperature) [B, R]: what PPO would otherwise
    recompute with one more forward pass (tests/test_ppo_speed_paths.py checks they match).
    """
    if generator_seed is not None:
        torch.manual_seed(generator_seed)
    if return_logprobs and temperature <= 0:
        raise ValueError(
            "generate_tokens: log-probs of greedy decoding (temperature 0) are not defined; sample with a temperature > 0"
        )
    tokenizer.padding_side = "left"
    # a prompt opens the sequence: with a BOS where the tokenizer adds one (Llama's), as TRL's trainers tokenize it
    batch = tokenizer(texts, return_tensors="pt", padding=True).to(model.device)
    tokenizer.padding_side = "right"
    response, logprobs = decode(
        model,
        batch["input_ids"],
        batch["attention_mask"],
        max_new_tokens,
        temperature,
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
        slots,
    )
    return (batch["input_ids"], response, logprobs) if return_logprobs else (batch["input_ids"], response)


def truncate_after_eos(responses: torch.Tensor, eos_id: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad every token after the first EOS; return (responses, ended_with_eos [B] bool)."""
    is_eos = responses == eos_id
    ended = is_eos.any(dim=1)
    after = (is_eos.cumsum(dim=1) - is_eos.long()) > 0
    return responses.masked_fill(after, pad_id), ended


def at_precision(model, precision: str):
    """The model to sample from at `precision` (`PRECISIONS`): the model itself when its weights already are, else a
    copy of it cast (the model given keeps its weights: casting back and forth would round them)."""
    if precision not in PRECISIONS:
        raise ValueError(f"sample precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if next(model.parameters()).dtype == PRECISIONS[precision]:
        return model
    import copy

    return copy.deepcopy(model).to(PRECISIONS[precision])


def sample(
    model,
    tokenizer,
    prompts: list[str],
    texts: list[str],
    max_new_tokens: int,
    temperature: float,
    batch_size: int = SAMPLE_BATCH,
    seed: int = 0,
    precision: str = "fp32",
) -> list[Sample]:
    """Sample one response per text; `prompts` are the plain requests the texts were built from.

    Up to `batch_size` rows write at a time (`decode`'s continuous batching); the texts join the longest first, so
    the rows that join together pad their prompts little. The samples come back in the texts' order. With `precision`
    "bf16" they are drawn from a bfloat16 copy of the model (`at_precision`)."""
    model = at_precision(model, precision).eval()
    started = time.perf_counter()
    lengths = [len(ids) for ids in tokenizer(texts)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])
    _, responses = generate_tokens(
        model, tokenizer, [texts[i] for i in order], max_new_tokens, temperature, seed, slots=batch_size
    )
    responses, ended = truncate_after_eos(responses, tokenizer.eos_token_id, tokenizer.pad_token_id)
    samples: list[Sample | None] = [None] * len(texts)
    for i, row, row_ended in zip(order, responses, ended):
        ids = [t for t in row.tolist() if t not in (tokenizer.pad_token_id, tokenizer.eos_token_id)]
        # A tokenizer trained here starts each text with a space token (training/pretrain.py, `train_tokenizer`):
        # the response's text leaves it out; tokenized again after the prompt it gives the same ids.
        text = tokenizer.decode(ids, skip_special_tokens=True).removeprefix(" ")
        samples[i] = Sample(prompts[i], text, bool(row_ended), len(ids))
    seconds = time.perf_counter() - started
    if seconds >= REPORT_AFTER_S:
        written = sum(s.n_tokens + s.ended_with_eos for s in samples)
        logger.info(
            "sampled %d responses at T=%g: %d new tokens in %.0f s (%.0f tokens/s)",
            len(samples),
            temperature,
            written,
            seconds,
            written / seconds,
        )
    return samples


def sample_key(
    model_dir: Path | str,
    prompts: list[str],
    texts: list[str],
    max_new_tokens: int,
    temperature: float,
    batch_size: int,
    seed: int,
    precision: str = "fp32",
) -> str:
    """What a model's samples are keyed by: the model's folder (one per materialization in the graph,
    `<artifacts>/<asset>/<run id>/`) and its weights files' size and modification time (a benchmark or a spec run
    writes its steps to fixed folders, again and again: a rewritten folder is another model), the sha256 of the
    prompts and of how they were asked, and every sampling setting."""
    prompts_sha = hashlib.sha256(json.dumps([prompts, texts]).encode()).hexdigest()
    folder = Path(model_dir).resolve()
    weights = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    settings = {
        "model": str(folder),
        "weights": [(w.name, w.stat().st_size, w.stat().st_mtime_ns) for w in weights],
        "prompts_sha256": prompts_sha,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "batch_size": batch_size,
        "seed": seed,
        "precision": precision,
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def sample_once(
    model_dir: Path | str,
    model,
    tokenizer,
    prompts: list[str],
    texts: list[str],
    max_new_tokens: int,
    temperature: float,
    batch_size: int = SAMPLE_BATCH,
    seed: int = 0,
    store: Path | None = None,
    precision: str = "fp32",
) -> tuple[list[Sample], bool]:
    """`sample`, generated once per key (`sample_key`) and reused wherever the same key comes up again: the four method
    evaluations sample SFT once between them, and after an edit of the comparisons the evaluation samples only the new
    policy. Returns (samples, reused). The samples live in `store` (default `<RLHF_DAG_HOME>/samples/`)."""
    from ..artifacts import atomic_path
    from ..config import home_dir

    key = sample_key(model_dir, prompts, texts, max_new_tokens, temperature, batch_size, seed, precision)
    path = Path(store or home_dir() / "samples") / f"{key}.json"
    if path.exists():
        return [Sample(**s) for s in json.loads(path.read_text(encoding="utf-8"))], True
    samples = sample(model, tokenizer, prompts, texts, max_new_tokens, temperature, batch_size, seed, precision)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps([asdict(s) for s in samples]), encoding="utf-8")
    return samples, False


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
