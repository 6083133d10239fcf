"""Step 3: a reward model that scores <prompt, response> so that preferred responses score higher.

TRL's RewardTrainer (pairwise loss `-log sigmoid(r_chosen - r_rejected)`) on a
sequence-classification copy of the SFT model with one new score head. TRL
appends EOS to chosen and rejected; `score_texts` and PPO score exactly that
form, prompt + response + EOS, read at the EOS position.
"""

from __future__ import annotations

import collections
import logging
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import AutoModelForSequenceClassification

from ..config import RewardConfig as RewardStepConfig
from ..data.chat import format_prompt
from . import lora
from .device import device
from .judge import Judge, load_judge
from .models import NO_HUB_CODE, require_safetensors, set_special_token_ids
from .monitor import monitored
from .overlong import count_overlong, fit_responses
from .result import ModelCard, StepResult, TrainResult, markdown_cell, step
from .resume import output_dir, resumable_train
from .trainer_args import trained_tokens, trainer_kwargs

logger = logging.getLogger(__name__)


def pairwise_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """The Bradley-Terry loss of InstructGPT's reward model: mean of -log sigmoid(r_chosen - r_rejected)."""
    return -F.logsigmoid(chosen - rejected).mean()


def ranking_loss(chosen: torch.Tensor, rejected: torch.Tensor, pair_weight: torch.Tensor) -> torch.Tensor:
    """InstructGPT's loss (section 3.5, eq. 1) with one ranking as one batch element: each of a ranking's C(K, 2)
    pairs weighs 1 / C(K, 2) (`pair_weight`), and the batch's loss is the mean over its rankings. A lone pair weighs 1,
    so a batch of lone pairs gives `pairwise_loss`. Treating each pair as its own element instead makes every
    response appear in K - 1 elements of an epoch, and the RM overfits after one epoch (InstructGPT, section 3.5)."""
    return -(F.logsigmoid(chosen - rejected) * pair_weight).sum() / pair_weight.sum()


def pair_weights(rankings: list[str]) -> list[float]:
    """1 / (pairs of its ranking) for each pair: the weight that makes one ranking one batch element."""
    sizes = collections.Counter(rankings)
    return [1.0 / sizes[key] for key in rankings]


class RankingBatches(torch.utils.data.Sampler):
    """Batches of whole rankings: a ranking's pairs are never split between batches, and a batch holds rankings up to
    `batch_size` pairs (a larger ranking is a batch of its own). Reshuffled each epoch from `seed`."""

    def __init__(self, rankings: list[str], batch_size: int, seed: int):
        groups: dict[str, list[int]] = {}
        for index, key in enumerate(rankings):
            groups.setdefault(key, []).append(index)
        self.groups, self.batch_size, self.seed, self.epoch = list(groups.values()), batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self, order: list[int]) -> list[list[int]]:
        batches, current = [], []
        for g in order:
            if current and len(current) + len(self.groups[g]) > self.batch_size:
                batches.append(current)
                current = []
            current = current + self.groups[g]
        return batches + ([current] if current else [])

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        yield from self._batches(torch.randperm(len(self.groups), generator=generator).tolist())

    def __len__(self) -> int:
        return len(self._batches(list(range(len(self.groups)))))


def backbone_and_head(model):
    """(transformer, score head) of a sequence-classification model: the backbone's last hidden states, through the
    head, give a score at every position."""
    if hasattr(
        model, "get_base_model"
    ):  # a LoRA reward model in training: the transformers model inside, its adapters active
        model = model.get_base_model()
    return getattr(model, model.base_model_prefix), model.score


def head_scores(head, hidden: torch.Tensor) -> torch.Tensor:
    return head(hidden).squeeze(-1).float()  # fp32 for GAE and the losses, also under bf16 autocast


