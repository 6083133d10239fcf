"""Step 3: a reward model that scores <prompt, response> so that preferred responses score higher.

TRL's RewardTrainer (pairwise loss `-log sigmoid(r_chosen - r_rejected)`) on a
sequence-classification copy of the SFT model with one new score head. TRL
appends EOS to chosen and rejected; `score_texts` and PPO score exactly that
form, prompt + response + EOS, read at the EOS position.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import AutoModelForSequenceClassification

from ..config import RewardConfig as RewardStepConfig
from .chat import format_prompt
from .models import require_safetensors, set_special_token_ids
from .overlong import count_overlong, fit_responses
from .pretrain import TrainResult
from .trainer_args import device, monitored, output_dir, resumable_train, trainer_kwargs, trained_tokens

logger = logging.getLogger(__name__)


def pairwise_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """The Bradley-Terry loss of InstructGPT's reward model: mean of -log sigmoid(r_chosen - r_rejected)."""
    return -F.logsigmoid(chosen - rejected).mean()


def per_token_scores(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The score head applied at every position [B, T]: the reward at the last token, or a critic's values.

    Positions are counted from each row's first real token, so left-padded
    rollouts are scored as the right-padded training batches were.
    """
    position_ids = (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)
    backbone = getattr(model, model.base_model_prefix)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False).last_hidden_state
    return model.score(hidden).squeeze(-1).float()  # fp32 for GAE and the losses, also under bf16 autocast


@torch.no_grad()
def score_texts(model, tokenizer, prompts: list[str], responses: list[str], batch_size: int = 64) -> list[float]:
    """Reward of each (prompt, response): the score at the EOS closing prompt + response."""
    model.eval()
    scores: list[float] = []
    for start in range(0, len(prompts), batch_size):
        texts = [format_prompt(p) + r + tokenizer.eos_token for p, r in zip(prompts[start : start + batch_size], responses[start : start + batch_size])]
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        all_scores = per_token_scores(model, batch["input_ids"], batch["attention_mask"])
        last = batch["attention_mask"].sum(dim=1) - 1
        scores += all_scores[torch.arange(len(texts)), last].tolist()
    return scores


def pairwise_accuracy(model, tokenizer, frame: pd.DataFrame) -> tuple[float, float, float]:
    """(share of pairs where chosen outscores rejected, mean margin, pairwise loss) on a comparison frame."""
    chosen = torch.tensor(score_texts(model, tokenizer, list(frame["prompt"]), list(frame["chosen"])))
    rejected = torch.tensor(score_texts(model, tokenizer, list(frame["prompt"]), list(frame["rejected"])))
    return float((chosen > rejected).float().mean()), float((chosen - rejected).mean()), float(pairwise_loss(chosen, rejected))


def reward_model_from_sft(sft_path: str, tokenizer):
    """The SFT model's backbone with a fresh scalar head (num_labels=1), as InstructGPT initialises its RM."""
    model = AutoModelForSequenceClassification.from_pretrained(require_safetensors(sft_path), num_labels=1, trust_remote_code=False, use_safetensors=True)
    set_special_token_ids(model, tokenizer)
    return model.to(device())


def train_reward_model(sft_path: str, tokenizer, train: pd.DataFrame, validation: pd.DataFrame, cfg: RewardStepConfig,
                       checkpoints: Path | None = None) -> TrainResult:
    """Train the RM; report held-out pairwise accuracy and margin before and after.

    With a `checkpoints` folder (training/resume.py) training saves there and resumes from it."""
    from trl import RewardConfig, RewardTrainer

    start = time.perf_counter()
    overlong = count_overlong(tokenizer, pd.concat([train, validation]), ("chosen", "rejected"), cfg.max_length, cfg.overlong, "reward_model")
    if overlong:
        train = fit_responses(tokenizer, train, ("chosen", "rejected"), cfg.max_length)
    torch.manual_seed(cfg.seed)
    model = reward_model_from_sft(sft_path, tokenizer)
    initial_accuracy, _, _ = pairwise_accuracy(model, tokenizer, validation)
    dataset = Dataset.from_dict(
        {"prompt": [format_prompt(p) for p in train["prompt"]], "chosen": list(train["chosen"]), "rejected": list(train["rejected"])}
    )
    with output_dir(checkpoints) as out:
        args = RewardConfig(
            **trainer_kwargs(out, cfg.epochs, cfg.batch_size, cfg.learning_rate, cfg.seed, len(dataset), checkpoint_every=cfg.checkpoint_every if checkpoints else 0),
            max_length=cfg.max_length,
            center_rewards_coefficient=0.01,
        )
        held_out = Dataset.from_dict(  # the validation curve
            {"prompt": [format_prompt(p) for p in validation["prompt"]], "chosen": list(validation["chosen"]), "rejected": list(validation["rejected"])}
        )
        trainer = monitored(RewardTrainer(model=model, args=args, train_dataset=dataset, eval_dataset=held_out, processing_class=tokenizer), "reward_model")
        result, figures = resumable_train(trainer)
    accuracy, margin, validation_loss = pairwise_accuracy(model, tokenizer, validation)
    train_accuracy, _, _ = pairwise_accuracy(model, tokenizer, train.head(256))
    logger.info("reward model: held-out pairwise accuracy %.3f (before training %.3f), margin %.3f", accuracy, initial_accuracy, margin)
    metrics = {
        "validation_accuracy": accuracy,
        "validation_margin": margin,
        "validation_loss": validation_loss,
        "initial_validation_accuracy": initial_accuracy,
        "train_accuracy": train_accuracy,
        **figures,
        "train_pairs": len(dataset),
        "overlong_records": overlong,
        "train_tokens": trained_tokens(trainer, ("chosen_ids", "rejected_ids")) * cfg.epochs,
        "train_runtime": result.metrics["train_runtime"],
        "validation_pairs": len(validation),
        "train_seconds": time.perf_counter() - start,
    }
    return TrainResult(model, tokenizer, metrics)
