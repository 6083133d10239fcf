"""Judging policies on held-out prompts: with a judge where one is configured and can judge the prompts (training/judge.py;
the gold labeler by default), and always with the reward model, the proxy the policies optimized."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path

import torch

from ..config import EvalConfig, PolicyCheckSettings, SampleSettings, StepConfig
from ..data.chat import base_prompt, format_prompt
from .generate import Sample, sample, sample_once
from .judge import Judge, load_judge
from .result import StepResult, markdown_cell, read_inputs, step
from .reward import score_texts

logger = logging.getLogger(__name__)


def judge_scores(samples: list[Sample], judge: Judge | None) -> list[float | None]:
    """The judge's score of each sample; None where it cannot judge the prompt, or there is no judge."""
    return [judge.score(s.prompt, s.response, s.ended_with_eos) if judge else None for s in samples]


def mean_judged(samples: list[Sample], judge: Judge | None) -> float | None:
    """Mean judge score over the samples it can judge; None if it can judge none."""
    scores = [g for g in judge_scores(samples, judge) if g is not None]
    return sum(scores) / len(scores) if scores else None


def _mean_judged(scores: list[float | None]) -> float:
    judged = [g for g in scores if g is not None]
    return sum(judged) / len(judged) if judged else float("nan")


def win_rate(a: list[float | None], b: list[float | None]) -> tuple[float, float, float]:
    """Share of paired samples where `a` beats `b` (ties count half), with a 95% normal-approximation interval.

    Pairs with an unjudged side (None) are left out; with none left, all three are NaN.
    """
    outcomes = [
        1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(a, b, strict=True) if x is not None and y is not None
    ]
    n = len(outcomes)
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    mean = sum(outcomes) / n
    sd = math.sqrt(sum((o - mean) ** 2 for o in outcomes) / max(1, n - 1))
    half = 1.96 * sd / math.sqrt(n)
    return mean, max(0.0, mean - half), min(1.0, mean + half)


def win_rate_by_kind(
    prompts: list[str], a: list[float | None], b: list[float | None], judge: Judge | None
) -> dict[str, float]:
    """`win_rate` of `a` over `b` within each task kind the judge knows: where a policy wins, ties and loses."""
    if judge is None:
        return {}
    kinds = [judge.kind(p) for p in prompts]
    return {
        kind: win_rate(
            [x for x, k in zip(a, kinds, strict=True) if k == kind],
            [y for y, k in zip(b, kinds, strict=True) if k == kind],
        )[0]
        for kind in judge.kinds
        if kind in kinds
    }


@torch.no_grad()
def sequence_kl(policy, reference, tokenizer, samples: list[Sample], batch_size: int = 32) -> float:
    """Mean over samples of sum_t [log pi(y_t) - log pi_ref(y_t)] on the policy's own responses: a Monte-Carlo KL(pi || ref)."""
    total = 0.0
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        p_ids = tokenizer([format_prompt(s.prompt, tokenizer) for s in chunk])[
            "input_ids"
        ]  # with a BOS where the tokenizer adds one
        r_ids = tokenizer(
            [s.response + (tokenizer.eos_token if s.ended_with_eos else "") for s in chunk], add_special_tokens=False
        )["input_ids"]
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


def policy_checks(
    policy, reference, tokenizer, prompts: list[str], cfg: PolicyCheckSettings, seed: int, reward_model=None
) -> dict[str, float]:
    """What a trained policy's gates read, measured on its own samples of `prompts` (the first `check_prompts`):
    `final_kl` (sequence KL to the reference), `final_eos_rate`, `final_rm_score` (with a reward model),
    and `finite` (1.0 when every weight and figure is finite)."""
    prompts = prompts[: cfg.check_prompts]
    samples = sample(
        policy,
        tokenizer,
        prompts,
        [format_prompt(p, tokenizer) for p in prompts],
        cfg.check_max_new_tokens,
        cfg.check_temperature,
        seed=seed,
    )
    metrics = {
        "final_kl": sequence_kl(policy, reference, tokenizer, samples),
        "final_eos_rate": sum(s.ended_with_eos for s in samples) / len(samples),
        "final_response_tokens": sum(s.n_tokens for s in samples) / len(samples),
    }
    if reward_model is not None:
        scores = score_texts(reward_model, tokenizer, prompts, [s.response for s in samples])
        metrics["final_rm_score"] = sum(scores) / len(scores)
    weights_finite = all(bool(torch.isfinite(p).all()) for p in policy.parameters())
    metrics["finite"] = float(weights_finite and all(math.isfinite(v) for v in metrics.values()))
    return metrics


