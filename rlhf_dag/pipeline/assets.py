"""The RLHF steps as software-defined assets. Each body is thin: resolve config,
call one training function, log to MLflow, save atomically, return a handle."""

import json
from pathlib import Path

import dagster as dg
import pandas as pd
from transformers import AutoTokenizer

from ..artifacts import ArtifactHandle, run_dir
from ..config import artifacts_dir
from ..data.corpus import load_corpus
from ..data.datasets import build_dataset, splits, write_parquet
from ..data.domain import SOURCE_PROMPTS
from ..training.chat import format_prompt, raw_prompt
from ..training.evaluate import evaluate_policies, mean_gold, reward_hacking_figure, sequence_kl, win_rate
from ..training.generate import Sample, sample
from ..training.models import load_causal_lm, load_reward_model
from ..training.ppo import ppo_train
from ..training.reward import train_reward_model
from ..training.pretrain import load_pretrained, pretrain
from ..training.sft import supervised_finetune
from .automation import dataset_automation, model_automation
from .labels import read_labels
from .resources import MlflowTracking
from .step import asset_config_class, profile_version, headline_metadata, lineage_tags, resolve_config, samples_markdown, save_model, training_logs

SAMPLE_TEMPERATURE = 0.7

PretrainingCorpusConfig = asset_config_class("pretraining_corpus")
BaseModelConfig = asset_config_class("base_model")
SftDatasetConfig = asset_config_class("sft_dataset")
SftModelConfig = asset_config_class("sft_model")
ComparisonDatasetConfig = asset_config_class("comparison_dataset")
RewardModelConfig = asset_config_class("reward_model")
PpoPolicyConfig = asset_config_class("ppo_policy")
PolicyEvaluationConfig = asset_config_class("policy_evaluation")


def _source_prompt_samples(model, tokenizer, instruct: bool, seed: int):
    texts = [format_prompt(p) if instruct else raw_prompt(p) for p in SOURCE_PROMPTS]
    return sample(model, tokenizer, list(SOURCE_PROMPTS), texts, max_new_tokens=48, temperature=SAMPLE_TEMPERATURE, seed=seed)


@dg.asset(code_version=profile_version("pretraining_corpus"), automation_condition=dataset_automation, group_name="rlhf", kinds={"parquet"}, description="Internet-like documents the base model is pretrained on.")
def pretraining_corpus(context: dg.AssetExecutionContext, config: PretrainingCorpusConfig, mlflow: MlflowTracking) -> dg.Output[ArtifactHandle]:
    cfg = resolve_config(context, config)
    documents = load_corpus(cfg.source, cfg.n_documents, cfg.seed)
    path = run_dir(artifacts_dir(), "pretraining_corpus", context.run_id) / "corpus.parquet"
    write_parquet(pd.DataFrame({"text": documents}), path)
    preview = "\n\n---\n\n".join(documents[:5])
    with mlflow.start_run(context, cfg.model_dump(), {}) as run:
        mlflow.log_metrics({"documents": len(documents), "characters": sum(map(len, documents))})
        mlflow.log_text(preview, "corpus_preview.txt")
    handle = ArtifactHandle("pretraining_corpus", str(path), cfg.config_hash(), run.info.run_id, {"documents": len(documents)})
    return dg.Output(
        handle,
        metadata={**headline_metadata(handle, mlflow.run_url(run), ["documents"]), "preview": dg.MetadataValue.md(f"```\n{preview}\n```")},
    )


