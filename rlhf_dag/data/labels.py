"""Reading and validating the labeled files in `assets/` (JSON Lines, one record a line).

Every error names the file, the line and the field, and says what to do, so a
reviewer can fix a labeled file the way they would fix code.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from ..artifacts import atomic_path

logger = logging.getLogger(__name__)

MAX_LINE_BYTES = 64 * 1024

# Where a human-ranked comparison came from (data/feedback.py writes them): the annotation (`ranking`, shared by
# the C(K, 2) pairs of one ranking), who ranked and when, the labeling batch, its Label Studio task, and the MLflow
# run of the policy that wrote the responses.
PROVENANCE = ("ranking", "labeler", "labeled_at", "batch", "task_id", "policy_run_id")

# file stem -> (required string fields, optional string fields)
SCHEMAS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "prompts": (("id", "prompt"), ()),
    "demonstrations": (("id", "prompt", "response"), ("quality",)),
    "comparisons": (("id", "prompt", "chosen", "rejected"), PROVENANCE),
    "eval_prompts": (("id", "prompt"), ()),
}
LABEL_FILES = tuple(SCHEMAS)


class LabelFileError(ValueError):
    """A labeled file is malformed; the message names the file, the line and the field."""

    def __init__(self, path: Path | str, line: int | None, message: str, field_name: str | None = None):
        self.path, self.line, self.field = str(path), line, field_name
        where = f"{path}:{line}" if line else f"{path}"
        what = f" field '{field_name}':" if field_name else ""
        super().__init__(f"{where}:{what} {message}")


@dataclass
class LabelFile:
    """The validated records of one labeled file, and what validation dropped."""

    path: Path
    kind: str
    records: list[dict]
    duplicates_dropped: int = 0
    warnings: list[str] = field(default_factory=list)
    lines: dict[str, int] = field(default_factory=dict)  # id -> line number, so later steps can point at a record
    sha256: str = ""  # of exactly the bytes these records were parsed from (the file is read once)


def file_sha256(path: Path | str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _check_record(path: Path, line_no: int, record: object, kind: str) -> dict:
    required, optional = SCHEMAS[kind]
    if not isinstance(record, dict):
        raise LabelFileError(path, line_no, f"expected a JSON object, got {type(record).__name__}")
    for name in required:
        if name not in record:
            raise LabelFileError(path, line_no, f"missing (a {kind} record needs {', '.join(required)})", name)
    for name, value in record.items():
        if name not in required and name not in optional:
            allowed = ", ".join(required + optional)
            raise LabelFileError(path, line_no, f"unknown field (allowed: {allowed})", name)
        if not isinstance(value, str):
            raise LabelFileError(path, line_no, f"must be a string, got {type(value).__name__}", name)
        if not value.strip():
            raise LabelFileError(path, line_no, "must not be empty or whitespace", name)
    if kind == "comparisons" and record["chosen"].strip() == record["rejected"].strip():
        raise LabelFileError(path, line_no, "is identical to 'rejected': a comparison needs two different responses", "chosen")
    return record


def load_labels(path: Path | str, kind: str | None = None) -> LabelFile:
    """Load and validate one labeled file; `kind` defaults to the file's stem (e.g. 'comparisons')."""
    path = Path(path)
    kind = kind or path.stem
    if kind not in SCHEMAS:
        raise LabelFileError(path, None, f"unknown labeled file kind '{kind}' (expected one of {', '.join(SCHEMAS)})")
    if not path.is_file():
        raise LabelFileError(path, None, "file not found (set RLHF_DAG_LABELS_DIR or run `rlhf-dag make-labels`)")
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    records: list[dict] = []
    seen: dict[tuple, int] = {}
    ids: dict[str, int] = {}
    duplicates = 0
    for line_no, raw in enumerate(data.split(b"\n"), start=1):
        raw = raw.rstrip(b"\r")
        if not raw.strip():
            continue
        if len(raw) > MAX_LINE_BYTES:
            raise LabelFileError(path, line_no, f"line is {len(raw)} bytes, over the {MAX_LINE_BYTES}-byte cap")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise LabelFileError(path, line_no, f"not valid UTF-8 (byte {err.start}); save the file as UTF-8") from None
        try:
            record = json.loads(text)
        except json.JSONDecodeError as err:
            raise LabelFileError(path, line_no, f"invalid JSON: {err.msg} at column {err.colno}") from None
        except RecursionError:
            raise LabelFileError(path, line_no, "invalid JSON: nested too deeply") from None
        record = _check_record(path, line_no, record, kind)
        content = tuple(sorted((k, v) for k, v in record.items() if k != "id"))
        if content in seen:
            duplicates += 1
            continue
        if record["id"] in ids:
            raise LabelFileError(path, line_no, f"duplicate id {record['id']!r} (first on line {ids[record['id']]})", "id")
        seen[content] = line_no
        ids[record["id"]] = line_no
        records.append(record)
    if not records:
        raise LabelFileError(path, None, "no records: the file is empty")
    result = LabelFile(path, kind, records, duplicates, lines=ids, sha256=sha)
    if duplicates:
        result.warnings.append(f"{path}: dropped {duplicates} exact duplicate record(s)")
        logger.warning(result.warnings[-1])
    return result


def leaked_prompts(training: LabelFile, eval_prompts: LabelFile) -> int:
    """How many of a training file's prompts are also evaluation prompts (which must stay held out)."""
    held_out = {r["prompt"].strip() for r in eval_prompts.records}
    return sum(r["prompt"].strip() in held_out for r in training.records)


def write_jsonl(path: Path, records: list[dict]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