def _samples(model, tokenizer, instruct: bool, folder: Path, prompts: list[str], cfg: EvalConfig, temperature: float):
    """One model's samples of `prompts` as the evaluation asks them (an instruct model in chat format, a base model
    with the bare request, as in the source) at `temperature` and the evaluation's other settings, generated once
    (`sample_once`): (samples, reused)."""
    texts = [format_prompt(p, tokenizer) if instruct else base_prompt(p, tokenizer) for p in prompts]
    return sample_once(
        folder,
        model,
        tokenizer,
        prompts,
        texts,
        cfg.max_new_tokens,
        temperature,
        seed=cfg.seed,
        precision=cfg.sample_precision,
    )


def evaluate_policies(
    policies: dict[str, tuple[object, bool, Path]],
    tokenizer,
    reward_model,
    prompts: list[str],
    cfg: EvalConfig,
    judge: Judge | None,
    reused: list[str] | None = None,
) -> dict:
    """Sample every policy on every prompt (`samples_per_prompt` times) and score with the judge and the RM.

    `policies` maps a name to (model, instruct, its folder); an instruct model is asked in chat format, a base model
    with the bare request, as in the source. A model's samples under the same settings are generated once
    (`sample_once`); the names whose samples were reused are appended to `reused`.
    """
    repeated = [p for p in prompts for _ in range(cfg.samples_per_prompt)]
    results = {}
    for name, (model, instruct, folder) in policies.items():
        samples, was_reused = _samples(model, tokenizer, instruct, folder, repeated, cfg, cfg.temperature)
        if was_reused and reused is not None:
            reused.append(name)
        gold = judge_scores(samples, judge)
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


def source_prompt_pass_rates(
    model,
    tokenizer,
    instruct: bool,
    cfg: EvalConfig,
    judge: Judge | None,
    folder: Path,
    reused: list[str] | None = None,
) -> dict[str, float]:
    """Share of `source_prompt_samples` samples that answer each of the judge's source prompts right (`is_correct`),
    keyed by the prompt's kind (in the judge's order) or, without one, its position; none without a judge. Samples
    come from one `sample_once` call for all of them; when it reuses earlier samples, the prompts are appended to
    `reused`."""
    source = list(judge.source_prompts) if judge else []
    if not source:
        return {}
    # every prompt's samples in one call: the sampler keeps its batch full across them
    repeated = [p for p in source for _ in range(cfg.source_prompt_samples)]
    samples, was_reused = _samples(model, tokenizer, instruct, folder, repeated, cfg, cfg.source_prompt_temperature)
    if was_reused and reused is not None:
        reused.extend(source)
    rates = {}
    for i, prompt in enumerate(source):
        answers = samples[i * cfg.source_prompt_samples : (i + 1) * cfg.source_prompt_samples]
        rates[judge.kind(prompt) or f"prompt{i}"] = sum(
            bool(judge.is_correct(s.prompt, s.response)) for s in answers
        ) / len(answers)
    return {
        kind: rates[kind]
        for kind in sorted(rates, key=lambda k: judge.kinds.index(k) if k in judge.kinds else len(judge.kinds))
    }


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
    gold_axis.plot(
        iterations, [r.get("gold_score", float("nan")) for r in history], color="tab:orange", label="gold score"
    )
    gold_axis.set_ylabel("mean gold score", color="tab:orange")
    fig.suptitle(f"{method} rollouts: proxy reward vs gold")
    fig.tight_layout()
    return fig


def samples_markdown(samples: list[Sample], judge: Judge | None, title: str = "response") -> str:
    """A table of prompt, response, the judge's score and EOS flag, for the asset's page and MLflow."""
    rows = [f"| prompt | {title} | gold | EOS |", "|---|---|---|---|"]
    for s, gold in zip(samples, judge_scores(samples, judge)):
        cell = markdown_cell(s.response)
        rows.append(
            f"| {s.prompt} | {cell} | {f'{gold:.2f}' if gold is not None else '-'} | {'yes' if s.ended_with_eos else 'no'} |"
        )
    return "\n".join(rows)