@dg.asset(code_version=profile_version("base_model"), automation_condition=model_automation, group_name="rlhf", kinds={"pytorch"}, description="Tokenizer + causal LM that only continues text (RLHF step 1).")
def base_model(context: dg.AssetExecutionContext, config: BaseModelConfig, mlflow: MlflowTracking, pretraining_corpus: ArtifactHandle) -> dg.Output[ArtifactHandle]:
    cfg = resolve_config(context, config)
    with mlflow.start_run(context, cfg.model_dump(), lineage_tags(pretraining_corpus=pretraining_corpus)) as run, training_logs(context):
        if cfg.pretrained:
            model, tokenizer = load_pretrained(cfg.pretrained)
            metrics, curves = {"parameters": model.num_parameters()}, {}
        else:
            texts = list(pd.read_parquet(pretraining_corpus.path)["text"])
            result = pretrain(texts, cfg)
            model, tokenizer, metrics, curves = result.model, result.tokenizer, result.metrics, result.curves
        samples = _source_prompt_samples(model, tokenizer, instruct=False, seed=cfg.seed)
        table = samples_markdown(samples, "continuation (base model, raw prompt)")
        mlflow.log_metrics(metrics)
        mlflow.log_curves(curves)
        mlflow.log_text(table, "source_prompt_samples.md")
        path = save_model(
            context, model, tokenizer,
            title="rlhf-dag base model",
            description="A causal LM that only continues text: asked a question, it continues the page (a list, a dialogue).",
            lineage={"pretraining_corpus": pretraining_corpus.path, "pretrained": cfg.pretrained or "trained from scratch", "mlflow_run_id": run.info.run_id},
            metrics=metrics,
        )
    handle = ArtifactHandle("base_model", path, cfg.config_hash(), run.info.run_id, metrics)
    return dg.Output(
        handle,
        metadata={
            **headline_metadata(handle, mlflow.run_url(run), ["initial_loss", "final_loss", "parameters", "tokens_per_second"]),
            "source_prompt_samples": dg.MetadataValue.md(table),
        },
    )


def _dataset_asset(context, config, mlflow: MlflowTracking, labels_name: str, asset: str) -> dg.Output[ArtifactHandle]:
    cfg = resolve_config(context, config)
    labels, sha = read_labels(context, labels_name)
    frame = build_dataset(labels, cfg.validation_fraction, cfg.split_salt)
    path = run_dir(artifacts_dir(), asset, context.run_id) / f"{asset}.parquet"
    write_parquet(frame, path)
    n_val = int((frame["split"] == "validation").sum())
    metrics = {"train_records": len(frame) - n_val, "validation_records": n_val, "duplicates_dropped": labels.duplicates_dropped}
    with mlflow.start_run(context, cfg.model_dump(), {"labels.file": str(labels.path), "labels.sha256": sha}) as run:
        mlflow.log_metrics(metrics)
    handle = ArtifactHandle(asset, str(path), cfg.config_hash(), run.info.run_id, {**metrics, "labels_sha256": sha})
    return dg.Output(
        handle,
        metadata={
            **headline_metadata(handle, mlflow.run_url(run), list(metrics)),
            "labels_sha256": sha,
            "preview": dg.MetadataValue.md(frame.head(5).to_markdown(index=False)),
        },
    )


@dg.asset(code_version=profile_version("sft_dataset"), automation_condition=dataset_automation, group_name="rlhf", kinds={"parquet"}, deps=[dg.AssetKey(["labels", "demonstrations"])], description="Validated, de-duplicated demonstrations with a fixed train/validation split.")
def sft_dataset(context: dg.AssetExecutionContext, config: SftDatasetConfig, mlflow: MlflowTracking) -> dg.Output[ArtifactHandle]:
    return _dataset_asset(context, config, mlflow, "demonstrations", "sft_dataset")


