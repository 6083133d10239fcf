"""Arguments shared by every TRL trainer in the graph, safe on a CPU-only machine."""

from __future__ import annotations

import math
import os

import torch
from transformers import TrainerCallback


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def trainer_kwargs(output_dir: str, epochs: float, batch_size: int, learning_rate: float, seed: int, n_examples: int) -> dict:
    """Keyword arguments for `trl.SFTConfig` / `trl.RewardConfig`.

    bf16, gradient checkpointing and checkpoint saving are off: on CPU they cost
    time and the asset saves the final model itself. A loss is logged about 20
    times per run so MLflow gets a curve even from short runs: through
    transformers' own MLflow integration, into the asset's run (see `tracker`).
    """
    steps = max(1, math.ceil(n_examples / batch_size) * epochs)
    return dict(
        output_dir=output_dir,
        num_train_epochs=epochs,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=batch_size,
        learning_rate=learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, int(0.05 * steps)),
        weight_decay=0.0,
        logging_steps=max(1, int(steps // 20)),
        logging_nan_inf_filter=False,  # a NaN/inf loss must reach the log, where StopOnNonFiniteLoss stops the run
        save_strategy="no",
        report_to=tracker(),
        disable_tqdm=True,
        seed=seed,
        data_seed=seed,
        bf16=False,
        fp16=False,
        # TRL's configs turn it on by default: every decoder layer's forward ran twice per step
        # (py-spy of the base_model step, docs/benchmarks.md); the results are bit-for-bit the same without it.
        gradient_checkpointing=False,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
    )


def tracker() -> str:
    """'mlflow' when the step runs inside an MLflow run (the publisher's, or MLFLOW_RUN_ID in a launched child), else 'none'.

    transformers' MLflowCallback then logs the trainer's loss, learning rate and
    evaluation curves into that run, with the trainer's arguments as params; a
    step called on its own (a benchmark, a test) tracks nothing.
    """
    import mlflow

    return "mlflow" if mlflow.active_run() is not None or os.environ.get("MLFLOW_RUN_ID") else "none"


def trained_tokens(trainer, columns: tuple[str, ...] = ("input_ids",)) -> int:
    """Tokens one pass over the trainer's prepared (tokenized, truncated or packed) dataset feeds the model, padding excluded."""
    return sum(len(ids) for column in columns for ids in trainer.train_dataset[column])


class TrainingDivergedError(RuntimeError):
    """A loss or reward became NaN/inf; the message names the step and the iteration (PPO) or global step (TRL)."""


class StopOnNonFiniteLoss(TrainerCallback):
    """Stop a TRL run at the first logged NaN/inf loss, naming the asset and the global step, before anything is saved."""

    def __init__(self, step: str):
        self.step = step

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("loss", "train_loss"):
            if key in logs and not math.isfinite(logs[key]):
                window = f" (the loss is logged every {args.logging_steps} steps)" if args.logging_steps > 1 else ""
                raise TrainingDivergedError(
                    f"{self.step}: non-finite training loss ({logs[key]}) at global step {state.global_step} of {state.max_steps}"
                    f"{window}; lower learning_rate, or look for a bad batch"
                )