def side_by_side(results: dict, prompts: list[str], judge: Judge | None) -> str:
    """Each model's first answer to each of the judge's source prompts among the eval prompts (without any, the first
    four eval prompts), with the judge's scores: a section a prompt, each answer in a code block, so that its line
    breaks (emails, code) survive in the UI and in MLflow."""
    fence = "`" * 3
    sections = []
    shown = [p for p in (judge.source_prompts if judge else ()) if p in prompts] or list(dict.fromkeys(prompts))[:4]
    for prompt in shown:
        lines = [f"### {prompt}", ""]
        for name in results:
            i = next(i for i, s in enumerate(results[name]["samples"]) if s.prompt == prompt)
            s, gold = results[name]["samples"][i], results[name]["gold"][i]
            lines += [
                f"**{MODEL_TITLES.get(name, name.upper())}**{f', gold {gold:.2f}' if gold is not None else ''}"
                f"{'' if s.ended_with_eos else ', no EOS'}",
                "",
                fence,
                s.response.replace(fence, "'''") or "(empty)",
                fence,
                "",
            ]
        sections.append("\n".join(lines))
    return "\n".join(sections)


MODEL_TITLES = {"base": "base", "sft": "SFT"}


def source_prompt_texts(model, tokenizer, instruct: bool, cfg: SampleSettings, seed: int, title: str) -> dict[str, str]:
    """{"source_prompt_samples.md": the model's answer to each of the judge's source prompts, with its scores, as a
    Markdown table}, or nothing where the step has no judge with source prompts."""
    judge = load_judge(cfg.judge)
    if judge is None or not judge.source_prompts:
        return {}
    texts = [format_prompt(p, tokenizer) if instruct else base_prompt(p, tokenizer) for p in judge.source_prompts]
    samples = sample(
        model,
        tokenizer,
        list(judge.source_prompts),
        texts,
        cfg.sample_max_new_tokens,
        cfg.sample_temperature,
        seed=seed,
    )
    return {"source_prompt_samples.md": samples_markdown(samples, judge, title)}


def judge_monitor(judge: Judge | None) -> Callable[[list[str], list[str], list[bool]], float] | None:
    """A training loop's observer: the judge's mean over a batch (NaN on a batch it cannot judge); None without a judge."""
    if judge is None:
        return None

    def monitor(batch_prompts: list[str], responses: list[str], ended: list[bool]) -> float:
        judged = mean_judged([Sample(p, r, e, 0) for p, r, e in zip(batch_prompts, responses, ended)], judge)
        return float("nan") if judged is None else judged

    return monitor


def require_same_reward_model(step: str, policy: str, inputs: dict[str, str]) -> None:
    """An evaluation scores a policy with the reward model it was trained against, or refuses."""
    trained_against = read_inputs(inputs[policy]).get("reward_model")
    if trained_against is not None and Path(trained_against).resolve() != Path(inputs["reward_model"]).resolve():
        raise ValueError(
            f"{step}: {policy} ({inputs[policy]}) was trained against the reward model {trained_against}, "
            f"but the reward_model input is {inputs['reward_model']}; re-materialize {policy} so both use the same reward model"
        )


