"""Validated labeled files -> the Parquet datasets the trainers read, with a fixed split.

A prompt's split is decided by a hash of the prompt text, so it never moves
when other records are added or edited, and a prompt never sits in both splits.
(One exception, for files so small that no prompt hashes into validation: the
prompt with the lowest hash is moved there, and adding records can change which.)
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

from .labels import LabelFile

COLUMNS = {"demonstrations": ["id", "prompt", "response"], "comparisons": ["id", "prompt", "chosen", "rejected"]}


def _position(prompt: str, salt: str) -> float:
    """The prompt's place in [0, 1), fixed by a salted hash of its text."""
    return int.from_bytes(hashlib.sha256(f"{salt}:{prompt.strip()}".encode()).digest()[:8], "big") / 2**64


def split_of(prompt: str, validation_fraction: float, salt: str) -> str:
    return "validation" if _position(prompt, salt) < validation_fraction else "train"


def build_dataset(labels: LabelFile, validation_fraction: float, salt: str) -> pd.DataFrame:
    """One row per record: the file's own columns, `split`, and `source` (`file:line`, for error messages)."""
    if not 0 <= validation_fraction < 1:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    frame = pd.DataFrame(labels.records)[COLUMNS[labels.kind]]
    frame["split"] = [split_of(p, validation_fraction, salt) for p in frame["prompt"]]
    if validation_fraction and not (frame["split"] == "validation").any():
        # A tiny file still gets validation rows: every row of the prompt with the lowest hash position.
        first = min(frame["prompt"], key=lambda p: _position(p, salt))
        frame.loc[frame["prompt"].str.strip() == first.strip(), "split"] = "validation"
    frame["source"] = [f"{labels.path}:{labels.lines[i]}" for i in frame["id"]]
    return frame


def write_parquet(frame: pd.DataFrame, path: Path) -> None:
    """Write to a temporary name and rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    frame.to_parquet(tmp, index=False)
    tmp.replace(path)


def splits(path: Path | str) -> tuple[pd.DataFrame, pd.DataFrame]:
    frame = pd.read_parquet(path)
    return frame[frame["split"] == "train"].reset_index(drop=True), frame[frame["split"] == "validation"].reset_index(drop=True)