def per_token_scores(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The score head applied at every position [B, T]: the reward at the last token, or a critic's values.

    Positions are counted from each row's first real token, so left-padded
    rollouts are scored as the right-padded training batches were.
    """
    position_ids = (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)
    backbone, head = backbone_and_head(model)
    hidden = backbone(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
    ).last_hidden_state
    return head_scores(head, hidden)


@torch.no_grad()
def score_texts(model, tokenizer, prompts: list[str], responses: list[str], batch_size: int = 64) -> list[float]:
    """Reward of each (prompt, response): the score at the EOS closing prompt + response.

    Scored in batches of similar length (the longest first), so that a batch pads little; the scores come back in
    the order given."""
    model.eval()
    texts = [format_prompt(p, tokenizer) + r + tokenizer.eos_token for p, r in zip(prompts, responses)]
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    scores = [0.0] * len(texts)
    for start in range(0, len(texts), batch_size):
        chunk = order[start : start + batch_size]
        batch = tokenizer([texts[i] for i in chunk], return_tensors="pt", padding=True).to(
            model.device
        )  # with a BOS where the tokenizer adds one, as TRL trained
        all_scores = per_token_scores(model, batch["input_ids"], batch["attention_mask"])
        last = batch["attention_mask"].sum(dim=1) - 1
        for i, score in zip(chunk, all_scores[torch.arange(len(chunk)), last].tolist()):
            scores[i] = score
    return scores


def pairwise_accuracy(model, tokenizer, frame: pd.DataFrame) -> tuple[float, float, float]:
    """(share of pairs where chosen outscores rejected, mean margin, pairwise loss) on a comparison frame."""
    accuracy, margin, loss, _ = pairwise_accuracy_by_kind(model, tokenizer, frame)
    return accuracy, margin, loss


def pairwise_accuracy_by_kind(
    model, tokenizer, frame: pd.DataFrame, judge: Judge | None = None
) -> tuple[float, float, float, dict[str, tuple[float, int]]]:
    """`pairwise_accuracy`, and per task kind the judge knows ('other' for prompts outside them; nothing without a
    judge) the accuracy and the number of pairs: one mean can hide a kind the RM does not judge."""
    chosen = torch.tensor(score_texts(model, tokenizer, list(frame["prompt"]), list(frame["chosen"])))
    rejected = torch.tensor(score_texts(model, tokenizer, list(frame["prompt"]), list(frame["rejected"])))
    by_kind = accuracy_by_kind(list(frame["prompt"]), (chosen > rejected).tolist(), judge)
    return (
        float((chosen > rejected).float().mean()),
        float((chosen - rejected).mean()),
        float(pairwise_loss(chosen, rejected)),
        by_kind,
    )


def accuracy_by_kind(prompts: list[str], correct: list[bool], judge: Judge | None) -> dict[str, tuple[float, int]]:
    """Per task kind the judge knows ('other' outside them): the share of its pairs ranked right, and how many there are."""
    if judge is None:
        return {}
    right = collections.defaultdict(list)
    for prompt, ok in zip(prompts, correct, strict=True):
        right[judge.kind(prompt) or "other"].append(ok)
    return {kind: (sum(r) / len(r), len(r)) for kind, r in sorted(right.items())}


def reward_model_from_sft(sft_path: str, tokenizer):
    """The SFT model's backbone with a fresh scalar head (num_labels=1), as InstructGPT initialises its RM."""
    model = AutoModelForSequenceClassification.from_pretrained(
        require_safetensors(sft_path), num_labels=1, use_safetensors=True, **NO_HUB_CODE
    )
    set_special_token_ids(model, tokenizer)
    return model.to(device())


def train_reward_model(
    sft_path: str,
    tokenizer,
    train: pd.DataFrame,
    validation: pd.DataFrame,
    cfg: RewardStepConfig,
    checkpoints: Path | None = None,
) -> TrainResult:
    """Train the RM; report held-out pairwise accuracy and margin before and after.

    With a `checkpoints` folder (training/resume.py) training saves there and resumes from it."""
    from trl import RewardConfig, RewardTrainer

    start = time.perf_counter()
    overlong = count_overlong(
        tokenizer, pd.concat([train, validation]), ("chosen", "rejected"), cfg.max_length, cfg.overlong, "reward_model"
    )
    if overlong:
        train = fit_responses(tokenizer, train, ("chosen", "rejected"), cfg.max_length)
    torch.manual_seed(cfg.seed)
    model = reward_model_from_sft(sft_path, tokenizer)
    initial_accuracy, _, _ = pairwise_accuracy(model, tokenizer, validation)
    dataset = Dataset.from_dict(
        {
            "prompt": [format_prompt(p, tokenizer) for p in train["prompt"]],
            "chosen": list(train["chosen"]),
            "rejected": list(train["rejected"]),
        }
    )
    rankings = list(train["ranking"]) if "ranking" in train else list(train["id"])
    grouped = len(set(rankings)) < len(rankings)  # people ranked K > 2 responses: one ranking, one batch element
    trainer_class, collator = RewardTrainer, None
    if grouped:
        trainer_class, collator_class = _ranking_trainer_class()
        collator = collator_class(pad_token_id=tokenizer.pad_token_id)
        dataset = dataset.add_column("ranking", rankings).add_column("pair_weight", pair_weights(rankings))
    with output_dir(checkpoints) as out:
        args = RewardConfig(
            **trainer_kwargs(
                out,
                cfg.epochs,
                cfg.batch_size,
                cfg.learning_rate,
                cfg.seed,
                len(dataset),
                checkpoint_every=cfg.checkpoint_every if checkpoints else 0,
            ),
            max_length=cfg.max_length,
            center_rewards_coefficient=0.01,
        )
        held_out = Dataset.from_dict(  # the validation curve
            {
                "prompt": [format_prompt(p, tokenizer) for p in validation["prompt"]],
                "chosen": list(validation["chosen"]),
                "rejected": list(validation["rejected"]),
            }
        )
        if grouped:
            held_out_rankings = list(validation["ranking"])
            held_out = held_out.add_column("ranking", held_out_rankings).add_column(
                "pair_weight", pair_weights(held_out_rankings)
            )
        trainer = monitored(
            trainer_class(
                model=model,
                args=args,
                train_dataset=dataset,
                eval_dataset=held_out,
                processing_class=tokenizer,
                data_collator=collator,
                peft_config=lora.peft_config(cfg.lora, "SEQ_CLS") if cfg.lora else None,
            ),
            "reward_model",
        )
        model = trainer.model
        result, figures = resumable_train(trainer)
    judge = load_judge(cfg.judge)
    accuracy, margin, validation_loss, by_kind = pairwise_accuracy_by_kind(model, tokenizer, validation, judge)
    train_accuracy, _, _ = pairwise_accuracy(model, tokenizer, train.head(256))
    logger.info(
        "reward model: held-out pairwise accuracy %.3f (before training %.3f), margin %.3f; by kind: %s",
        accuracy,
        initial_accuracy,
        margin,
        ", ".join(f"{kind} {acc:.3f} ({n} pairs)" for kind, (acc, n) in by_kind.items()),
    )
    unjudged = sorted({kind for kind in map(judge.kind, train["prompt"]) if kind} - set(by_kind)) if judge else []
    if unjudged:
        logger.warning(
            "reward model: no held-out pairs of kind %s (every such prompt hashed into train): the held-out accuracy says nothing "
            "about how the RM ranks them",
            ", ".join(unjudged),
        )
    metrics = {
        "validation_accuracy": accuracy,
        **{f"validation_accuracy_{kind}": acc for kind, (acc, _) in by_kind.items()},
        **{f"validation_pairs_{kind}": n for kind, (_, n) in by_kind.items()},
        "validation_margin": margin,
        "validation_loss": validation_loss,
        "initial_validation_accuracy": initial_accuracy,
        "train_accuracy": train_accuracy,
        **figures,
        "train_pairs": len(dataset),
        **lora.parameter_counts(model),
        "overlong_records": overlong,
        "train_tokens": trained_tokens(trainer, ("chosen_ids", "rejected_ids")) * cfg.epochs,
        "train_runtime": result.metrics["train_runtime"],
        "validation_pairs": len(validation),
        "train_seconds": time.perf_counter() - start,
    }
    return TrainResult(model, tokenizer, metrics)


def _ranking_trainer_class():
    """TRL's RewardTrainer with `ranking_loss` over `RankingBatches` (built on first use: trl imports slowly)."""
    from torch.utils.data import DataLoader
    from trl import RewardTrainer
    from trl.trainer.reward_trainer import DataCollatorForPreference

    class RankingCollator(DataCollatorForPreference):
        def torch_call(self, examples):
            return {
                **super().torch_call(examples),
                "pair_weight": torch.tensor([e["pair_weight"] for e in examples], dtype=torch.float),
            }

    class RankingRewardTrainer(RewardTrainer):
        def _set_signature_columns_if_needed(self):
            self._signature_columns = ["chosen_ids", "rejected_ids", "pair_weight", "ranking"]

        def get_train_dataloader(self):
            dataset = self._remove_unused_columns(self.train_dataset, description="training")
            batches = RankingBatches(dataset["ranking"], self.args.per_device_train_batch_size, self.args.seed)
            return self.accelerator.prepare(
                DataLoader(dataset.remove_columns("ranking"), batch_sampler=batches, collate_fn=self.data_collator)
            )

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            weight = inputs.pop("pair_weight")
            outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False)
            chosen, rejected = torch.chunk(outputs.logits.squeeze(-1), chunks=2)
            loss = ranking_loss(chosen, rejected, weight) + self.args.center_rewards_coefficient * torch.mean(
                (chosen + rejected) ** 2
            )
            return (loss, outputs) if return_outputs else loss

    return RankingRewardTrainer, RankingCollator