@dg.asset(code_version=profile_version("sft_model"), automation_condition=model_automation, group_name="rlhf", kinds={"pytorch"}, description="The base model fine-tuned on demonstrations with TRL SFTTrainer (RLHF step 2).")
def sft_model(context: dg.AssetExecutionContext, config: SftModelConfig, mlflow: MlflowTracking, base_model: ArtifactHandle, sft_dataset: ArtifactHandle) -> dg.Output[ArtifactHandle]:
    cfg = resolve_config(context, config)
    train, validation = splits(sft_dataset.path)
    base, tokenizer = load_causal_lm(base_model.path)
    with mlflow.start_run(context, cfg.model_dump(), lineage_tags(base_model=base_model, sft_dataset=sft_dataset)) as run, training_logs(context):
        result = supervised_finetune(base, tokenizer, train, validation, cfg)
        # Gold-judged samples on held-out demonstration prompts: base asked raw, SFT in chat format.
        prompts = list(validation["prompt"][:64])
        base_samples = sample(base, tokenizer, prompts, [raw_prompt(p) for p in prompts], 48, SAMPLE_TEMPERATURE, seed=cfg.seed)
        sft_samples = sample(result.model, tokenizer, prompts, [format_prompt(p) for p in prompts], 48, SAMPLE_TEMPERATURE, seed=cfg.seed)
        metrics = {**result.metrics, "base_gold_mean": mean_gold(base_samples), "gold_mean": mean_gold(sft_samples)}
        source_samples = _source_prompt_samples(result.model, tokenizer, instruct=True, seed=cfg.seed)
        table = samples_markdown(source_samples, "answer (SFT model)")
        mlflow.log_metrics(metrics)
        mlflow.log_curves(result.curves)
        mlflow.log_text(table, "source_prompt_samples.md")
        path = save_model(
            context, result.model, tokenizer,
            title="rlhf-dag SFT model",
            description="The base model fine-tuned on <prompt, ideal response> demonstrations: it answers instead of continuing.",
            lineage={"base_model": base_model.path, "sft_dataset": sft_dataset.path, "demonstrations_sha256": sft_dataset.metrics.get("labels_sha256", ""), "mlflow_run_id": run.info.run_id},
            metrics=metrics,
        )
    handle = ArtifactHandle("sft_model", path, cfg.config_hash(), run.info.run_id, metrics)
    return dg.Output(
        handle,
        metadata={
            **headline_metadata(handle, mlflow.run_url(run), ["validation_loss", "base_validation_loss", "gold_mean", "base_gold_mean", "training_loss", "overlong_records"]),
            "source_prompt_samples": dg.MetadataValue.md(table),
        },
    )


@dg.asset(code_version=profile_version("comparison_dataset"), automation_condition=dataset_automation, group_name="rlhf", kinds={"parquet"}, deps=[dg.AssetKey(["labels", "comparisons"])], description="Validated (prompt, chosen, rejected) comparisons with a fixed held-out split.")
def comparison_dataset(context: dg.AssetExecutionContext, config: ComparisonDatasetConfig, mlflow: MlflowTracking) -> dg.Output[ArtifactHandle]:
    return _dataset_asset(context, config, mlflow, "comparisons", "comparison_dataset")


@dg.asset(code_version=profile_version("reward_model"), automation_condition=model_automation, group_name="rlhf", kinds={"pytorch"}, description="Scores <prompt, response>; trained with TRL RewardTrainer from the SFT model (RLHF step 3).")
def reward_model(context: dg.AssetExecutionContext, config: RewardModelConfig, mlflow: MlflowTracking, sft_model: ArtifactHandle, comparison_dataset: ArtifactHandle) -> dg.Output[ArtifactHandle]:
    cfg = resolve_config(context, config)
    train, validation = splits(comparison_dataset.path)
    if validation.empty:
        raise ValueError(f"comparison_dataset has no validation pairs ({comparison_dataset.path}); raise validation_fraction")
    tokenizer = AutoTokenizer.from_pretrained(sft_model.path)
    with mlflow.start_run(context, cfg.model_dump(), lineage_tags(sft_model=sft_model, comparison_dataset=comparison_dataset)) as run, training_logs(context):
        result = train_reward_model(sft_model.path, tokenizer, train, validation, cfg)
        metrics = {**result.metrics, "accuracy_floor": cfg.accuracy_floor}
        mlflow.log_metrics(metrics)
        mlflow.log_curves(result.curves)
        path = save_model(
            context, result.model, tokenizer,
            title="rlhf-dag reward model",
            description="Scores a <prompt, response> pair (AutoModelForSequenceClassification, one label). Read the score at the EOS that closes `apply_chat_template([user, assistant])`.",
            lineage={"sft_model (init)": sft_model.path, "comparison_dataset": comparison_dataset.path, "comparisons_sha256": comparison_dataset.metrics.get("labels_sha256", ""), "mlflow_run_id": run.info.run_id},
            metrics=metrics,
        )
    handle = ArtifactHandle("reward_model", path, cfg.config_hash(), run.info.run_id, metrics, {"sft_model": sft_model.path})
    return dg.Output(handle, metadata=headline_metadata(handle, mlflow.run_url(run), ["validation_accuracy", "validation_margin", "initial_validation_accuracy", "training_loss", "overlong_records"]))


