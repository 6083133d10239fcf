"""Run-scoped, atomically written model directories and the handles assets return.

A model directory appears under its final name only when complete: it is
written to a hidden temporary name beside it and renamed at the end, so a
killed run leaves at most a `.tmp-*` folder that nothing loads, and the next
write beside it removes that folder once its process is gone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ArtifactHandle:
    """What a model or dataset asset returns: where it is and where it came from."""

    asset: str
    path: str
    config_hash: str
    mlflow_run_id: str | None = None
    metrics: dict = field(default_factory=dict)
    lineage: dict = field(default_factory=dict)  # upstream asset -> the path this version was computed from
    tags: dict = field(default_factory=dict)  # string facts, e.g. the sha256 of the labeled file it was built from


def run_dir(root: Path, asset: str, run_id: str) -> Path:
    """`<artifacts>/<asset>/<run_id>/`: one folder per materialization, never reused."""
    return Path(root) / asset / run_id


@contextlib.contextmanager
def atomic_path(final: Path | str, directory: bool = False):
    """Yield a temporary path beside `final` (a folder if `directory`); it becomes `final` only if the block completes.

    The one atomic-write helper of the project: model folders, Parquet datasets
    and labeled files all go through it. On any error, or a kill, the temporary
    path is what is left (removed here, or by the next write beside it), and a
    previous `final` file is untouched.
    """
    final = Path(final)
    if directory and final.exists():
        raise FileExistsError(f"{final} already exists: artifacts are written once per run")
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temp_dirs(final.parent)
    tmp = final.parent / f".tmp-{final.name}-{socket.gethostname()}-{os.getpid()}"
    if directory:
        tmp.mkdir()
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        _remove(tmp)


def atomic_dir(final: Path | str):
    """A run's output folder, written under a temporary name and renamed when complete."""
    return atomic_path(final, directory=True)


def _remove_stale_temp_dirs(folder: Path) -> None:
    """Remove the `.tmp-<run>-<host>-<pid>` folders that killed runs on this host left behind.

    A folder whose process still runs (a concurrent materialization of the same
    asset) is kept, and so is one from another host, whose process we cannot see.
    """
    host = socket.gethostname()
    for tmp in folder.glob(".tmp-*"):
        owner, _, pid = tmp.name.rpartition("-")
        if owner.endswith(f"-{host}") and pid.isdigit() and not process_alive(int(pid)):
            _remove(tmp)
            logger.info("removed %s: left by a killed run (process %s is gone)", tmp, pid)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True
