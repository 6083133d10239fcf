"""Produce the shipped labeled files with the synthetic domain and the gold labeler.

`rlhf-dag make-labels --seed 0` runs `make_label_files`; its output is committed
under `assets/` and reviewed like code. Prompts in `eval_prompts.jsonl` (which
include the source's four prompts verbatim) never appear in a training file.
"""

from __future__ import annotations

import logging
import math
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from .domain import KINDS, RESPONSE_STYLES, SOURCE_PROMPTS, parse_task, sample_task
from .gold import gold_score
from .label_files import write_jsonl

logger = logging.getLogger(__name__)

# (better style, worse style) pairs shown to the labeler, and how often.
PAIR_STYLES = (
    (("ideal", "mediocre"), 5),
    (("ideal", "off_topic"), 3),
    (("mediocre", "off_topic"), 1),
    (("ideal", "confused"), 4),  # the right hero, relative, sum or condition matters most to a labeler
    (("ideal", "garbled"), 3),
    (("mediocre", "continuation"), 2),
    (("ideal", "continuation"), 1),
    (("ideal", "degraded"), 2),
    (("mediocre", "degraded"), 1),
)


def gold_ranked(prompt: str, first: str, second: str) -> tuple[str, str] | None:
    """(chosen, rejected) as the gold labeler ranks two responses to `prompt`; None for a tie or the same text,
    which a labeler cannot rank."""
    a, b = gold_score(prompt, first).score, gold_score(prompt, second).score
    if a == b or first.strip() == second.strip():
        return None
    return (first, second) if a > b else (second, first)


def _eval_prompts(rng: random.Random, per_kind: int) -> list[str]:
    prompts = list(SOURCE_PROMPTS)
    for kind in KINDS:
        have = sum(parse_task(p).kind == kind for p in prompts)
        while have < per_kind:
            prompt = sample_task(rng, kind).prompt
            if prompt not in prompts:
                prompts.append(prompt)
                have += 1
    return prompts


def _training_task(rng: random.Random, held_out: set[str], kind: str | None = None):
    while True:
        task = sample_task(rng, kind)
        if task.prompt not in held_out:
            return task


def _unique_records(n: int, make) -> list[dict]:
    """Call `make()` until it has produced `n` records with distinct content (None means skip)."""
    records, seen = [], set()
    while len(records) < n:
        record = make()
        key = record and tuple(sorted(record.items()))
        if record and key not in seen:
            seen.add(key)
            records.append(record)
    return records


# rounds of sampling after which a kind that still lacks its share of the pairs is an error, not a wait
MAX_POLICY_ROUNDS = 12


def kind_quotas(n: int, weights: dict[str, float] | None = None) -> dict[str, int]:
    """Each kind's share of n pairs: equal by default, or in proportion to `weights` (a kind left out weighs 1), so
    that a labeling budget can go where the policy is weakest. Rounded up: the shares add up to n or a little more."""
    weights = weights or {}
    unknown = sorted(set(weights) - set(KINDS))
    if unknown:
        raise ValueError(
            f"make-labels --kind-weight: unknown kind {', '.join(unknown)} (the kinds: {', '.join(KINDS)})"
        )
    if any(w <= 0 for w in weights.values()):
        raise ValueError(f"make-labels --kind-weight: a weight must be above 0, got {weights}")
    total = sum(weights.get(kind, 1.0) for kind in KINDS)
    return {kind: math.ceil(n * weights.get(kind, 1.0) / total) for kind in KINDS}


