"""Step 2: supervised fine-tuning on <prompt, ideal response> demonstrations.

TRL's SFTTrainer on a prompt/completion dataset: the prompt is our chat format
(ending with the assistant token), the completion the demonstrator's response;
TRL appends EOS and computes the loss on completion tokens only.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

import pandas as pd
from datasets import Dataset

from ..config import SFTConfig as SFTStepConfig
from ..data.chat import format_prompt
from . import lora
from .generate import response_loss
from .monitor import monitored
from .overlong import count_overlong
from .result import ModelCard, StepResult, TrainResult, step
from .resume import output_dir, resumable_train
from .trainer_args import trained_tokens, trainer_kwargs

logger = logging.getLogger(__name__)


def supervised_finetune(
    base_model,
    tokenizer,
    train: pd.DataFrame,
    validation: pd.DataFrame,
    cfg: SFTStepConfig,
    checkpoints: Path | None = None,
) -> TrainResult:
    """Fine-tune a copy of `base_model`, or with `cfg.lora` adapters on `base_model` itself (peft wraps it in place,
    its weights frozen: no second copy); report validation loss on responses before and after.

    With a `checkpoints` folder (training/resume.py) training saves there and resumes from it."""
    from trl import SFTConfig, SFTTrainer

    start = time.perf_counter()
    overlong = count_overlong(
        tokenizer, pd.concat([train, validation]), ("response",), cfg.max_length, cfg.overlong, "sft_model"
    )
    model = base_model if cfg.lora else copy.deepcopy(base_model)
    val_prompts = [format_prompt(p, tokenizer) for p in validation["prompt"]]
    base_val_loss = response_loss(model, tokenizer, val_prompts, list(validation["response"]))
    dataset = Dataset.from_dict(
        {"prompt": [format_prompt(p, tokenizer) for p in train["prompt"]], "completion": list(train["response"])}
    )
    with output_dir(checkpoints) as out:
        args = SFTConfig(
            **trainer_kwargs(
                out,
                cfg.epochs,
                cfg.batch_size,
                cfg.learning_rate,
                cfg.seed,
                len(dataset),
                cfg.group_by_length,
                evaluations=5 if len(validation) else 0,
                checkpoint_every=cfg.checkpoint_every if checkpoints else 0,
            ),
            max_length=cfg.max_length,
            truncation_mode="keep_start",  # what overlong: truncate documents (training/overlong.py)
            completion_only_loss=True,
            packing=False,
        )
        held_out = Dataset.from_dict(
            {"prompt": val_prompts, "completion": list(validation["response"])}
        )  # the validation curve
        trainer = monitored(
            SFTTrainer(
                model=model,
                args=args,
                train_dataset=dataset,
                eval_dataset=held_out if len(held_out) else None,
                processing_class=tokenizer,
                peft_config=lora.peft_config(cfg.lora, "CAUSAL_LM") if cfg.lora else None,
            ),
            "sft_model",
        )
        model = trainer.model
        result, figures = resumable_train(trainer)
    val_loss = response_loss(model, tokenizer, val_prompts, list(validation["response"]))
    logger.info("SFT validation loss on responses: base %.3f -> sft %.3f", base_val_loss, val_loss)
    metrics = {
        "base_validation_loss": base_val_loss,
        "validation_loss": val_loss,
        **figures,
        "train_examples": len(dataset),
        **lora.parameter_counts(model),
        "overlong_records": overlong,
        "train_tokens": trained_tokens(trainer) * cfg.epochs,
        "train_runtime": result.metrics["train_runtime"],
        "train_seconds": time.perf_counter() - start,
    }
    return TrainResult(model, tokenizer, metrics)


@step
def sft_model(inputs: dict[str, str], cfg: SFTStepConfig) -> StepResult:
    from ..data.chat import base_prompt
    from ..data.datasets import splits
    from .evaluate import mean_judged, source_prompt_texts
    from .generate import sample
    from .judge import load_judge
    from .lora import fine_tune_tag
    from .models import load_causal_lm
    from .resume import checkpointing

    train, validation = splits(inputs["sft_dataset"])
    base, tokenizer = load_causal_lm(inputs["base_model"])
    # Gold-judged samples on held-out demonstration prompts: base asked raw (before LoRA adapts `base` in place), SFT in chat format.
    prompts = list(validation["prompt"][: cfg.gold_sample_prompts])
    base_samples = sample(
        base,
        tokenizer,
        prompts,
        [base_prompt(p, tokenizer) for p in prompts],
        cfg.sample_max_new_tokens,
        cfg.sample_temperature,
        seed=cfg.seed,
    )
    with checkpointing("sft_model", inputs, cfg) as checkpoints:
        result = supervised_finetune(base, tokenizer, train, validation, cfg, checkpoints)
    sft_samples = sample(
        result.model,
        tokenizer,
        prompts,
        [format_prompt(p, tokenizer) for p in prompts],
        cfg.sample_max_new_tokens,
        cfg.sample_temperature,
        seed=cfg.seed,
    )
    judge = load_judge(cfg.judge)
    judged = {"base_gold_mean": mean_judged(base_samples, judge), "gold_mean": mean_judged(sft_samples, judge)}
    metrics = {**result.metrics, **{k: v for k, v in judged.items() if v is not None}}
    return StepResult(
        "sft_model",
        metrics,
        [
            "validation_loss",
            "base_validation_loss",
            "gold_mean",
            "base_gold_mean",
            "training_loss",
            "overlong_records",
            "trainable_parameters",
        ],
        inputs=inputs,
        tags=fine_tune_tag(cfg),
        model=result.model,
        tokenizer=tokenizer,
        card=ModelCard(
            "rlhf-dag SFT model",
            "The base model fine-tuned on <prompt, ideal response> demonstrations: it answers instead of continuing.",
        ),
        texts=source_prompt_texts(result.model, tokenizer, True, cfg, cfg.seed, "answer (SFT model)"),
    )
