"""What a TRL trainer logs while it trains (one short line per update) and how a diverged run stops."""

from __future__ import annotations

import logging
import math
import time

from transformers import PrinterCallback, TrainerCallback

logger = logging.getLogger(__name__)


class TrainingDivergedError(RuntimeError):
    """A loss or reward became NaN/inf; the message names the step and the iteration (PPO) or global step (TRL)."""


class TrainingMonitor(TrainerCallback):
    """A short log line (`<asset>: step N/M, loss L, T s left`, logger `rlhf_dag`) at each fifth of the run and at
    least once a minute (the validation loss as often), instead of the trainer's raw dicts (MLflow still gets every logged loss); a stop at the
    first logged NaN/inf loss, naming the asset and the global step, before anything is saved; and a logged loss
    at every checkpoint."""

    def __init__(self, step: str):
        self.step = step
        self.started = None
        self.first_step = 0
        self.next_line, self.next_eval, self.last_line = 0, 0, 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.started, self.first_step = time.perf_counter(), state.global_step
        self.next_line, self.next_eval, self.last_line = state.global_step + 1, state.global_step + 1, self.started
        if state.global_step:
            logger.info("%s: resumed from the checkpoint at step %d/%d", self.step, state.global_step, state.max_steps)
        if args.world_size > 1:
            logger.info(
                "%s: %d processes (%s), global batch %d",
                self.step,
                args.world_size,
                args.distributed_state.distributed_type,
                args.per_device_train_batch_size * args.world_size,
            )

    def on_step_end(self, args, state, control, **kwargs):
        if (
            control.should_save
        ):  # a checkpoint's log history then covers every step before it (`resumable_train`'s training_loss)
            control.should_log = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("loss", "train_loss"):
            if key in logs and not math.isfinite(logs[key]):
                window = f" (the loss is logged every {args.logging_steps} steps)" if args.logging_steps > 1 else ""
                raise TrainingDivergedError(
                    f"{self.step}: non-finite training loss ({logs[key]}) at global step {state.global_step} of {state.max_steps}"
                    f"{window}; lower learning_rate, or look for a bad batch"
                )
        now = time.perf_counter()
        due = state.global_step >= self.next_line or state.global_step == state.max_steps or now - self.last_line > 60
        if "loss" in logs and self.started is not None and state.global_step and due:
            self.next_line = state.global_step + math.ceil(state.max_steps / 5)
            self.last_line = now
            elapsed = now - self.started
            left = elapsed / max(1, state.global_step - self.first_step) * (state.max_steps - state.global_step)
            logger.info(
                "%s: step %d/%d, loss %.3f, %.0f s left",
                self.step,
                state.global_step,
                state.max_steps,
                logs["loss"],
                left,
            )
        if "eval_loss" in logs and state.global_step < state.max_steps and state.global_step >= self.next_eval:
            self.next_eval = state.global_step + math.ceil(state.max_steps / 5)
            extra = f", accuracy {logs['eval_accuracy']:.3f}" if "eval_accuracy" in logs else ""
            logger.info(
                "%s: step %d/%d, validation loss %.3f%s",
                self.step,
                state.global_step,
                state.max_steps,
                logs["eval_loss"],
                extra,
            )


def monitored(trainer, step: str):
    """The trainer with `TrainingMonitor` in place of transformers' dict printer."""
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(TrainingMonitor(step))
    return trainer
