"""Judging policies on held-out prompts with the gold labeler (and the RM, the proxy it stands in for)."""

from __future__ import annotations

import math

import torch

from ..config import EvalConfig, PolicyCheckSettings
from ..data.domain import KINDS, SOURCE_PROMPTS, parse_task
from ..data.gold import gold_score, is_correct
from .chat import format_prompt, raw_prompt
from .generate import Sample, sample
from .reward import score_texts


def gold_scores(samples: list[Sample]) -> list[float | None]:
    """The gold score of each sample; None where the prompt is not of the task family (the labeler cannot judge it)."""
    return [g.score if (g := gold_score(s.prompt, s.response, s.ended_with_eos)) else None for s in samples]


def mean_gold(samples: list[Sample]) -> float:
    """Mean gold score over the samples whose prompt is of the task family (NaN if none is)."""
    return _mean_judged(gold_scores(samples))


def _mean_judged(scores: list[float | None]) -> float:
    judged = [g for g in scores if g is not None]
    return sum(judged) / len(judged) if judged else float("nan")


def win_rate(a: list[float | None], b: list[float | None]) -> tuple[float, float, float]:
    """Share of paired samples where `a` beats `b` (ties count half), with a 95% normal-approximation interval.

    Pairs with an unjudged side (None) are left out; with none left, all three are NaN.
    """
    outcomes = [1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(a, b, strict=True) if x is not None and y is not None]
    n = len(outcomes)
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    mean = sum(outcomes) / n
    sd = math.sqrt(sum((o - mean) ** 2 for o in outcomes) / max(1, n - 1))
    half = 1.96 * sd / math.sqrt(n)
    return mean, max(0.0, mean - half), min(1.0, mean + half)


def win_rate_by_kind(prompts: list[str], a: list[float | None], b: list[float | None]) -> dict[str, float]:
    """`win_rate` of `a` over `b` within each task kind of the built-in domain: where a policy wins, ties and loses."""
    kinds = [task.kind if (task := parse_task(p)) else None for p in prompts]
    return {kind: win_rate([x for x, k in zip(a, kinds, strict=True) if k == kind], [y for y, k in zip(b, kinds, strict=True) if k == kind])[0]
            for kind in KINDS if kind in kinds}


@torch.no_grad()
def sequence_kl(policy, reference, tokenizer, samples: list[Sample], batch_size: int = 32) -> float:
    """Mean over samples of sum_t [log pi(y_t) - log pi_ref(y_t)] on the policy's own responses: a Monte-Carlo KL(pi || ref)."""
    total = 0.0
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        p_ids = tokenizer([format_prompt(s.prompt) for s in chunk])["input_ids"]  # with a BOS where the tokenizer adds one
        r_ids = tokenizer([s.response + (tokenizer.eos_token if s.ended_with_eos else "") for s in chunk], add_special_tokens=False)["input_ids"]
        width = max(len(p) + len(r) for p, r in zip(p_ids, r_ids))
        ids = torch.full((len(chunk), width), tokenizer.pad_token_id)
        mask = torch.zeros((len(chunk), width), dtype=torch.bool)
        for i, (p, r) in enumerate(zip(p_ids, r_ids)):
            ids[i, : len(p) + len(r)] = torch.tensor(p + r)
            mask[i, len(p) : len(p) + len(r)] = True
        ids, mask = ids.to(policy.device), mask.to(policy.device)
        attention = ids != tokenizer.pad_token_id
        logp = torch.log_softmax(policy(input_ids=ids, attention_mask=attention).logits[:, :-1].float(), -1)
        ref_logp = torch.log_softmax(reference(input_ids=ids, attention_mask=attention).logits[:, :-1].float(), -1)
        target = ids[:, 1:].unsqueeze(-1)
        diff = (logp.gather(-1, target) - ref_logp.gather(-1, target)).squeeze(-1) * mask[:, 1:]
        total += diff.sum().item()
    return total / len(samples)


def policy_checks(policy, reference, tokenizer, prompts: list[str], cfg: PolicyCheckSettings, seed: int, reward_model=None) -> dict[str, float]:
    """What a trained policy's gates read, measured on its own samples of `prompts` (the first `check_prompts`):
    `final_kl` (sequence KL to the reference), `final_eos_rate`, `final_rm_score` (with a reward model),
    and `finite` (1.0 when every weight and figure is finite)."""
    prompts = prompts[: cfg.check_prompts]
    samples = sample(policy, tokenizer, prompts, [format_prompt(p) for p in prompts], cfg.check_max_new_tokens, cfg.check_temperature, seed=seed)
    metrics = {"final_kl": sequence_kl(policy, reference, tokenizer, samples),
               "final_eos_rate": sum(s.ended_with_eos for s in samples) / len(samples),
               "final_response_tokens": sum(s.n_tokens for s in samples) / len(samples)}
    if reward_model is not None:
        scores = score_texts(reward_model, tokenizer, prompts, [s.response for s in samples])
        metrics["final_rm_score"] = sum(scores) / len(scores)
    weights_finite = all(bool(torch.isfinite(p).all()) for p in policy.parameters())
    metrics["finite"] = float(weights_finite and all(math.isfinite(v) for v in metrics.values()))
    return metrics


