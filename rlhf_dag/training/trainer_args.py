"""Arguments shared by every TRL trainer in the graph, safe on a CPU-only machine."""

from __future__ import annotations

import math
import os
import sys

import torch

from .device import bf16


def trainer_kwargs(
    output_dir: str,
    epochs: float,
    batch_size: int,
    learning_rate: float,
    seed: int,
    n_examples: int,
    group_by_length: bool = False,
    evaluations: int = 5,
    checkpoint_every: int = 0,
) -> dict:
    """Keyword arguments for `trl.SFTConfig` / `trl.RewardConfig`.

    bf16 mixed precision on a GPU that has it (`bf16`), fp32 elsewhere; gradient
    checkpointing is off: it costs time. With `checkpoint_every` the trainer saves
    a checkpoint into `output_dir` every that many steps, the newest only, for a
    killed run to resume from (`resumable_train`); the asset saves the final model
    itself. A loss is logged about 20
    times per run so MLflow gets a curve even from short runs: through
    transformers' own MLflow integration, into the asset's run (see `tracker`).
    With an `eval_dataset` the trainer also evaluates `evaluations` times during
    training: the validation curve (`eval_loss`) beside the training loss.

    Under a multi-process launcher (WORLD_SIZE > 1) `batch_size` stays the global batch: each rank
    takes its share of it, and on CPU the ranks all-reduce over gloo (`use_cpu` and `ddp_backend`
    together: without them each rank would train alone on all the data).
    """
    from .distributed import backend, shard_size, world_size

    steps = max(1, math.ceil(n_examples / batch_size) * epochs)
    return dict(
        output_dir=output_dir,
        num_train_epochs=epochs,
        per_device_train_batch_size=shard_size(batch_size, "batch_size"),
        per_device_eval_batch_size=shard_size(batch_size, "batch_size"),
        ddp_backend=backend() if world_size() > 1 else None,
        ddp_find_unused_parameters=False,  # every parameter takes part in the loss: no extra pass over the autograd graph
        learning_rate=learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, int(0.05 * steps)),
        weight_decay=0.0,
        logging_steps=max(1, int(steps // 20)),
        eval_strategy="steps" if evaluations else "no",
        eval_steps=max(1, int(steps // max(1, evaluations))),
        logging_nan_inf_filter=False,  # a NaN/inf loss must reach the log, where TrainingMonitor stops the run
        save_strategy="steps" if checkpoint_every else "no",
        save_steps=max(1, checkpoint_every),
        save_total_limit=1,  # a checkpoint half-written by a killed run leaves the previous one complete
        report_to=tracker(),
        disable_tqdm=True,
        seed=seed,
        data_seed=seed,
        bf16=bf16(),
        fp16=False,
        # TRL's configs turn it on by default: every decoder layer's forward ran twice per step
        # (py-spy of the base_model step, docs/benchmarks.md); the results are bit-for-bit the same without it.
        activation_checkpointing=False,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        train_sampling_strategy="group_by_length" if group_by_length else "random",
    )


def tracker() -> str:
    """'mlflow' when the step runs inside an MLflow run (the publisher's, or MLFLOW_RUN_ID in a launched child), else 'none'.

    transformers' MLflowCallback then logs the trainer's loss, learning rate and
    evaluation curves into that run, with the trainer's arguments as params; a
    step called on its own (a benchmark, a test) tracks nothing.
    """
    if os.environ.get("MLFLOW_RUN_ID"):
        return "mlflow"
    mlflow = sys.modules.get(
        "mlflow"
    )  # a process that never imported mlflow has no active run (and need not have mlflow installed)
    return "mlflow" if mlflow is not None and mlflow.active_run() is not None else "none"


def trained_tokens(trainer, columns: tuple[str, ...] = ("input_ids",)) -> int:
    """Tokens one pass over the trainer's prepared (tokenized, truncated or packed) dataset feeds the model, padding excluded."""
    return sum(len(ids) for column in columns for ids in trainer.train_dataset[column])
