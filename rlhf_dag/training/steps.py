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
from ..config import CorpusConfig, DatasetConfig, EvalConfig, PPOConfig, PretrainConfig, RewardConfig, SampleSettings, SFTConfig, resolve
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


def _dataset(step: str, kind: str, inputs: dict[str, str], cfg: DatasetConfig) -> StepResult:
    labels = load_labels(inputs[kind], kind)
    frame = build_dataset(labels, cfg.validation_fraction, cfg.split_salt)
    n_val = int((frame["split"] == "validation").sum())
    metrics = {"train_records": len(frame) - n_val, "validation_records": n_val, "duplicates_dropped": labels.duplicates_dropped}
    logger.info("%s: %d valid records, sha256 %s", labels.path, len(labels.records), labels.sha256[:12])
    return StepResult(step, metrics, list(metrics), inputs=inputs, tags={"labels.sha256": labels.sha256}, main_file=f"{step}.parquet",
                      frames={f"{step}.parquet": frame}, texts={"preview.md": frame.head(5).to_markdown(index=False)})


@step
def sft_dataset(inputs: dict[str, str], cfg: DatasetConfig) -> StepResult:
    return _dataset("sft_dataset", "demonstrations", inputs, cfg)


@step
def comparison_dataset(inputs: dict[str, str], cfg: DatasetConfig) -> StepResult:
    return _dataset("comparison_dataset", "comparisons", inputs, cfg)


@step
def sft_model(inputs: dict[str, str], cfg: SFTConfig) -> StepResult:
    from .evaluate import mean_gold
    from .generate import sample
    from .models import load_causal_lm
    from .resume import checkpointing
    from .sft import supervised_finetune

    train, validation = splits(inputs["sft_dataset"])
    base, tokenizer = load_causal_lm(inputs["base_model"])
    with checkpointing("sft_model", inputs, cfg) as checkpoints:
        result = supervised_finetune(base, tokenizer, train, validation, cfg, checkpoints)
    # Gold-judged samples on held-out demonstration prompts: base asked raw, SFT in chat format.
    prompts = list(validation["prompt"][: cfg.gold_sample_prompts])
    base_samples = sample(base, tokenizer, prompts, [raw_prompt(p) for p in prompts], cfg.sample_max_new_tokens, cfg.sample_temperature, seed=cfg.seed)
    sft_samples = sample(result.model, tokenizer, prompts, [format_prompt(p) for p in prompts], cfg.sample_max_new_tokens, cfg.sample_temperature, seed=cfg.seed)
    metrics = {**result.metrics, "base_gold_mean": mean_gold(base_samples), "gold_mean": mean_gold(sft_samples)}
    return StepResult(
        "sft_model", metrics, ["validation_loss", "base_validation_loss", "gold_mean", "base_gold_mean", "training_loss", "overlong_records"],
        inputs=inputs, model=result.model, tokenizer=tokenizer,
        card=ModelCard("rlhf-dag SFT model", "The base model fine-tuned on <prompt, ideal response> demonstrations: it answers instead of continuing."),
        texts={"source_prompt_samples.md": _source_prompt_table(result.model, tokenizer, True, cfg, cfg.seed, "answer (SFT model)")},
    )


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
        "reward_model", result.metrics, ["validation_accuracy", "validation_margin", "initial_validation_accuracy", "training_loss", "overlong_records"],
        inputs=inputs, model=result.model, tokenizer=tokenizer, texts={"validation_pairs.md": _pair_table(result.model, tokenizer, validation.head(16))},
        card=ModelCard("rlhf-dag reward model", "Scores a <prompt, response> pair (AutoModelForSequenceClassification, one label). Read the score at the EOS that closes `apply_chat_template([user, assistant])`."),
    )


