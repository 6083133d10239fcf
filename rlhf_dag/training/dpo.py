"""DPO: the policy learns from the comparisons directly, with no reward model and no sampling (Rafailov et al. 2023).

TRL's DPOTrainer on the same (prompt, chosen, rejected) pairs the reward model
learns from. The policy and its frozen reference both start from the SFT model's
directory (TRL builds the reference from the policy's path); `beta` sets how
closely the implicit KL constraint holds the policy to that reference.
"""

from __future__ import annotations

import logging
import tempfile
import time

import pandas as pd
from datasets import Dataset

from ..config import DPOConfig as DPOStepConfig
from ..data.chat import format_prompt
from .monitor import monitored
from .overlong import count_overlong, fit_responses
from .result import ModelCard, StepResult, step
from .trainer_args import trainer_kwargs

logger = logging.getLogger(__name__)


def preference_dataset(frame: pd.DataFrame, tokenizer) -> Dataset:
    """TRL's standard preference format, the prompt in our chat format (TRL appends EOS to both responses)."""
    return Dataset.from_dict(
        {
            "prompt": [format_prompt(p, tokenizer) for p in frame["prompt"]],
            "chosen": list(frame["chosen"]),
            "rejected": list(frame["rejected"]),
        }
    )


def train_dpo(sft_path: str, tokenizer, train: pd.DataFrame, validation: pd.DataFrame, cfg: DPOStepConfig):
    """(policy, metrics): the SFT model optimized with DPO on `train`, its reward accuracy measured on `validation`."""
    from trl import DPOConfig, DPOTrainer

    start = time.perf_counter()
    overlong = count_overlong(
        tokenizer, pd.concat([train, validation]), ("chosen", "rejected"), cfg.max_length, cfg.overlong, "dpo_policy"
    )
    if overlong:
        train = fit_responses(tokenizer, train, ("chosen", "rejected"), cfg.max_length)
    dataset = preference_dataset(train, tokenizer)
    with tempfile.TemporaryDirectory() as out:
        args = DPOConfig(
            **trainer_kwargs(
                out,
                cfg.epochs,
                cfg.batch_size,
                cfg.learning_rate,
                cfg.seed,
                len(dataset),
                evaluations=5 if len(validation) else 0,
            ),
            beta=cfg.beta,
            max_length=cfg.max_length,
        )
        trainer = monitored(
            DPOTrainer(
                model=sft_path,
                args=args,
                train_dataset=dataset,
                eval_dataset=preference_dataset(validation, tokenizer) if len(validation) else None,
                processing_class=tokenizer,
            ),
            "dpo_policy",
        )
        result = trainer.train()
        final = trainer.evaluate() if len(validation) else {}
    logger.info(
        "DPO: held-out implicit-reward accuracy %.3f, margin %.3f",
        final.get("eval_rewards/accuracies", float("nan")),
        final.get("eval_rewards/margins", float("nan")),
    )
    metrics = {
        "training_loss": result.training_loss,
        "validation_reward_accuracy": final.get("eval_rewards/accuracies", float("nan")),
        "validation_reward_margin": final.get("eval_rewards/margins", float("nan")),
        "train_pairs": len(dataset),
        "overlong_records": overlong,
        "train_runtime": result.metrics["train_runtime"],
        "train_seconds": time.perf_counter() - start,
    }
    return trainer.model, metrics


@step
def dpo_policy(inputs: dict[str, str], cfg: DPOStepConfig) -> StepResult:
    from transformers import AutoTokenizer

    from ..data.datasets import splits
    from .evaluate import policy_checks, source_prompt_texts
    from .models import load_causal_lm

    train, validation = splits(inputs["comparison_dataset"])
    tokenizer = AutoTokenizer.from_pretrained(inputs["sft_model"])
    policy, metrics = train_dpo(inputs["sft_model"], tokenizer, train, validation, cfg)
    reference, _ = load_causal_lm(inputs["sft_model"])
    # DPO never samples while training: its gates' KL and EOS rate come from samples of held-out comparison prompts
    metrics |= policy_checks(policy, reference, tokenizer, list(dict.fromkeys(validation["prompt"])), cfg, cfg.seed)
    return StepResult(
        "dpo_policy",
        metrics,
        [
            "validation_reward_accuracy",
            "validation_reward_margin",
            "final_kl",
            "final_eos_rate",
            "training_loss",
            "train_seconds",
        ],
        inputs=inputs,
        model=policy,
        tokenizer=tokenizer,
        card=ModelCard(
            "rlhf-dag DPO policy",
            "The SFT model optimized with DPO (TRL DPOTrainer) directly on the comparisons: no reward model, no sampling.",
        ),
        texts=source_prompt_texts(policy, tokenizer, True, cfg, cfg.seed, "answer (DPO policy)"),
    )