@dg.asset(code_version=profile_version("ppo_policy"), automation_condition=model_automation, group_name="rlhf", kinds={"pytorch"}, deps=[dg.AssetKey(["labels", "prompts"])], description="The SFT model optimized with PPO against the reward model, KL-penalized to the SFT model (RLHF step 4).")
def ppo_policy(context: dg.AssetExecutionContext, config: PpoPolicyConfig, mlflow: MlflowTracking, sft_model: ArtifactHandle, reward_model: ArtifactHandle) -> dg.Output[ArtifactHandle]:
    cfg = resolve_config(context, config)
    labels, sha = read_labels(context, "prompts")
    prompts = [r["prompt"] for r in labels.records]
    policy, tokenizer = load_causal_lm(sft_model.path)
    reference, _ = load_causal_lm(sft_model.path)
    scorer, _ = load_reward_model(reward_model.path)
    critic, _ = load_reward_model(reward_model.path)  # [PPO-11] the value model starts as the reward model

    def gold_monitor(batch_prompts, responses, ended):
        return mean_gold([Sample(p, r, e, 0) for p, r, e in zip(batch_prompts, responses, ended)])

    tags = {**lineage_tags(sft_model=sft_model, reward_model=reward_model), "labels.prompts.sha256": sha}
    with mlflow.start_run(context, cfg.model_dump(), tags) as run, training_logs(context):
        result = ppo_train(policy, reference, scorer, critic, tokenizer, prompts, cfg, monitor=gold_monitor)
        for row in result.history:
            mlflow.log_metrics({f"ppo/{k}": v for k, v in row.items() if k != "iteration"}, step=row["iteration"])
        metrics = {**result.metrics, "kl_budget": cfg.kl_budget, "eos_rate_floor": cfg.eos_rate_floor, "prompts": len(prompts)}
        mlflow.log_metrics(metrics)
        samples = _source_prompt_samples(result.policy, tokenizer, instruct=True, seed=cfg.seed)
        table = samples_markdown(samples, "answer (PPO policy)")
        mlflow.log_text(table, "source_prompt_samples.md")

        def save_value_model_and_history(tmp):
            result.value_model.save_pretrained(tmp / "value_model", safe_serialization=True)
            (tmp / "ppo_history.json").write_text(json.dumps(result.history, indent=1))

        path = save_model(
            context, result.policy, tokenizer,
            title="rlhf-dag PPO policy",
            description="The SFT model optimized with PPO to maximize the reward model's score minus a KL penalty to the SFT model. The critic is kept in value_model/.",
            lineage={"sft_model (policy init and reference)": sft_model.path, "reward_model": reward_model.path, "prompts_sha256": sha, "mlflow_run_id": run.info.run_id},
            metrics=metrics,
            extra=save_value_model_and_history,
        )
    handle = ArtifactHandle("ppo_policy", path, cfg.config_hash(), run.info.run_id, metrics, {"sft_model": sft_model.path, "reward_model": reward_model.path})
    return dg.Output(
        handle,
        metadata={
            **headline_metadata(handle, mlflow.run_url(run), ["initial_rm_score", "final_rm_score", "final_kl", "final_eos_rate", "train_seconds"]),
            "source_prompt_samples": dg.MetadataValue.md(table),
        },
    )


