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
    lineage: dict = field(default_factory=dict)


def run_dir(root: Path, asset: str, run_id: str) -> Path:
    """`<artifacts>/<asset>/<run_id>/`: one folder per materialization, never reused."""
    return Path(root) / asset / run_id


@contextlib.contextmanager
def atomic_dir(final: Path):
    """Yield a temporary folder; rename it to `final` only if the block completes."""
    final = Path(final)
    if final.exists():
        raise FileExistsError(f"{final} already exists: artifacts are written once per run")
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temp_dirs(final.parent)
    tmp = final.parent / f".tmp-{final.name}-{socket.gethostname()}-{os.getpid()}"
    tmp.mkdir()
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _remove_stale_temp_dirs(folder: Path) -> None:
    """Remove the `.tmp-<run>-<host>-<pid>` folders that killed runs on this host left behind.

    A folder whose process still runs (a concurrent materialization of the same
    asset) is kept, and so is one from another host, whose process we cannot see.
    """
    host = socket.gethostname()
    for tmp in folder.glob(".tmp-*"):
        owner, _, pid = tmp.name.rpartition("-")
        if owner.endswith(f"-{host}") and pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)
            logger.info("removed %s: left by a killed run (process %s is gone)", tmp, pid)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


def write_model_card(path: Path, title: str, description: str, lineage: dict, metrics: dict) -> None:
    """A short README.md beside the weights: what the model is, where it came from, how it scored."""
    lines = [f"# {title}", "", description, "", "## Lineage", ""]
    lines += [f"- **{k}**: `{v}`" for k, v in lineage.items()]
    lines += ["", "## Metrics", ""]
    lines += [f"- {k}: {v:.4g}" if isinstance(v, float) else f"- {k}: {v}" for k, v in metrics.items()]
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from transformers import AutoTokenizer, AutoModelForCausalLM",
        "tok = AutoTokenizer.from_pretrained(path)",
        "model = AutoModelForCausalLM.from_pretrained(path)",
        'ids = tok.apply_chat_template([{"role": "user", "content": "What is 2 + 2?"}], add_generation_prompt=True, return_tensors="pt")',
        "```",
        "",
    ]
    (Path(path) / "README.md").write_text("\n".join(lines), encoding="utf-8")
