"""Resuming a killed training run from its last checkpoint instead of starting over.

A training step (base_model, sft_model, reward_model, ppo_policy) saves a
checkpoint every `checkpoint_every` optimizer steps (PPO: iterations) into
`<RLHF_DAG_HOME>/checkpoints/<step>/<key>/`. The key hashes what the weights
depend on: the step, its training config (`training_hash`: not the sample
settings, not the interval itself), its inputs (an upstream model folder by its
run-scoped path, a file by its path and bytes: a labeled file's data version)
and the world size. So a run with the same inputs finds the checkpoints of a
killed one, and a run with any other input never does.

The folder is removed as soon as training ends, so a checkpoint never becomes a
materialization: the publisher saves the result to the asset's own run folder.
It lives outside `artifacts/`, where no handle points. A step that raises keeps
its checkpoints, for a re-run after the fix.

The TRL trainers save and restore their checkpoints themselves (transformers'
Trainer: weights, optimizer, scheduler, RNG states and data order); our PPO loop
saves its own with `save` and reads it back with `latest` (training/ppo.py).
Under several processes rank 0 owns the folder (its lock, its writes, its
removal); every rank reads.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ..artifacts import atomic_path
from ..config import StepConfig, checkpoints_dir
from . import distributed

logger = logging.getLogger(__name__)


def checkpoint_key(step: str, inputs: dict[str, str], cfg: StepConfig) -> str:
    """sha256 of the step, its training config, its inputs' versions and the world size."""
    digest = hashlib.sha256(f"{step}\n{cfg.training_hash()}\nworld_size={distributed.world_size()}\n".encode())
    for name, path in sorted(inputs.items()):
        path = Path(path).resolve()
        digest.update(f"{name}={path}\n".encode())
        if path.is_file():  # a labeled file keeps its path across edits: its bytes are its version
            with path.open("rb") as f:
                digest.update(hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()[:16]


@contextlib.contextmanager
def checkpointing(step: str, inputs: dict[str, str], cfg: StepConfig) -> Iterator[Path | None]:
    """The folder this run checkpoints into and resumes from; None when `checkpoint_every` is 0, or when another
    live run (same inputs, same moment) holds it, since two writers would mix their checkpoints.

    Removed when the block completes; kept when it raises or the process is killed.
    """
    if not cfg.checkpoint_every:
        yield None
        return
    folder = checkpoints_dir() / step / checkpoint_key(step, inputs, cfg)
    lock = _lock(folder) if distributed.rank() == 0 else None
    owned = distributed.all_gather(lock is not None)[0]  # rank 0's answer, on every rank
    if not owned:
        logger.warning(
            "%s: another run with the same inputs is checkpointing into %s; this one trains without checkpoints",
            step,
            folder,
        )
        yield None
        return
    try:
        yield folder
        distributed.barrier()  # no rank still reads a checkpoint
        if lock is not None:
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        if lock is not None:
            os.close(lock)


def _lock(folder: Path) -> int | None:
    """An exclusive lock on `folder/lock` (its file descriptor), or None if a live process holds it.

    flock: the kernel drops the lock of a killed process, so a dead run never blocks the next.
    """
    path = folder / "lock"
    while True:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_CREAT | os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except OSError as error:  # a network volume without file locks: keeping runs with the same inputs apart is then the user's job
            logger.warning("%s: no file lock (%s); checkpointing without one", folder, error)
            return fd
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        os.close(fd)  # locked a file the finished holder had just removed with its folder: lock the new one


def rng_states() -> dict:
    """This process's random states: Python's, NumPy's, torch's on CPU and on every CUDA device."""
    numpy_state = np.random.get_state(legacy=False)
    numpy_state["state"]["key"] = numpy_state["state"]["key"].tolist()  # plain ints: loadable with weights_only
    return {
        "python": random.getstate(),
        "numpy": numpy_state,
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    numpy_state = states["numpy"]
    numpy_state["state"]["key"] = np.asarray(numpy_state["state"]["key"], dtype=np.uint32)
    np.random.set_state(numpy_state)
    torch.set_rng_state(states["torch"])
    if states["cuda"]:
        torch.cuda.set_rng_state_all(states["cuda"])


def save(folder: Path, iteration: int, state: dict) -> None:
    """Write `iteration-<n>.pt` atomically (a killed write leaves only a `.tmp-` file), then drop the older ones. Rank 0 only."""
    if distributed.rank() != 0:
        return
    final = folder / f"iteration-{iteration:06d}.pt"
    with atomic_path(final) as tmp:
        torch.save(state, tmp)
    for older in folder.glob("iteration-*.pt"):
        if older != final:
            older.unlink(missing_ok=True)


def latest(folder: Path | None) -> dict | None:
    """The newest complete checkpoint `save` wrote in `folder`, or None."""
    if folder is None:
        return None
    saved = sorted(folder.glob("iteration-*.pt"))
    # weights_only: a checkpoint is tensors and plain values; unpickling anything else could run code
    return torch.load(saved[-1], map_location="cpu", weights_only=True) if saved else None


@contextlib.contextmanager
def output_dir(checkpoints: Path | None) -> Iterator[str]:
    """A TRL trainer's output folder: the run's checkpoint folder (`checkpointing`), else a throwaway one."""
    if checkpoints is not None:
        yield str(checkpoints)
        return
    with tempfile.TemporaryDirectory() as out:
        yield out


def last_complete_checkpoint(folder: str) -> str | None:
    """The newest `checkpoint-<step>` in `folder` (transformers' own `sort_checkpoints`) whose trainer_state.json,
    which transformers writes last, is whole. A newer one without it was half-written by a killed run: rank 0 removes it."""
    from transformers.trainer_utils import sort_checkpoints

    from .distributed import rank

    for path in reversed(sort_checkpoints(folder)):
        with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
            json.loads((Path(path) / "trainer_state.json").read_text(encoding="utf-8"))
            return path
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
