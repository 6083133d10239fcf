"""Arguments shared by every TRL trainer in the graph, safe on a CPU-only machine."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import torch
from transformers import PrinterCallback, TrainerCallback

logger = logging.getLogger(__name__)


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def bf16() -> bool:
    """bf16 mixed precision (fp32 weights, bf16 matrix products) for the TRL trainers where the GPU has it; fp32 on CPU,
    where it only costs time. Our PPO loop stays fp32: under bf16 autocast it diverged on an H200 (docs/benchmarks.md)."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def trainer_kwargs(output_dir: str, epochs: float, batch_size: int, learning_rate: float, seed: int, n_examples: int, group_by_length: bool = False,
                   evaluations: int = 5, checkpoint_every: int = 0) -> dict:
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


@contextlib.contextmanager
def output_dir(checkpoints: Path | None) -> Iterator[str]:
    """The trainer's output folder: the run's checkpoint folder (training/resume.py), else a throwaway one."""
    if checkpoints is not None:
        yield str(checkpoints)
        return
    with tempfile.TemporaryDirectory() as out:
        yield out


def last_complete_checkpoint(folder: str) -> str | None:
    """The newest `checkpoint-<step>` in `folder` whose trainer_state.json, which transformers writes last, is whole.

    A newer one without it was half-written by a killed run: rank 0 removes it.
    """
    from .distributed import rank

    saved = [(int(match[1]), path) for path in Path(folder).glob("checkpoint-*") if (match := re.fullmatch(r"checkpoint-(\d+)", path.name))]
    for _, path in sorted(saved, reverse=True):
        with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
            json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
            return str(path)
        if rank() == 0:
            shutil.rmtree(path, ignore_errors=True)
    return None


def resumable_train(trainer):
    """`trainer.train()`, resumed from the newest complete checkpoint in its output folder when there is one.

    transformers restores the weights, optimizer, scheduler, RNG states and data
    order from it. Returns the trainer's output and two figures of the whole run:
    `training_loss` over every step, those before the checkpoint too (from the log
    history it restored, which covers them: TrainingMonitor logs at every save),
    and `resumed_from_step` (0: a fresh start).
    """
    checkpoint = last_complete_checkpoint(trainer.args.output_dir) if trainer.args.save_strategy != "no" else None
    output = trainer.train(resume_from_checkpoint=checkpoint)
    resumed_from = int(checkpoint.rsplit("-", 1)[1]) if checkpoint else 0
    loss = output.training_loss
    if resumed_from:
        before, last = 0.0, 0
        for entry in trainer.state.log_history:
            if "loss" in entry and entry["step"] <= resumed_from:
                before, last = before + entry["loss"] * (entry["step"] - last), entry["step"]
        loss = (before + output.training_loss * (output.global_step - resumed_from)) / output.global_step
    return output, {"training_loss": loss, "resumed_from_step": resumed_from}


def tracker() -> str:
    """'mlflow' when the step runs inside an MLflow run (the publisher's, or MLFLOW_RUN_ID in a launched child), else 'none'.

    transformers' MLflowCallback then logs the trainer's loss, learning rate and
    evaluation curves into that run, with the trainer's arguments as params; a
    step called on its own (a benchmark, a test) tracks nothing.
    """
    if os.environ.get("MLFLOW_RUN_ID"):
        return "mlflow"
    mlflow = sys.modules.get("mlflow")  # a process that never imported mlflow has no active run (and need not have mlflow installed)
    return "mlflow" if mlflow is not None and mlflow.active_run() is not None else "none"


def trained_tokens(trainer, columns: tuple[str, ...] = ("input_ids",)) -> int:
    """Tokens one pass over the trainer's prepared (tokenized, truncated or packed) dataset feeds the model, padding excluded."""
    return sum(len(ids) for column in columns for ids in trainer.train_dataset[column])


class TrainingDivergedError(RuntimeError):
    """A loss or reward became NaN/inf; the message names the step and the iteration (PPO) or global step (TRL)."""


class TrainingMonitor(TrainerCallback):
    """One log line per logged step (`<asset>: step N/M, loss L, T s left`, logger `rlhf_dag`) instead of the
    trainer's raw dicts; a stop at the first logged NaN/inf loss, naming the asset and the global step,
    before anything is saved; and a logged loss at every checkpoint."""

    def __init__(self, step: str):
        self.step = step
        self.started = None
        self.first_step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.started, self.first_step = time.perf_counter(), state.global_step
        if state.global_step:
            logger.info("%s: resumed from the checkpoint at step %d/%d", self.step, state.global_step, state.max_steps)
        if args.world_size > 1:
            logger.info("%s: %d processes (%s), global batch %d", self.step, args.world_size, args.distributed_state.distributed_type,
                        args.per_device_train_batch_size * args.world_size)

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save:  # a checkpoint's log history then covers every step before it (`resumable_train`'s training_loss)
            control.should_log = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("loss", "train_loss"):
            if key in logs and not math.isfinite(logs[key]):
                window = f" (the loss is logged every {args.logging_steps} steps)" if args.logging_steps > 1 else ""
                raise TrainingDivergedError(
                    f"{self.step}: non-finite training loss ({logs[key]}) at global step {state.global_step} of {state.max_steps}"
                    f"{window}; lower learning_rate, or look for a bad batch"
                )
        if "loss" in logs and self.started is not None and state.global_step:
            elapsed = time.perf_counter() - self.started
            left = elapsed / max(1, state.global_step - self.first_step) * (state.max_steps - state.global_step)
            logger.info("%s: step %d/%d, loss %.3f, %.0f s left", self.step, state.global_step, state.max_steps, logs["loss"], left)
        if "eval_loss" in logs and state.global_step < state.max_steps:
            extra = f", accuracy {logs['eval_accuracy']:.3f}" if "eval_accuracy" in logs else ""
            logger.info("%s: step %d/%d, validation loss %.3f%s", self.step, state.global_step, state.max_steps, logs["eval_loss"], extra)


def monitored(trainer, step: str):
    """The trainer with `TrainingMonitor` in place of transformers' dict printer."""
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(TrainingMonitor(step))
    return trainer