def evaluate_policies(policies: dict[str, tuple[object, bool]], tokenizer, reward_model, prompts: list[str], cfg: EvalConfig) -> dict:
    """Sample every policy on every prompt (`samples_per_prompt` times) and score with gold and RM.

    `policies` maps a name to (model, instruct); an instruct model is asked in
    chat format, a base model with the bare request, as in the source.
    """
    repeated = [p for p in prompts for _ in range(cfg.samples_per_prompt)]
    results = {}
    for name, (model, instruct) in policies.items():
        texts = [format_prompt(p) if instruct else raw_prompt(p) for p in repeated]
        samples = sample(model, tokenizer, repeated, texts, cfg.max_new_tokens, cfg.temperature, seed=cfg.seed)
        gold = gold_scores(samples)
        rm = score_texts(reward_model, tokenizer, repeated, [s.response for s in samples])
        results[name] = {
            "samples": samples,
            "gold": gold,
            "rm": rm,
            "gold_mean": _mean_judged(gold),
            "gold_judged": sum(g is not None for g in gold),
            "rm_mean": sum(rm) / len(rm),
            "eos_rate": sum(s.ended_with_eos for s in samples) / len(samples),
            "response_tokens": sum(s.n_tokens for s in samples) / len(samples),
        }
    return results


def source_prompt_pass_rates(model, tokenizer, instruct: bool, cfg: EvalConfig) -> dict[str, float]:
    """Share of `source_prompt_samples` samples that answer each of the source's four prompts right (`gold.is_correct`), by task kind."""
    rates = {}
    for prompt in SOURCE_PROMPTS:
        repeated = [prompt] * cfg.source_prompt_samples
        texts = [format_prompt(p) if instruct else raw_prompt(p) for p in repeated]
        samples = sample(model, tokenizer, repeated, texts, cfg.max_new_tokens, cfg.source_prompt_temperature, seed=cfg.seed)
        rates[parse_task(prompt).kind] = sum(bool(is_correct(s.prompt, s.response)) for s in samples) / len(samples)
    return {kind: rates[kind] for kind in KINDS}


def reward_hacking_figure(history: list[dict], method: str = "PPO"):
    """RM score (the proxy) and gold score over the training batches of an online method: the proxy rising while gold falls is reward hacking."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    iterations = [r["iteration"] for r in history]
    fig, rm_axis = plt.subplots(figsize=(6, 3.5))
    rm_axis.plot(iterations, [r["rm_score"] for r in history], color="tab:blue", label="RM score (proxy)")
    rm_axis.set_xlabel(f"{method} iteration" if method == "PPO" else f"{method} generation batch")
    rm_axis.set_ylabel("mean RM score", color="tab:blue")
    gold_axis = rm_axis.twinx()
    gold_axis.plot(iterations, [r.get("gold_score", float("nan")) for r in history], color="tab:orange", label="gold score")
    gold_axis.set_ylabel("mean gold score", color="tab:orange")
    fig.suptitle(f"{method} rollouts: proxy reward vs gold")
    fig.tight_layout()
    return fig


def markdown_cell(text: str) -> str:
    """Text as one Markdown table cell: pipes escaped, line breaks kept as <br>."""
    return text.replace("|", "\\|").replace("\n", "<br>") or "(empty)"


def samples_markdown(samples: list[Sample], title: str = "response") -> str:
    """A table of prompt, response, gold score and EOS flag, for the asset's page and MLflow."""
    rows = [f"| prompt | {title} | gold | EOS |", "|---|---|---|---|"]
    for s in samples:
        gold = gold_score(s.prompt, s.response, s.ended_with_eos)
        cell = markdown_cell(s.response)
        rows.append(f"| {s.prompt} | {cell} | {f'{gold.score:.2f}' if gold else '-'} | {'yes' if s.ended_with_eos else 'no'} |")
    return "\n".join(rows)


def side_by_side(results: dict, prompts: list[str]) -> str:
    """The three models' first answer to each of the source's four prompts, with gold scores: a section a prompt,
    each answer in a code block, so that its line breaks (emails, code) survive in the UI and in MLflow."""
    fence = "`" * 3
    sections = []
    for prompt in SOURCE_PROMPTS:
        if prompt not in prompts:
            continue
        lines = [f"### {prompt}", ""]
        for name, title in (("base", "base"), ("sft", "SFT"), ("ppo", "PPO")):
            i = next(i for i, s in enumerate(results[name]["samples"]) if s.prompt == prompt)
            s = results[name]["samples"][i]
            lines += [f"**{title}**, gold {results[name]['gold'][i]:.2f}{'' if s.ended_with_eos else ', no EOS'}", "", fence,
                      s.response.replace(fence, "'''") or "(empty)", fence, ""]
        sections.append("\n".join(lines))
    return "\n".join(sections)
