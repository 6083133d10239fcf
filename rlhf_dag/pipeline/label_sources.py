"""`labels/*`: observable source assets for the human-feedback files in RLHF_DAG_LABELS_DIR.

Each file's data version is the sha256 of its bytes, so editing one file makes
exactly the assets downstream of it stale.
"""

from __future__ import annotations

import dagster as dg

from ..config import labels_dir
from ..data.label_files import LABEL_FILES, file_sha256, label_file
from .automation import label_observation

DESCRIPTIONS = {
    "prompts": "Prompts the PPO policy is trained on (one request a line).",
    "demonstrations": "<prompt, ideal response> pairs written by demonstrators, for SFT.",
    "comparisons": "Pairs of machine-written responses to a prompt, ranked by labelers (chosen > rejected).",
    "eval_prompts": "Held-out prompts for policy evaluation (never in a training file).",
}


def _label_source(name: str):
    @dg.observable_source_asset(
        key=["labels", name],
        group_name="labels",
        automation_condition=label_observation,
        description=f"`{name}.jsonl` or `{name}.parquet` in RLHF_DAG_LABELS_DIR. {DESCRIPTIONS[name]} Data version: sha256 of the file.",
    )
    def _observe(context) -> dg.DataVersion:
        path = label_file(labels_dir(), name)
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} (or {path.stem}.parquet) does not exist: run `rlhf-dag make-labels` or set RLHF_DAG_LABELS_DIR"
            )
        return dg.DataVersion(file_sha256(path))

    return _observe


LABEL_SOURCES = [_label_source(name) for name in LABEL_FILES]