@dg.asset(code_version=profile_version("policy_evaluation"), automation_condition=model_automation, group_name="rlhf", kinds={"pytorch"}, deps=[dg.AssetKey(["labels", "eval_prompts"])], description="Base vs SFT vs PPO on held-out prompts: gold win rates, RM and gold scores, KL, length, EOS rate.")
def policy_evaluation(context: dg.AssetExecutionContext, config: PolicyEvaluationConfig, mlflow: MlflowTracking, base_model: ArtifactHandle, sft_model: ArtifactHandle, ppo_policy: ArtifactHandle) -> dg.Output[ArtifactHandle]:
    cfg = resolve_config(context, config)
    labels, sha = read_labels(context, "eval_prompts")
    prompts = [r["prompt"] for r in labels.records]
    base, tokenizer = load_causal_lm(base_model.path)
    sft, _ = load_causal_lm(sft_model.path)
    ppo, _ = load_causal_lm(ppo_policy.path)
    scorer, _ = load_reward_model(ppo_policy.lineage["reward_model"])
    tags = {**lineage_tags(base_model=base_model, sft_model=sft_model, ppo_policy=ppo_policy), "labels.eval_prompts.sha256": sha}
    with mlflow.start_run(context, cfg.model_dump(), tags) as run, training_logs(context):
        results = evaluate_policies({"base": (base, False), "sft": (sft, True), "ppo": (ppo, True)}, tokenizer, scorer, prompts, cfg)
        metrics = {}
        for (a, b) in (("ppo", "sft"), ("sft", "base"), ("ppo", "base")):
            rate, low, high = win_rate(results[a]["gold"], results[b]["gold"])
            metrics.update({f"win_rate_{a}_vs_{b}": rate, f"win_rate_{a}_vs_{b}_ci_low": low, f"win_rate_{a}_vs_{b}_ci_high": high})
        for name, r in results.items():
            metrics.update({f"{name}_gold_mean": r["gold_mean"], f"{name}_rm_mean": r["rm_mean"], f"{name}_eos_rate": r["eos_rate"], f"{name}_response_tokens": r["response_tokens"]})
        metrics["ppo_kl_to_sft"] = sequence_kl(ppo, sft, tokenizer, results["ppo"]["samples"])
        metrics["samples"] = len(results["ppo"]["samples"])
        metrics["gold_judged_samples"] = results["ppo"]["gold_judged"]
        if metrics["gold_judged_samples"] < metrics["samples"]:
            context.log.warning(
                f"policy_evaluation: the gold labeler judged {metrics['gold_judged_samples']} of {metrics['samples']} samples; "
                "eval prompts outside the built-in task family get RM scores only (win rates and gold means leave them out)"
            )
        table = side_by_side(results, prompts)
        history = json.loads((Path(ppo_policy.path) / "ppo_history.json").read_text())
        figure = reward_hacking_figure(history)
        out = run_dir(artifacts_dir(), "policy_evaluation", context.run_id)
        out.mkdir(parents=True, exist_ok=True)
        figure.savefig(out / "rm_vs_gold.png", dpi=100)
        (out / "side_by_side.md").write_text(table)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
        mlflow.log_metrics(metrics)
        mlflow.log_figure(figure, "rm_vs_gold.png")
        mlflow.log_text(table, "side_by_side.md")
        mlflow.log_json({n: [s.__dict__ for s in r["samples"]] for n, r in results.items()}, "samples.json")
    handle = ArtifactHandle("policy_evaluation", str(out), cfg.config_hash(), run.info.run_id, metrics)
    keys = ["win_rate_ppo_vs_sft", "win_rate_ppo_vs_sft_ci_low", "win_rate_ppo_vs_sft_ci_high", "win_rate_sft_vs_base", "base_gold_mean", "sft_gold_mean", "ppo_gold_mean", "sft_rm_mean", "ppo_rm_mean", "ppo_kl_to_sft", "ppo_eos_rate", "ppo_response_tokens"]
    return dg.Output(
        handle,
        metadata={
            **headline_metadata(handle, mlflow.run_url(run), keys),
            "side_by_side": dg.MetadataValue.md(table),
            "rm_vs_gold_plot": dg.MetadataValue.path(str(out / "rm_vs_gold.png")),
        },
    )


def side_by_side(results: dict, prompts: list[str]) -> str:
    """The three models' first answer to each of the source's four prompts, with gold scores."""
    rows = ["| prompt | base | SFT | PPO |", "|---|---|---|---|"]
    for prompt in SOURCE_PROMPTS:
        if prompt not in prompts:
            continue
        cells = []
        for name in ("base", "sft", "ppo"):
            i = next(i for i, s in enumerate(results[name]["samples"]) if s.prompt == prompt)
            s = results[name]["samples"][i]
            text = s.response.replace("|", "\\|").replace("\n", "<br>") or "(empty)"
            cells.append(f"{text} <br>*gold {results[name]['gold'][i]:.2f}{'' if s.ended_with_eos else ', no EOS'}*")
        rows.append(f"| {prompt} | " + " | ".join(cells) + " |")
    return "\n".join(rows)