@step
def ppo_policy(inputs: dict[str, str], cfg: PPOConfig) -> StepResult:
    from .evaluate import mean_gold
    from .generate import Sample
    from .models import load_causal_lm, load_reward_model
    from .ppo import ppo_train
    from .resume import checkpointing

    labels = load_labels(inputs["prompts"], "prompts")
    prompts = [r["prompt"] for r in labels.records]
    policy, tokenizer = load_causal_lm(inputs["sft_model"])
    reference, _ = load_causal_lm(inputs["sft_model"])
    scorer, _ = load_reward_model(inputs["reward_model"])
    critic, _ = load_reward_model(inputs["reward_model"])  # [PPO-11] the value model starts as the reward model

    def gold_monitor(batch_prompts, responses, ended):
        return mean_gold([Sample(p, r, e, 0) for p, r, e in zip(batch_prompts, responses, ended)])

    with checkpointing("ppo_policy", inputs, cfg) as checkpoints:
        result = ppo_train(policy, reference, scorer, critic, tokenizer, prompts, cfg, monitor=gold_monitor, checkpoints=checkpoints)
    curves = {f"ppo/{k}": [(row["iteration"], row[k]) for row in result.history] for k in result.history[0] if k != "iteration"}
    return StepResult(
        "ppo_policy", {**result.metrics, "prompts": len(prompts)}, ["initial_rm_score", "final_rm_score", "final_kl", "final_eos_rate", "train_seconds"],
        inputs=inputs, tags={"labels.prompts.sha256": labels.sha256}, model=result.policy, tokenizer=tokenizer,
        card=ModelCard("rlhf-dag PPO policy", "The SFT model optimized with PPO to maximize the reward model's score minus a KL penalty to the SFT model. The critic is kept in value_model/."),
        submodels={"value_model": result.value_model}, records={"ppo_history.json": result.history}, curves=curves,
        texts={"source_prompt_samples.md": _source_prompt_table(result.policy, tokenizer, True, cfg, cfg.seed, "answer (PPO policy)")},
    )


@step
def policy_evaluation(inputs: dict[str, str], cfg: EvalConfig) -> StepResult:
    from .evaluate import evaluate_policies, reward_hacking_figure, sequence_kl, side_by_side, source_prompt_pass_rates, win_rate
    from .models import load_causal_lm, load_reward_model

    labels = load_labels(inputs["eval_prompts"], "eval_prompts")  # a bad line fails first, naming its file and line
    prompts = [r["prompt"] for r in labels.records]
    trained_against = read_inputs(inputs["ppo_policy"]).get("reward_model")
    if trained_against is not None and Path(trained_against).resolve() != Path(inputs["reward_model"]).resolve():
        raise ValueError(
            f"policy_evaluation: ppo_policy ({inputs['ppo_policy']}) was trained against the reward model {trained_against}, "
            f"but the reward_model input is {inputs['reward_model']}; re-materialize ppo_policy so both use the same reward model"
        )
    base, tokenizer = load_causal_lm(inputs["base_model"])
    sft, _ = load_causal_lm(inputs["sft_model"])
    ppo, _ = load_causal_lm(inputs["ppo_policy"])
    scorer, _ = load_reward_model(inputs["reward_model"])
    results = evaluate_policies({"base": (base, False), "sft": (sft, True), "ppo": (ppo, True)}, tokenizer, scorer, prompts, cfg)
    metrics = {}
    for a, b in (("ppo", "sft"), ("sft", "base"), ("ppo", "base")):
        rate, low, high = win_rate(results[a]["gold"], results[b]["gold"])
        metrics.update({f"win_rate_{a}_vs_{b}": rate, f"win_rate_{a}_vs_{b}_ci_low": low, f"win_rate_{a}_vs_{b}_ci_high": high})
    for name, r in results.items():
        metrics.update({f"{name}_gold_mean": r["gold_mean"], f"{name}_rm_mean": r["rm_mean"], f"{name}_eos_rate": r["eos_rate"], f"{name}_response_tokens": r["response_tokens"]})
    for name, (model, instruct) in {"base": (base, False), "sft": (sft, True), "ppo": (ppo, True)}.items():
        for kind, rate in source_prompt_pass_rates(model, tokenizer, instruct, cfg).items():
            metrics[f"{name}_source_pass_{kind}"] = rate
    metrics["ppo_kl_to_sft"] = sequence_kl(ppo, sft, tokenizer, results["ppo"]["samples"])
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
}


# What each step reads: upstream assets, and labeled files by name (`<labels dir>/<name>.jsonl`).
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