def evaluate_against_sft(step: str, method: str, inputs: dict[str, str], cfg: EvalConfig) -> StepResult:
    """`method`'s policy vs the SFT model, and the base model where it is an input, on the held-out prompts: the one
    evaluation of PPO and of every alternative, with the same figures and warnings.

    Always: the reward model's preference of the policy over SFT (`rm_win_rate_*`, the proxy the policy optimized),
    RM means, KL to SFT, length and EOS rate. Where the judge can judge some of the prompts: its win rates (overall
    and per task kind), means and source-prompt pass rates. A figure that cannot be measured is left out, never NaN.
    """
    from ..data.label_files import load_labels
    from .models import load_causal_lm, load_reward_model

    judge = load_judge(cfg.judge)
    labels = load_labels(inputs["eval_prompts"], "eval_prompts")  # a bad line fails first, naming its file and line
    prompts = [r["prompt"] for r in labels.records]
    policy_key = f"{method}_policy"
    require_same_reward_model(step, policy_key, inputs)
    models = {}
    if "base_model" in inputs:  # asked with the bare request, as in the source
        base, tokenizer = load_causal_lm(inputs["base_model"])
        models["base"] = (base, False, Path(inputs["base_model"]))
    sft, sft_tokenizer = load_causal_lm(inputs["sft_model"])
    tokenizer = tokenizer if models else sft_tokenizer
    policy, _ = load_causal_lm(inputs[policy_key])
    models |= {"sft": (sft, True, Path(inputs["sft_model"])), method: (policy, True, Path(inputs[policy_key]))}
    scorer, _ = load_reward_model(inputs["reward_model"])
    reused = []  # the models whose held-out samples an earlier evaluation generated under the same key
    results = evaluate_policies(models, tokenizer, scorer, prompts, cfg, judge, reused)
    judged = results[method]["gold_judged"] > 0
    metrics = {}
    for a, b in ((method, "sft"), ("sft", "base"), (method, "base")):
        if a in results and b in results:
            for prefix, key in (("", "gold"), ("rm_", "rm")) if judged else (("rm_", "rm"),):
                rate, low, high = win_rate(results[a][key], results[b][key])
                metrics.update(
                    {
                        f"{prefix}win_rate_{a}_vs_{b}": rate,
                        f"{prefix}win_rate_{a}_vs_{b}_ci_low": low,
                        f"{prefix}win_rate_{a}_vs_{b}_ci_high": high,
                    }
                )
    repeated = [s.prompt for s in results[method]["samples"]]
    by_kind = win_rate_by_kind(repeated, results[method]["gold"], results["sft"]["gold"], judge)
    metrics.update({f"win_rate_{method}_vs_sft_{kind}": rate for kind, rate in by_kind.items() if not math.isnan(rate)})
    for name, r in results.items():
        metrics.update(
            {
                f"{name}_rm_mean": r["rm_mean"],
                f"{name}_eos_rate": r["eos_rate"],
                f"{name}_response_tokens": r["response_tokens"],
            }
        )
        if judged:
            metrics[f"{name}_gold_mean"] = r["gold_mean"]
    reused_source = {}
    for name, (model, instruct, folder) in models.items():
        reused_source[name] = []
        for kind, rate in source_prompt_pass_rates(
            model, tokenizer, instruct, cfg, judge, folder, reused_source[name]
        ).items():
            metrics[f"{name}_source_pass_{kind}"] = rate
    metrics[f"{method}_kl_to_sft"] = sequence_kl(policy, sft, tokenizer, results[method]["samples"])
    trained = StepResult.load(inputs[policy_key])
    metrics[f"{method}_train_seconds"] = trained.metrics["train_seconds"]
    metrics["samples"] = len(results[method]["samples"])
    metrics["gold_judged_samples"] = results[method]["gold_judged"]
    if metrics["gold_judged_samples"] < metrics["samples"]:
        logger.warning(
            "%s: the judge (%s) judged %d of %d samples; the others get RM scores only (judged win rates and means leave them out%s)",
            step,
            cfg.judge,
            metrics["gold_judged_samples"],
            metrics["samples"],
            "" if judged else "; with none judged, the RM's preference is the headline",
        )
    history = trained.records.get(f"{method}_history.json")
    wins = [f"win_rate_{method}_vs_sft", f"win_rate_{method}_vs_sft_ci_low", f"win_rate_{method}_vs_sft_ci_high"]
    headline = [
        *(wins if judged else []),
        *(f"rm_{w}" for w in wins),
        *(["win_rate_sft_vs_base", "base_gold_mean"] if judged and "base" in models else []),
        *(["sft_gold_mean", f"{method}_gold_mean"] if judged else []),
        "sft_rm_mean",
        f"{method}_rm_mean",
        f"{method}_kl_to_sft",
        f"{method}_eos_rate",
        f"{method}_response_tokens",
        f"{method}_train_seconds",
        *(k for m in ("sft", method) for k in metrics if k.startswith(f"{m}_source_pass_")),
    ]
    return StepResult(
        step,
        metrics,
        headline,
        inputs=inputs,
        tags={
            "labels.eval_prompts.sha256": labels.sha256,
            "judge": cfg.judge if judged else f"{cfg.judge} (judged none)",
            # what this evaluation did not generate: samples of the same model, prompts and settings made earlier
            "samples_reused": ", ".join(reused) or "none",
            "source_prompt_samples_reused": ", ".join(n for n, r in reused_source.items() if r) or "none",
        },
        texts={"side_by_side.md": side_by_side(results, prompts, judge)},
        figures={"rm_vs_gold.png": reward_hacking_figure(history, method.upper())} if history else {},
        records={
            "metrics.json": metrics,
            "samples.json": {n: [s.__dict__ for s in r["samples"]] for n, r in results.items()},
        },
    )


@step
def policy_evaluation(inputs: dict[str, str], cfg: EvalConfig) -> StepResult:
    return evaluate_against_sft("policy_evaluation", "ppo", inputs, cfg)


@step
def dpo_evaluation(inputs: dict[str, str], cfg: EvalConfig) -> StepResult:
    return evaluate_against_sft("dpo_evaluation", "dpo", inputs, cfg)


@step
def grpo_evaluation(inputs: dict[str, str], cfg: EvalConfig) -> StepResult:
    return evaluate_against_sft("grpo_evaluation", "grpo", inputs, cfg)