def _policy_comparisons(
    sampler,
    rng: random.Random,
    held_out: set[str],
    n: int,
    all_pairs: bool = False,
    kind_weights: dict[str, float] | None = None,
) -> list[dict]:
    """Pairs of a model's own samples for a prompt, ranked by gold score: best vs worst, or with `all_pairs`
    every pair of different scores among the samples (InstructGPT's K-way ranking as its C(K, 2) comparisons).
    Prompts whose samples all tie are skipped. Each kind gets its share of the n pairs (`kind_quotas`: equal unless
    weighted): a model whose stories rarely end would otherwise leave the reward model almost no story to learn from."""
    pairs, seen = [], set()
    quota, per_kind = kind_quotas(n, kind_weights), Counter()
    # a ranking of K gives up to C(K, 2) pairs: with all_pairs a round samples a third as many prompts (a real model's
    # samples cost minutes), and the rounds go on until n pairs, drawing prompts only of kinds short of their share
    per_round = -(-n // 3) if all_pairs else n
    rounds = 0
    while len(pairs) < n:
        short = [kind for kind in KINDS if per_kind[kind] < quota[kind]]
        if rounds == MAX_POLICY_ROUNDS:
            raise RuntimeError(
                f"make-labels: after {rounds} rounds of sampling, the policy's ranked pairs fall short of their share for: "
                f"{', '.join(f'{kind} ({per_kind[kind]} of {quota[kind]})' for kind in short)}. Its responses to those prompts rarely "
                "end (only ended responses are ranked) or all score alike; raise --max-new-tokens or "
                "--samples-per-prompt, or lower --policy-comparisons"
            )
        if rounds:
            logger.info(
                "ranked pairs after round %d: %s (%d of %d)",
                rounds,
                ", ".join(f"{kind} {per_kind[kind]}" for kind in KINDS),
                len(pairs),
                n,
            )
        rounds += 1
        tasks = [_training_task(rng, held_out, rng.choice(short)) for _ in range(per_round)]
        for task, responses in zip(tasks, sampler([t.prompt for t in tasks])):
            prompt = task.prompt
            unique = list(
                dict.fromkeys(r.strip() for r in responses if r.strip())
            )  # keeps sampling order: ties stay reproducible
            ranked = sorted(unique, key=lambda r: gold_score(prompt, r).score)
            if len(ranked) < 2 or gold_score(prompt, ranked[0]).score == gold_score(prompt, ranked[-1]).score:
                continue
            candidates = [(ranked[-1], ranked[0])]
            if all_pairs:
                candidates = [
                    (ranked[j], ranked[i])
                    for j in range(len(ranked) - 1, 0, -1)
                    for i in range(j)
                    if gold_score(prompt, ranked[j]).score > gold_score(prompt, ranked[i]).score
                ]
            for chosen, rejected in candidates:
                record = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
                key = tuple(record.values())
                if key not in seen and len(pairs) < n and per_kind[task.kind] < quota[task.kind]:
                    seen.add(key)
                    pairs.append(record)
                    per_kind[task.kind] += 1
    return pairs


def make_label_files(
    out_dir: Path | str,
    seed: int = 0,
    n_prompts: int = 512,
    n_demonstrations: int = 768,
    n_comparisons: int = 1536,
    eval_per_kind: int = 20,
    mediocre_fraction: float = 0.3,
    policy_sampler: Callable[[list[str]], list[list[str]]] | None = None,
    n_policy_comparisons: int = 512,
    all_policy_pairs: bool = False,
    kind_weights: dict[str, float] | None = None,
) -> dict[str, int]:
    """Write prompts, demonstrations, comparisons and eval_prompts .jsonl files; return their record counts.

    With `policy_sampler` (prompts -> several sampled responses each, e.g. from an
    SFT model), `n_policy_comparisons` of the comparisons rank the model's own
    samples, as InstructGPT's labelers ranked outputs of their SFT model; the rest
    rank the synthetic response styles.
    """
    out_dir = Path(out_dir)
    rng = random.Random(seed)
    eval_prompts = _eval_prompts(rng, eval_per_kind)
    held_out = set(eval_prompts)

    def prompt():
        return {"prompt": _training_task(rng, held_out).prompt}

    def demonstration():
        task = _training_task(rng, held_out)
        quality = "mediocre" if rng.random() < mediocre_fraction else "ideal"
        return {"prompt": task.prompt, "response": RESPONSE_STYLES[quality](task, rng), "quality": quality}

    styles = [s for s, _ in PAIR_STYLES]
    weights = [w for _, w in PAIR_STYLES]

    def comparison():
        task = _training_task(rng, held_out)
        ranked = gold_ranked(
            task.prompt, *(RESPONSE_STYLES[style](task, rng) for style in rng.choices(styles, weights)[0])
        )
        return ranked and {"prompt": task.prompt, "chosen": ranked[0], "rejected": ranked[1]}

    files = {
        "prompts": ("p", _unique_records(n_prompts, prompt)),
        "demonstrations": ("d", _unique_records(n_demonstrations, demonstration)),
        "comparisons": (
            "c",
            _unique_records(n_comparisons - (n_policy_comparisons if policy_sampler else 0), comparison),
        ),
        "eval_prompts": ("e", [{"prompt": p} for p in eval_prompts]),
    }
    if policy_sampler is not None:
        files["comparisons"][1].extend(
            _policy_comparisons(
                policy_sampler, random.Random(seed + 1), held_out, n_policy_comparisons, all_policy_pairs, kind_weights
            )
        )
    counts = {}
    for name, (prefix, records) in files.items():
        # a pair of the policy's own samples can repeat a synthetic pair word for word: keep the first
        unique = list({tuple(sorted(r.items())): r for r in reversed(records)}.values())[::-1]
        records = [{"id": f"{prefix}{i:04d}", **r} for i, r in enumerate(unique)]
        write_jsonl(out_dir / f"{name}.jsonl", records)
        counts[name] = len(records)
    return counts
