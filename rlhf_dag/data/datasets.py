"""Validated labeled files -> the Parquet datasets the trainers read, with a fixed split.

A prompt's split is decided by a hash of the prompt text, so it never moves
when other records are added or edited, and a prompt never sits in both splits
(nor, then, do the pairs of one ranking, which share its prompt).
(Two exceptions, for sets so small that no prompt of theirs hashes into validation: in a file so small, the
prompt with the lowest hash is moved there; and where prompts come in groups (a judge's task kinds), a group of
two prompts or more with none held out has its lowest-hash prompt moved there, so that every kind is measured.
Adding records can change which.)
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pandas is imported where it is used: `rlhf-dag status` never needs it
    import pandas as pd

from ..artifacts import atomic_path
from .label_files import LabelFile

COLUMNS = {"demonstrations": ["id", "prompt", "response"], "comparisons": ["id", "prompt", "chosen", "rejected"]}


def _position(prompt: str, salt: str) -> float:
    """The prompt's place in [0, 1), fixed by a salted hash of its text."""
    return int.from_bytes(hashlib.sha256(f"{salt}:{prompt.strip()}".encode()).digest()[:8], "big") / 2**64


def split_of(prompt: str, validation_fraction: float, salt: str) -> str:
    return "validation" if _position(prompt, salt) < validation_fraction else "train"


def assign_splits(
    keys: list[str], validation_fraction: float, salt: str, groups: list[str | None] | None = None
) -> list[str]:
    """'train' or 'validation' for each key (a prompt, a document), fixed by its hash.

    A tiny set still gets validation rows: every row of the key with the lowest hash position. With `groups` (one
    per key, None for none), so does each group of at least two distinct keys.
    """
    if not 0 <= validation_fraction < 1:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    splits = [split_of(k, validation_fraction, salt) for k in keys]
    if not validation_fraction:
        return splits
    # (rows, the fewest distinct keys for the rule to apply): the whole set, then each group
    sets = [(set(range(len(keys))), 1)]
    if groups is not None:
        sets += [({i for i, g in enumerate(groups) if g == group}, 2) for group in set(groups) - {None}]
    for rows, fewest in sets:
        distinct = {keys[i].strip() for i in rows}
        if len(distinct) >= fewest and all(splits[i] == "train" for i in rows):
            first = min(distinct, key=lambda k: _position(k, salt))
            splits = ["validation" if i in rows and keys[i].strip() == first else s for i, s in enumerate(splits)]
    return splits


def build_dataset(
    labels: LabelFile, validation_fraction: float, salt: str, group_of: Callable[[str], str | None] | None = None
) -> pd.DataFrame:
    """One row per record: the canonical columns, `split`, and `source` (`file:line` or `file:row N`, for error messages).
    `group_of(prompt)` (a judge's kind) gives every group of prompts held-out rows (`assign_splits`)."""
    import pandas as pd

    frame = pd.DataFrame(labels.records)[COLUMNS[labels.kind]]
    if (
        labels.kind == "comparisons"
    ):  # the pairs of one human ranking share its key; any other pair is a ranking of its own
        frame["ranking"] = [r.get("ranking") or r["id"] for r in labels.records]
    prompts = list(frame["prompt"])
    frame["split"] = assign_splits(
        prompts, validation_fraction, salt, [group_of(p) for p in prompts] if group_of else None
    )
    frame["source"] = [labels.location(i) for i in frame["id"]]
    return frame


def write_parquet(frame: pd.DataFrame, path: Path) -> None:
    """Write to a temporary name and rename, so a reader never sees half a file."""
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def splits(path: Path | str) -> tuple[pd.DataFrame, pd.DataFrame]:
    import pandas as pd

    frame = pd.read_parquet(path)
    return frame[frame["split"] == "train"].reset_index(drop=True), frame[frame["split"] == "validation"].reset_index(
        drop=True
    )