@step
def rloo_evaluation(inputs: dict[str, str], cfg: EvalConfig) -> StepResult:
    return evaluate_against_sft("rloo_evaluation", "rloo", inputs, cfg)


METHOD_COLUMNS = [  # (column, metric key with {m} for the method, format)
    ("win rate vs SFT [95% CI]", None, None),
    ("gold mean", "{m}_gold_mean", ".3f"),
    ("RM mean", "{m}_rm_mean", ".3f"),
    ("KL to SFT", "{m}_kl_to_sft", ".2f"),
    ("response tokens", "{m}_response_tokens", ".1f"),
    ("EOS rate", "{m}_eos_rate", ".2f"),
    ("train s", "{m}_train_seconds", ".0f"),
]


def method_table(evaluations: dict[str, dict], reference: str) -> tuple[str, list[dict]]:
    """Every policy vs SFT in one Markdown table (and its rows), from each method's evaluation metrics and registration
    tags. The SFT row's figures are those of the evaluation named `reference`, and the row says so. A win rate is the
    judge's (gold) where the evaluation has one, else the reward model's preference, marked "(RM)"."""
    header = ["method", *(c for c, _, _ in METHOD_COLUMNS), "registry version", "made champion"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows = []

    def cell(metrics: dict, key: str, fmt: str) -> str:
        return format(metrics[key], fmt) if key in metrics else "-"

    sft = evaluations[reference]["metrics"]
    lines.append(
        f"| SFT (reference, figures of {reference}'s evaluation) | 0.5 | {cell(sft, 'sft_gold_mean', '.3f')} | {sft['sft_rm_mean']:.3f} | 0 | "
        f"{sft['sft_response_tokens']:.1f} | {sft['sft_eos_rate']:.2f} | - | - | - |"
    )
    for method, evaluation in evaluations.items():
        m, tags = evaluation["metrics"], evaluation["tags"]
        basis = "gold" if f"win_rate_{method}_vs_sft" in m else "rm"
        prefix = "" if basis == "gold" else "rm_"
        row = {
            "method": method,
            "basis": basis,
            "win_rate_vs_sft": m[f"{prefix}win_rate_{method}_vs_sft"],
            "ci_low": m[f"{prefix}win_rate_{method}_vs_sft_ci_low"],
            "ci_high": m[f"{prefix}win_rate_{method}_vs_sft_ci_high"],
            **{
                key.format(m=method).removeprefix(f"{method}_"): m[key.format(m=method)]
                for _, key, _ in METHOD_COLUMNS[1:]
                if key.format(m=method) in m
            },
            "registered_version": tags.get("registry.version", "-"),
            "champion": tags.get("registry.champion", "-"),
            "why": tags.get("registry.why", ""),
        }
        rows.append(row)
        cells = [
            method.upper(),
            f"{row['win_rate_vs_sft']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]{' (RM)' if basis == 'rm' else ''}",
            *(cell(m, key.format(m=method), fmt) for _, key, fmt in METHOD_COLUMNS[1:]),
            row["registered_version"],
            row["champion"],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    why = [f"- {r['method'].upper()}: {r['why']}" for r in rows if r["why"]]
    return "\n".join(lines + ([""] + why if why else [])), rows


@step
def method_comparison(inputs: dict[str, str], cfg: StepConfig) -> StepResult:
    """One table of every method's evaluation. Every evaluation must have judged its policy against the same SFT model."""
    from .. import graph

    methods = graph.evaluations()
    evaluations, sft_models = {}, {}
    for method, asset in methods.items():
        saved = StepResult.load(inputs[asset])
        evaluations[method] = {"metrics": saved.metrics, "tags": saved.tags}
        sft_models[asset] = str(Path(saved.inputs["sft_model"]).resolve())
    if len(set(sft_models.values())) > 1:
        raise ValueError(
            "method_comparison: the evaluations judged against different SFT models ("
            + ", ".join(f"{a}: {p}" for a, p in sft_models.items())
            + "); re-materialize the stale ones"
        )
    table, rows = method_table(evaluations, reference="ppo")
    metrics = {f"{r['method']}_{k}": v for r in rows for k, v in r.items() if isinstance(v, float)}
    headline = [f"{m}_win_rate_vs_sft" for m in methods] + [f"{m}_{k}" for m in methods for k in ("ci_low", "ci_high")]
    return StepResult(
        "method_comparison",
        metrics,
        headline,
        inputs=inputs,
        tags={"sft_model": next(iter(sft_models.values()))},
        texts={"method_table.md": table},
        records={"method_table.json": rows},
    )
