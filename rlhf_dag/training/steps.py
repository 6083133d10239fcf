"""One function per RLHF step: upstream paths + config in, a `StepResult` out. No Dagster, no MLflow calls.

Every asset of the graph is one of these functions; `pipeline/publish.py` runs
it inside the asset's MLflow run and saves its result atomically, `bench/` calls
the same functions directly, and a launcher runs one in a child process from a
spec file:

    python -m rlhf_dag.training.steps --spec spec.json

with `spec.json` = `{"step": "sft_model", "inputs": {"base_model": "<dir>", "sft_dataset": "<file>"},
"config": {...fields of the step's config class...}, "output": "<folder to create>"}`.
Inputs are exactly the step's edges in the graph (model folders, Parquet files,
labeled files); a step reads nothing else.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import sys
from pathlib import Path

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pandas is imported where it is used: `rlhf-dag status` never needs it
    import pandas as pd

from ..artifacts import atomic_dir
from ..config import (CorpusConfig, DatasetConfig, DPOConfig, EvalConfig, GRPOConfig, LabelingConfig, OnlineConfig, PPOConfig, PretrainConfig, RewardConfig,
                      RLOOConfig, SampleSettings, SFTConfig, StepConfig, resolve)
from ..data.corpus import load_corpus
from ..data.datasets import assign_splits, build_dataset, splits
from ..data.domain import SOURCE_PROMPTS
from ..data.labels import load_labels
from .chat import format_prompt, raw_prompt
from .result import ModelCard, StepResult, read_inputs

logger = logging.getLogger(__name__)


def step(function):
    """A step function: before it runs, datasets' and transformers' progress bars and load reports are turned off
    (the steps log their own progress: TrainingMonitor, PPO's iteration lines); RLHF_DAG_VERBOSE=1 keeps them.
    Done at the first call, not at import, so that `rlhf-dag status` never imports transformers."""

    @functools.wraps(function)
    def run(inputs: dict[str, str], cfg):
        if not os.environ.get("RLHF_DAG_VERBOSE"):
            import datasets
            import transformers

            datasets.disable_progress_bars()
            transformers.utils.logging.disable_progress_bar()
            transformers.utils.logging.set_verbosity_error()
        return function(inputs, cfg)

    return run


def _source_prompt_table(model, tokenizer, instruct: bool, cfg: SampleSettings, seed: int, title: str) -> str:
    """The model's answer to each of the source's four prompts, with gold scores, as a Markdown table."""
    from .evaluate import samples_markdown
    from .generate import sample

    texts = [format_prompt(p) if instruct else raw_prompt(p) for p in SOURCE_PROMPTS]
    samples = sample(model, tokenizer, list(SOURCE_PROMPTS), texts, cfg.sample_max_new_tokens, cfg.sample_temperature, seed=seed)
    return samples_markdown(samples, title)


@step
def pretraining_corpus(inputs: dict[str, str], cfg: CorpusConfig) -> StepResult:
    documents = load_corpus(cfg.source, cfg.n_documents, cfg.seed)
    import pandas as pd

    frame = pd.DataFrame({"text": documents, "split": assign_splits(documents, cfg.validation_fraction, "pretraining_corpus")})
    held_out = int((frame["split"] == "validation").sum())
    metrics = {"documents": len(documents), "held_out_documents": held_out, "characters": sum(map(len, documents))}
    preview = "\n\n---\n\n".join(documents[:5])
    return StepResult("pretraining_corpus", metrics, ["documents", "held_out_documents"], main_file="corpus.parquet",
                      frames={"corpus.parquet": frame}, texts={"preview.md": f"```\n{preview}\n```"})


@step
def base_model(inputs: dict[str, str], cfg: PretrainConfig) -> StepResult:
    from .pretrain import load_pretrained, pretrain
    from .resume import checkpointing

    if cfg.pretrained:
        model, tokenizer = load_pretrained(cfg.pretrained)
        metrics = {"parameters": model.num_parameters()}
    else:
        import pandas as pd

        corpus = pd.read_parquet(inputs["pretraining_corpus"])
        train = list(corpus.loc[corpus["split"] == "train", "text"])
        held_out = list(corpus.loc[corpus["split"] == "validation", "text"])
        with checkpointing("base_model", inputs, cfg) as checkpoints:
            result = pretrain(train, held_out, cfg, checkpoints)
        model, tokenizer, metrics = result.model, result.tokenizer, result.metrics
    table = _source_prompt_table(model, tokenizer, False, cfg, cfg.seed, "continuation (base model, raw prompt)")
    return StepResult(
        "base_model", metrics, ["initial_loss", "final_loss", "parameters", "tokens_per_second"],
        inputs=inputs, tags={"pretrained": cfg.pretrained or "trained from scratch"}, model=model, tokenizer=tokenizer,
        card=ModelCard("rlhf-dag base model", "A causal LM that only continues text: asked a question, it continues the page (a list, a dialogue)."),
        texts={"source_prompt_samples.md": table},
    )


def _dataset(step: str, labels, inputs: dict[str, str], cfg: DatasetConfig) -> StepResult:
    frame = build_dataset(labels, cfg.validation_fraction, cfg.split_salt)
    n_val = int((frame["split"] == "validation").sum())
    metrics = {"train_records": len(frame) - n_val, "validation_records": n_val, "duplicates_dropped": labels.duplicates_dropped}
    logger.info("%s: %d valid records, sha256 %s", labels.path, len(labels.records), labels.sha256[:12])
    return StepResult(step, metrics, list(metrics), inputs=inputs, tags={"labels.sha256": labels.sha256}, main_file=f"{step}.parquet",
                      frames={f"{step}.parquet": frame}, texts={"preview.md": frame.head(5).to_markdown(index=False)})


@step
def sft_dataset(inputs: dict[str, str], cfg: DatasetConfig) -> StepResult:
    return _dataset("sft_dataset", load_labels(inputs["demonstrations"], "demonstrations"), inputs, cfg)


@step
def comparison_dataset(inputs: dict[str, str], cfg: DatasetConfig) -> StepResult:
    """Validated pairs with a fixed split; where people ranked (data/feedback.py), their agreement with each other and
    with the gold labeler, per batch and per labeler, and the labelers far below the others."""
    from ..data.feedback import agreement
    from ..data.gold import gold_score

    labels = load_labels(inputs["comparisons"], "comparisons")
    result = _dataset("comparison_dataset", labels, inputs, cfg)
    human = [r for r in labels.records if r.get("labeler")]
    if human:
        figures = agreement(human, lambda prompt, response: (g := gold_score(prompt, response)) and g.score)
        result.metrics.update({"human_pairs": len(human), "human_rankings": len({r["ranking"] for r in human}), **figures["metrics"]})
        result.headline += [k for k in ("human_pairs", "human_rankings", "agreement_inter_labeler", "agreement_gold") if k in result.metrics]
        result.tags["flagged_labelers"] = ", ".join(figures["flagged"]) or "none"
        result.texts["agreement.md"] = figures["table"]
        if figures["flagged"]:
            logger.warning("comparison_dataset: labeler(s) far below the others' agreement: %s (agreement.md)", ", ".join(figures["flagged"]))
    return result


@step
def sft_model(inputs: dict[str, str], cfg: SFTConfig) -> StepResult:
    from .evaluate import mean_gold
    from .generate import sample
    from .models import load_causal_lm
    from .resume import checkpointing
    from .sft import supervised_finetune

    train, validation = splits(inputs["sft_dataset"])
    base, tokenizer = load_causal_lm(inputs["base_model"])
    # Gold-judged samples on held-out demonstration prompts: base asked raw (before LoRA adapts `base` in place), SFT in chat format.
    prompts = list(validation["prompt"][: cfg.gold_sample_prompts])
    base_samples = sample(base, tokenizer, prompts, [raw_prompt(p) for p in prompts], cfg.sample_max_new_tokens, cfg.sample_temperature, seed=cfg.seed)
    with checkpointing("sft_model", inputs, cfg) as checkpoints:
        result = supervised_finetune(base, tokenizer, train, validation, cfg, checkpoints)
    sft_samples = sample(result.model, tokenizer, prompts, [format_prompt(p) for p in prompts], cfg.sample_max_new_tokens, cfg.sample_temperature, seed=cfg.seed)
    metrics = {**result.metrics, "base_gold_mean": mean_gold(base_samples), "gold_mean": mean_gold(sft_samples)}
    return StepResult(
        "sft_model", metrics, ["validation_loss", "base_validation_loss", "gold_mean", "base_gold_mean", "training_loss", "overlong_records", "trainable_parameters"],
        inputs=inputs, tags=_fine_tune_tag(cfg), model=result.model, tokenizer=tokenizer,
        card=ModelCard("rlhf-dag SFT model", "The base model fine-tuned on <prompt, ideal response> demonstrations: it answers instead of continuing."),
        texts={"source_prompt_samples.md": _source_prompt_table(result.model, tokenizer, True, cfg, cfg.seed, "answer (SFT model)")},
    )


def _fine_tune_tag(cfg: SFTConfig | RewardConfig | PPOConfig) -> dict[str, str]:
    """How the step trained: 'full', or the LoRA settings (the model dir then also holds adapter/)."""
    return {"fine_tune": "full" if cfg.lora is None else f"lora r={cfg.lora.r} alpha={cfg.lora.alpha:g} target_modules={','.join(cfg.lora.target_modules)}"}


def _pair_table(model, tokenizer, pairs: pd.DataFrame) -> str:
    """Held-out pairs with the reward model's score of each side: what a reviewer reads before trusting its accuracy."""
    from .evaluate import markdown_cell as cell
    from .reward import score_texts

    chosen = score_texts(model, tokenizer, list(pairs["prompt"]), list(pairs["chosen"]))
    rejected = score_texts(model, tokenizer, list(pairs["prompt"]), list(pairs["rejected"]))

    rows = ["| prompt | chosen | score | rejected | score | right? |", "|---|---|---|---|---|---|"]
    rows += [f"| {cell(p)} | {cell(c)} | {sc:.2f} | {cell(r)} | {sr:.2f} | {'yes' if sc > sr else 'no'} |"
             for p, c, r, sc, sr in zip(pairs["prompt"], pairs["chosen"], pairs["rejected"], chosen, rejected)]
    return "\n".join(rows)


@step
def reward_model(inputs: dict[str, str], cfg: RewardConfig) -> StepResult:
    from transformers import AutoTokenizer

    from .resume import checkpointing
    from .reward import train_reward_model

    train, validation = splits(inputs["comparison_dataset"])
    if validation.empty:
        raise ValueError(f"comparison_dataset has no validation pairs ({inputs['comparison_dataset']}); raise validation_fraction")
    tokenizer = AutoTokenizer.from_pretrained(inputs["sft_model"])
    with checkpointing("reward_model", inputs, cfg) as checkpoints:
        result = train_reward_model(inputs["sft_model"], tokenizer, train, validation, cfg, checkpoints)
    return StepResult(
        "reward_model", result.metrics, ["validation_accuracy", "validation_margin", "initial_validation_accuracy", "training_loss", "overlong_records",
                         "trainable_parameters"],
        inputs=inputs, tags=_fine_tune_tag(cfg), model=result.model, tokenizer=tokenizer, texts={"validation_pairs.md": _pair_table(result.model, tokenizer, validation.head(16))},
        card=ModelCard("rlhf-dag reward model", "Scores a <prompt, response> pair (AutoModelForSequenceClassification, one label). Read the score at the EOS that closes `apply_chat_template([user, assistant])`."),
    )


def gold_monitor(batch_prompts: list[str], responses: list[str], ended: list[bool]) -> float:
    """The gold labeler's mean over a training batch: it only observes (NaN on prompts it cannot judge)."""
    from .evaluate import mean_gold
    from .generate import Sample

    return mean_gold([Sample(p, r, e, 0) for p, r, e in zip(batch_prompts, responses, ended)])


@step
def ppo_policy(inputs: dict[str, str], cfg: PPOConfig) -> StepResult:
    from .lora import adapt
    from .models import load_causal_lm, load_reward_model
    from .ppo import ppo_train
    from .resume import checkpointing

    labels = load_labels(inputs["prompts"], "prompts")
    prompts = [r["prompt"] for r in labels.records]
    policy, tokenizer = load_causal_lm(inputs["sft_model"])
    if cfg.lora:  # [PPO-14] the reference is the policy with its adapter disabled: one frozen copy of the SFT weights
        policy, reference = adapt(policy, cfg.lora), None
    else:
        reference, _ = load_causal_lm(inputs["sft_model"])
    scorer, _ = load_reward_model(inputs["reward_model"])
    critic, _ = load_reward_model(inputs["reward_model"])  # [PPO-11] the value model starts as the reward model
    with checkpointing("ppo_policy", inputs, cfg) as checkpoints:
        result = ppo_train(policy, reference, scorer, critic, tokenizer, prompts, cfg, monitor=gold_monitor, checkpoints=checkpoints)
    curves = {f"ppo/{k}": [(row["iteration"], row[k]) for row in result.history] for k in result.history[0] if k != "iteration"}
    return StepResult(
        "ppo_policy", {**result.metrics, "prompts": len(prompts)},
        ["initial_rm_score", "final_rm_score", "final_kl", "final_eos_rate", "train_seconds", "trainable_parameters"],
        inputs=inputs, tags={"labels.prompts.sha256": labels.sha256, **_fine_tune_tag(cfg)}, model=result.policy, tokenizer=tokenizer,
        card=ModelCard("rlhf-dag PPO policy", "The SFT model optimized with PPO to maximize the reward model's score minus a KL penalty to the SFT model. The critic is kept in value_model/."),
        submodels={"value_model": result.value_model}, records={"ppo_history.json": result.history}, curves=curves,
        texts={"source_prompt_samples.md": _source_prompt_table(result.policy, tokenizer, True, cfg, cfg.seed, "answer (PPO policy)")},
    )


def _require_same_reward_model(step: str, policy: str, inputs: dict[str, str]) -> None:
    """An evaluation scores a policy with the reward model it was trained against, or refuses."""
    trained_against = read_inputs(inputs[policy]).get("reward_model")
    if trained_against is not None and Path(trained_against).resolve() != Path(inputs["reward_model"]).resolve():
        raise ValueError(
            f"{step}: {policy} ({inputs[policy]}) was trained against the reward model {trained_against}, "
            f"but the reward_model input is {inputs['reward_model']}; re-materialize {policy} so both use the same reward model"
        )


@step
def policy_evaluation(inputs: dict[str, str], cfg: EvalConfig) -> StepResult:
    from .evaluate import evaluate_policies, reward_hacking_figure, sequence_kl, side_by_side, source_prompt_pass_rates, win_rate, win_rate_by_kind
    from .models import load_causal_lm, load_reward_model

    labels = load_labels(inputs["eval_prompts"], "eval_prompts")  # a bad line fails first, naming its file and line
    prompts = [r["prompt"] for r in labels.records]
    _require_same_reward_model("policy_evaluation", "ppo_policy", inputs)
    base, tokenizer = load_causal_lm(inputs["base_model"])
    sft, _ = load_causal_lm(inputs["sft_model"])
    ppo, _ = load_causal_lm(inputs["ppo_policy"])
    scorer, _ = load_reward_model(inputs["reward_model"])
    results = evaluate_policies({"base": (base, False), "sft": (sft, True), "ppo": (ppo, True)}, tokenizer, scorer, prompts, cfg)
    metrics = {}
    for a, b in (("ppo", "sft"), ("sft", "base"), ("ppo", "base")):
        rate, low, high = win_rate(results[a]["gold"], results[b]["gold"])
        metrics.update({f"win_rate_{a}_vs_{b}": rate, f"win_rate_{a}_vs_{b}_ci_low": low, f"win_rate_{a}_vs_{b}_ci_high": high})
    repeated = [s.prompt for s in results["ppo"]["samples"]]
    metrics.update({f"win_rate_ppo_vs_sft_{kind}": rate for kind, rate in win_rate_by_kind(repeated, results["ppo"]["gold"], results["sft"]["gold"]).items()})
    for name, r in results.items():
        metrics.update({f"{name}_gold_mean": r["gold_mean"], f"{name}_rm_mean": r["rm_mean"], f"{name}_eos_rate": r["eos_rate"], f"{name}_response_tokens": r["response_tokens"]})
    for name, (model, instruct) in {"base": (base, False), "sft": (sft, True), "ppo": (ppo, True)}.items():
        for kind, rate in source_prompt_pass_rates(model, tokenizer, instruct, cfg).items():
            metrics[f"{name}_source_pass_{kind}"] = rate
    metrics["ppo_kl_to_sft"] = sequence_kl(ppo, sft, tokenizer, results["ppo"]["samples"])
    metrics["ppo_train_seconds"] = StepResult.load(inputs["ppo_policy"]).metrics["train_seconds"]
    metrics["samples"] = len(results["ppo"]["samples"])
    metrics["gold_judged_samples"] = results["ppo"]["gold_judged"]
    if metrics["gold_judged_samples"] < metrics["samples"]:
        logger.warning(
            "policy_evaluation: the gold labeler judged %d of %d samples; eval prompts outside the built-in task family "
            "get RM scores only (win rates and gold means leave them out)", metrics["gold_judged_samples"], metrics["samples"],
        )
    history = StepResult.load(inputs["ppo_policy"]).records["ppo_history.json"]
    headline = ["win_rate_ppo_vs_sft", "win_rate_ppo_vs_sft_ci_low", "win_rate_ppo_vs_sft_ci_high", "win_rate_sft_vs_base", "base_gold_mean", "sft_gold_mean",
                "ppo_gold_mean", "sft_rm_mean", "ppo_rm_mean", "ppo_kl_to_sft", "ppo_eos_rate", "ppo_response_tokens",
                *(f"{m}_source_pass_{k}" for m in ("sft", "ppo") for k in ("story", "email", "math", "code"))]
    return StepResult(
        "policy_evaluation", metrics, headline, inputs=inputs, tags={"labels.eval_prompts.sha256": labels.sha256},
        texts={"side_by_side.md": side_by_side(results, prompts)}, figures={"rm_vs_gold.png": reward_hacking_figure(history)},
        records={"metrics.json": metrics, "samples.json": {n: [s.__dict__ for s in r["samples"]] for n, r in results.items()}},
    )


@step
def dpo_policy(inputs: dict[str, str], cfg: DPOConfig) -> StepResult:
    from transformers import AutoTokenizer

    from .dpo import train_dpo
    from .evaluate import policy_checks
    from .models import load_causal_lm

    train, validation = splits(inputs["comparison_dataset"])
    tokenizer = AutoTokenizer.from_pretrained(inputs["sft_model"])
    policy, metrics = train_dpo(inputs["sft_model"], tokenizer, train, validation, cfg)
    reference, _ = load_causal_lm(inputs["sft_model"])
    # DPO never samples while training: its gates' KL and EOS rate come from samples of held-out comparison prompts
    metrics |= policy_checks(policy, reference, tokenizer, list(dict.fromkeys(validation["prompt"])), cfg, cfg.seed)
    return StepResult(
        "dpo_policy", metrics, ["validation_reward_accuracy", "validation_reward_margin", "final_kl", "final_eos_rate", "training_loss", "train_seconds"],
        inputs=inputs, model=policy, tokenizer=tokenizer,
        card=ModelCard("rlhf-dag DPO policy", "The SFT model optimized with DPO (TRL DPOTrainer) directly on the comparisons: no reward model, no sampling."),
        texts={"source_prompt_samples.md": _source_prompt_table(policy, tokenizer, True, cfg, cfg.seed, "answer (DPO policy)")},
    )


def _online_policy(method: str, inputs: dict[str, str], cfg: OnlineConfig) -> StepResult:
    from transformers import AutoTokenizer

    from .evaluate import policy_checks
    from .models import load_causal_lm, load_reward_model
    from .online import RewardModelReward, train_online

    labels = load_labels(inputs["prompts"], "prompts")
    prompts = [r["prompt"] for r in labels.records]
    tokenizer = AutoTokenizer.from_pretrained(inputs["sft_model"])
    scorer, _ = load_reward_model(inputs["reward_model"])
    reward = RewardModelReward(scorer, tokenizer, cfg.missing_eos_penalty, monitor=gold_monitor)
    policy, metrics = train_online(method, inputs["sft_model"], tokenizer, reward, prompts, cfg)
    reference, _ = load_causal_lm(inputs["sft_model"])
    metrics |= policy_checks(policy, reference, tokenizer, prompts, cfg, cfg.seed, scorer) | {"prompts": len(prompts)}
    name = method.upper()
    return StepResult(
        f"{method}_policy", metrics, ["initial_rm_score", "final_rm_score", "final_kl", "final_eos_rate", "train_seconds"],
        inputs=inputs, tags={"labels.prompts.sha256": labels.sha256}, model=policy, tokenizer=tokenizer,
        card=ModelCard(f"rlhf-dag {name} policy", f"The SFT model optimized with {name} (TRL {name}Trainer) against the reward model, KL-penalized to the SFT model."),
        records={f"{method}_history.json": reward.history},
        curves={f"{method}/{k}": [(row["iteration"], row[k]) for row in reward.history] for k in reward.history[0] if k != "iteration"},
        texts={"source_prompt_samples.md": _source_prompt_table(policy, tokenizer, True, cfg, cfg.seed, f"answer ({name} policy)")},
    )


@step
def grpo_policy(inputs: dict[str, str], cfg: GRPOConfig) -> StepResult:
    return _online_policy("grpo", inputs, cfg)


@step
def rloo_policy(inputs: dict[str, str], cfg: RLOOConfig) -> StepResult:
    return _online_policy("rloo", inputs, cfg)


def _method_evaluation(method: str, inputs: dict[str, str], cfg: EvalConfig) -> StepResult:
    """One policy vs the SFT model on the held-out prompts, in the figures `policy_evaluation` reports for PPO."""
    from .evaluate import evaluate_policies, reward_hacking_figure, sequence_kl, source_prompt_pass_rates, win_rate
    from .models import load_causal_lm, load_reward_model

    labels = load_labels(inputs["eval_prompts"], "eval_prompts")
    prompts = [r["prompt"] for r in labels.records]
    policy_key = f"{method}_policy"
    _require_same_reward_model(f"{method}_evaluation", policy_key, inputs)
    sft, tokenizer = load_causal_lm(inputs["sft_model"])
    policy, _ = load_causal_lm(inputs[policy_key])
    scorer, _ = load_reward_model(inputs["reward_model"])
    results = evaluate_policies({"sft": (sft, True), method: (policy, True)}, tokenizer, scorer, prompts, cfg)
    rate, low, high = win_rate(results[method]["gold"], results["sft"]["gold"])
    metrics = {f"win_rate_{method}_vs_sft": rate, f"win_rate_{method}_vs_sft_ci_low": low, f"win_rate_{method}_vs_sft_ci_high": high}
    for name, r in results.items():
        metrics.update({f"{name}_gold_mean": r["gold_mean"], f"{name}_rm_mean": r["rm_mean"], f"{name}_eos_rate": r["eos_rate"], f"{name}_response_tokens": r["response_tokens"]})
    metrics[f"{method}_kl_to_sft"] = sequence_kl(policy, sft, tokenizer, results[method]["samples"])
    trained = StepResult.load(inputs[policy_key])
    metrics[f"{method}_train_seconds"] = trained.metrics["train_seconds"]
    metrics.update({f"{method}_source_pass_{k}": v for k, v in source_prompt_pass_rates(policy, tokenizer, True, cfg).items()})
    metrics["samples"], metrics["gold_judged_samples"] = len(results[method]["samples"]), results[method]["gold_judged"]
    history = trained.records.get(f"{method}_history.json")
    headline = [f"win_rate_{method}_vs_sft", f"win_rate_{method}_vs_sft_ci_low", f"win_rate_{method}_vs_sft_ci_high", "sft_gold_mean", f"{method}_gold_mean",
                "sft_rm_mean", f"{method}_rm_mean", f"{method}_kl_to_sft", f"{method}_eos_rate", f"{method}_response_tokens", f"{method}_train_seconds"]
    return StepResult(
        f"{method}_evaluation", metrics, headline, inputs=inputs, tags={"labels.eval_prompts.sha256": labels.sha256},
        figures={"rm_vs_gold.png": reward_hacking_figure(history, method.upper())} if history else {},
        records={"metrics.json": metrics, "samples.json": {n: [s.__dict__ for s in r["samples"]] for n, r in results.items()}},
    )


@step
def dpo_evaluation(inputs: dict[str, str], cfg: EvalConfig) -> StepResult:
    return _method_evaluation("dpo", inputs, cfg)


@step
def grpo_evaluation(inputs: dict[str, str], cfg: EvalConfig) -> StepResult:
    return _method_evaluation("grpo", inputs, cfg)


@step
def rloo_evaluation(inputs: dict[str, str], cfg: EvalConfig) -> StepResult:
    return _method_evaluation("rloo", inputs, cfg)


# The policies beside SFT, and the evaluation that judges each (PPO's also judges the base model).
METHODS = {"ppo": "policy_evaluation", "dpo": "dpo_evaluation", "grpo": "grpo_evaluation", "rloo": "rloo_evaluation"}
METHOD_COLUMNS = [  # (column, metric key with {m} for the method, format)
    ("gold win rate vs SFT [95% CI]", None, None),
    ("gold mean", "{m}_gold_mean", ".3f"),
    ("RM mean", "{m}_rm_mean", ".3f"),
    ("KL to SFT", "{m}_kl_to_sft", ".2f"),
    ("response tokens", "{m}_response_tokens", ".1f"),
    ("EOS rate", "{m}_eos_rate", ".2f"),
    ("train s", "{m}_train_seconds", ".0f"),
]


def method_table(evaluations: dict[str, dict]) -> tuple[str, list[dict]]:
    """Every policy vs SFT in one Markdown table (and its rows), from each method's evaluation metrics and registration tags."""
    header = ["method", *(c for c, _, _ in METHOD_COLUMNS), "registry version", "made champion"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows = []
    sft = next(iter(evaluations.values()))["metrics"]
    lines.append(f"| SFT (reference) | 0.5 | {sft['sft_gold_mean']:.3f} | {sft['sft_rm_mean']:.3f} | 0 | {sft['sft_response_tokens']:.1f} | {sft['sft_eos_rate']:.2f} | - | - | - |")
    for method, evaluation in evaluations.items():
        m, tags = evaluation["metrics"], evaluation["tags"]
        row = {"method": method, "win_rate_vs_sft": m[f"win_rate_{method}_vs_sft"], "ci_low": m[f"win_rate_{method}_vs_sft_ci_low"],
               "ci_high": m[f"win_rate_{method}_vs_sft_ci_high"], **{key.format(m=method).removeprefix(f"{method}_"): m[key.format(m=method)] for _, key, _ in METHOD_COLUMNS[1:]},
               "registered_version": tags.get("registry.version", "-"), "champion": tags.get("registry.champion", "-"), "why": tags.get("registry.why", "")}
        rows.append(row)
        cells = [method.upper(), f"{row['win_rate_vs_sft']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]",
                 *(format(m[key.format(m=method)], fmt) for _, key, fmt in METHOD_COLUMNS[1:]), row["registered_version"], row["champion"]]
        lines.append("| " + " | ".join(cells) + " |")
    why = [f"- {r['method'].upper()}: {r['why']}" for r in rows if r["why"]]
    return "\n".join(lines + ([""] + why if why else [])), rows


@step
def method_comparison(inputs: dict[str, str], cfg: StepConfig) -> StepResult:
    evaluations = {}
    for method, asset in METHODS.items():
        saved = StepResult.load(inputs[asset])
        evaluations[method] = {"metrics": saved.metrics, "tags": saved.tags}
    table, rows = method_table(evaluations)
    metrics = {f"{r['method']}_{k}": v for r in rows for k, v in r.items() if isinstance(v, float)}
    headline = [f"{m}_win_rate_vs_sft" for m in METHODS] + [f"{m}_{k}" for m in METHODS for k in ("ci_low", "ci_high")]
    return StepResult("method_comparison", metrics, headline, inputs=inputs, texts={"method_table.md": table}, records={"method_table.json": rows})


@step
def labeling_candidates(inputs: dict[str, str], cfg: LabelingConfig) -> StepResult:
    """K responses per prompt from the configured policy, for one labeling batch (`inputs["batch"]`, the partition)."""
    import hashlib

    from ..data.feedback import batch_prompts
    from .generate import sample
    from .models import load_causal_lm

    if cfg.policy not in ("sft_model", "ppo_policy"):
        raise ValueError(f"labeling_candidates: policy must be 'sft_model' or 'ppo_policy', got {cfg.policy!r}")
    if cfg.responses_per_prompt < 2:
        raise ValueError(f"labeling_candidates: responses_per_prompt must be at least 2 to rank, got {cfg.responses_per_prompt}")
    batch = inputs["batch"]
    prompts = batch_prompts(load_labels(inputs["prompts"], "prompts").records, batch, cfg.prompts_per_batch)
    model, tokenizer = load_causal_lm(inputs[cfg.policy])
    repeated = [r for r in prompts for _ in range(cfg.responses_per_prompt)]
    seed = cfg.seed + int(hashlib.sha256(batch.encode()).hexdigest()[:8], 16)
    samples = sample(model, tokenizer, [r["prompt"] for r in repeated], [format_prompt(r["prompt"]) for r in repeated], cfg.max_new_tokens, cfg.temperature, seed=seed)
    candidates, duplicates, left_out = [], 0, 0
    for n, record in enumerate(prompts):
        drawn = [s.response.strip() for s in samples[n * cfg.responses_per_prompt : (n + 1) * cfg.responses_per_prompt]]
        responses = list(dict.fromkeys(r for r in drawn if r))
        duplicates += sum(1 for r in drawn if r) - len(responses)
        if len(responses) < 2:  # nothing to rank
            left_out += 1
            continue
        candidates.append({"prompt_id": record["id"], "prompt": record["prompt"], "responses": responses})
    if not candidates:
        raise ValueError(f"labeling_candidates: every prompt of batch {batch!r} got fewer than two different responses from {cfg.policy}; raise temperature")
    responses = sum(len(c["responses"]) for c in candidates)
    metrics = {"prompts": len(candidates), "responses": responses, "duplicates_dropped": duplicates, "prompts_left_out": left_out,
               "comparisons_if_ranked": sum(len(c["responses"]) * (len(c["responses"]) - 1) // 2 for c in candidates)}
    preview = "\n\n".join(f"**{c['prompt']}**\n" + "\n".join(f"- {r}" for r in c["responses"]) for c in candidates[:3])
    return StepResult("labeling_candidates", metrics, list(metrics), inputs=inputs, tags={"policy": cfg.policy, "batch": batch},
                      main_file="candidates.json", records={"candidates.json": candidates}, texts={"preview.md": preview})


# The graph's steps in dependency order; each asset's inputs are the keys its function reads.
STEPS = {
    "pretraining_corpus": pretraining_corpus,
    "base_model": base_model,
    "sft_dataset": sft_dataset,
    "sft_model": sft_model,
    "comparison_dataset": comparison_dataset,
    "reward_model": reward_model,
    "ppo_policy": ppo_policy,
    "policy_evaluation": policy_evaluation,
    "dpo_policy": dpo_policy,
    "grpo_policy": grpo_policy,
    "rloo_policy": rloo_policy,
    "dpo_evaluation": dpo_evaluation,
    "grpo_evaluation": grpo_evaluation,
    "rloo_evaluation": rloo_evaluation,
    "method_comparison": method_comparison,
    "labeling_candidates": labeling_candidates,
}


# What each step reads: upstream assets, and labeled files by name (`<labels dir>/<name>.jsonl` or `.parquet`).
# These are the graph's edges; tests/test_definitions.py checks them against the assets.
STEP_INPUTS = {
    "pretraining_corpus": (),
    "base_model": ("pretraining_corpus",),
    "sft_dataset": ("demonstrations",),
    "sft_model": ("base_model", "sft_dataset"),
    "comparison_dataset": ("comparisons",),
    "reward_model": ("sft_model", "comparison_dataset"),
    "ppo_policy": ("sft_model", "reward_model", "prompts"),
    "policy_evaluation": ("base_model", "sft_model", "reward_model", "ppo_policy", "eval_prompts"),
    "dpo_policy": ("sft_model", "comparison_dataset"),
    "grpo_policy": ("sft_model", "reward_model", "prompts"),
    "rloo_policy": ("sft_model", "reward_model", "prompts"),
    "dpo_evaluation": ("sft_model", "reward_model", "dpo_policy", "eval_prompts"),
    "grpo_evaluation": ("sft_model", "reward_model", "grpo_policy", "eval_prompts"),
    "rloo_evaluation": ("sft_model", "reward_model", "rloo_policy", "eval_prompts"),
    "method_comparison": ("policy_evaluation", "dpo_evaluation", "grpo_evaluation", "rloo_evaluation"),
    # both policies are inputs; its config says which one writes the responses. `batch` is the partition key.
    "labeling_candidates": ("sft_model", "ppo_policy", "prompts"),
}


def run_step(step: str, inputs: dict[str, str], config: dict) -> StepResult:
    """Run a step with `config` over the active profile (RLHF_DAG_PROFILE), as an asset resolves its run config."""
    if step not in STEPS:
        raise ValueError(f"unknown step {step!r}; the steps are {', '.join(STEPS)}")
    return STEPS[step](inputs, resolve(step, config))


def run_spec(spec_path: str | Path) -> tuple[Path, StepResult]:
    """Run the step a spec file describes and save its result to the spec's output folder (atomically).

    Started as one rank of a multi-process job (torchrun, accelerate launch), every rank trains its
    replica; rank 0 alone saves, after checking that all ranks ended with the same weights. An optional
    `lineage` field of the spec (the MLflow run) goes into the model card.
    """
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    missing = {"step", "inputs", "config", "output"} - set(spec)
    if missing:
        raise ValueError(f"{spec_path}: missing field(s) {', '.join(sorted(missing))}")
    from . import distributed

    distributed.init()
    result = run_step(spec["step"], spec["inputs"], spec["config"])
    if result.model is not None:
        _record_replicas(result)
    output = Path(spec["output"])
    if distributed.rank() == 0:
        with atomic_dir(output) as tmp:
            result.save(tmp, lineage=spec.get("lineage"))
    distributed.barrier()
    return output, result


def _record_replicas(result: StepResult) -> None:
    """World size, the distributed type accelerate set up for the trainers, and each rank's weight checksum;
    ranks that ended with different weights trained apart (e.g. each alone on all the data) and fail the step."""
    import torch
    from accelerate import PartialState

    from . import distributed

    checksums = distributed.all_gather(distributed.checksum(result))
    result.metrics["world_size"] = distributed.world_size()
    result.tags["distributed_type"] = str(PartialState(cpu=not torch.cuda.is_available()).distributed_type).rsplit(".", 1)[-1]
    result.tags["rank_checksums"] = ",".join(checksums)
    if len(set(checksums)) > 1:
        raise RuntimeError(f"{result.step}: the ranks ended with different weights (checksums {checksums}); their gradients were not all-reduced")


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.errors import record

    # a failing rank writes its traceback where torchrun (and the launcher that started it) finds it
    return record(_run_from_command_line)(argv)


def _run_from_command_line(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlhf_dag.training.steps", description="Run one RLHF step from a spec file, without Dagster.")
    parser.add_argument("--spec", required=True, help="JSON file: step, inputs, config, output (optional: lineage)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    output, _ = run_spec(args.spec)
    print(output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
