"""The RLHF steps as software-defined assets. Each body is thin: resolve config,
call one training function, log to MLflow, save atomically, return a handle."""

import dagster as dg
import pandas as pd

from ..artifacts import ArtifactHandle, run_dir
from ..config import artifacts_dir
from ..data.corpus import load_corpus
from ..data.datasets import build_dataset, splits, write_parquet
from ..data.domain import SOURCE_PROMPTS
from ..training.chat import format_prompt, raw_prompt
from ..training.generate import sample
from ..training.models import load_causal_lm
from ..training.pretrain import load_pretrained, pretrain
from ..training.sft import supervised_finetune
from .labels import read_labels
from .resources import MlflowTracking
from .step import asset_config_class, headline_metadata, lineage_tags, mean_gold, resolve_config, samples_markdown, save_model, training_logs

SAMPLE_TEMPERATURE = 0.7

PretrainingCorpusConfig = asset_config_class("pretraining_corpus")
BaseModelConfig = asset_config_class("base_model")
SftDatasetConfig = asset_config_class("sft_dataset")
SftModelConfig = asset_config_class("sft_model")


def _source_prompt_samples(model, tokenizer, instruct: bool, seed: int):
    texts = [format_prompt(p) if instruct else raw_prompt(p) for p in SOURCE_PROMPTS]
    return sample(model, tokenizer, list(SOURCE_PROMPTS), texts, max_new_tokens=48, temperature=SAMPLE_TEMPERATURE, seed=seed)


@dg.asset(group_name="pretraining", kinds={"parquet"}, description="Internet-like documents the base model is pretrained on.")
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


@dg.asset(group_name="pretraining", kinds={"pytorch"}, description="Tokenizer + causal LM that only continues text (RLHF step 1).")
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


@dg.asset(group_name="sft", kinds={"parquet"}, deps=[dg.AssetKey(["labels", "demonstrations"])], description="Validated, de-duplicated demonstrations with a fixed train/validation split.")
def sft_dataset(context: dg.AssetExecutionContext, config: SftDatasetConfig, mlflow: MlflowTracking) -> dg.Output[ArtifactHandle]:
    return _dataset_asset(context, config, mlflow, "demonstrations", "sft_dataset")


@dg.asset(group_name="sft", kinds={"pytorch"}, description="The base model fine-tuned on demonstrations with TRL SFTTrainer (RLHF step 2).")
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
            **headline_metadata(handle, mlflow.run_url(run), ["validation_loss", "base_validation_loss", "gold_mean", "base_gold_mean", "training_loss"]),
            "source_prompt_samples": dg.MetadataValue.md(table),
        },
    )