def pair_table(model, tokenizer, pairs: pd.DataFrame) -> str:
    """Held-out pairs with the reward model's score of each side: what a reviewer reads before trusting its accuracy."""

    chosen = score_texts(model, tokenizer, list(pairs["prompt"]), list(pairs["chosen"]))
    rejected = score_texts(model, tokenizer, list(pairs["prompt"]), list(pairs["rejected"]))

    rows = ["| prompt | chosen | score | rejected | score | right? |", "|---|---|---|---|---|---|"]
    rows += [
        f"| {markdown_cell(p)} | {markdown_cell(c)} | {sc:.2f} | {markdown_cell(r)} | {sr:.2f} | {'yes' if sc > sr else 'no'} |"
        for p, c, r, sc, sr in zip(pairs["prompt"], pairs["chosen"], pairs["rejected"], chosen, rejected)
    ]
    return "\n".join(rows)


@step
def reward_model(inputs: dict[str, str], cfg: RewardStepConfig) -> StepResult:
    from transformers import AutoTokenizer

    from ..data.datasets import splits
    from .lora import fine_tune_tag
    from .resume import checkpointing

    train, validation = splits(inputs["comparison_dataset"])
    if validation.empty:
        raise ValueError(
            f"comparison_dataset has no validation pairs ({inputs['comparison_dataset']}); raise validation_fraction"
        )
    tokenizer = AutoTokenizer.from_pretrained(inputs["sft_model"])
    with checkpointing("reward_model", inputs, cfg) as checkpoints:
        result = train_reward_model(inputs["sft_model"], tokenizer, train, validation, cfg, checkpoints)
    return StepResult(
        "reward_model",
        result.metrics,
        [
            "validation_accuracy",
            "validation_margin",
            "initial_validation_accuracy",
            "training_loss",
            "overlong_records",
            "trainable_parameters",
        ],
        inputs=inputs,
        tags=fine_tune_tag(cfg),
        model=result.model,
        tokenizer=tokenizer,
        texts={"validation_pairs.md": pair_table(result.model, tokenizer, validation.head(16))},
        card=ModelCard(
            "rlhf-dag reward model",
            "Scores a <prompt, response> pair (AutoModelForSequenceClassification, one label). Read the score at the EOS that closes `apply_chat_template([user, assistant])`.",
        ),
    )
