"""Reading and validating the labeled files in `assets/`: JSON Lines or Parquet, in our shape or TRL's.

A labeled file is `<kind>.jsonl` or `<kind>.parquet` (what `datasets` writes with
`to_json` / `to_parquet`). Each record is read in any of the shapes TRL's dataset
formats document, and brought to one canonical record of strings (`SCHEMAS`):

- fields as strings, or conversational: a list of `{"role", "content"}` messages
  (a prompt ends with a user turn, a response is one assistant message);
- demonstrations as `prompt` + `response` (or TRL's `completion`), or as one
  `messages` conversation ending with the assistant's answer;
- comparisons with an implicit prompt: no `prompt` field, `chosen` and `rejected`
  share it as their common beginning (HH-RLHF's `\n\nHuman: ... \n\nAssistant:`
  transcripts, or two conversations differing in their last assistant turn);
- `id` optional: without one, a record's id is a hash of its content, the same on every run.

A multi-turn prompt becomes one string (`chat.conversation_prompt`) that the chat
format renders exactly as the chat template renders the messages. Every error names
the file, the line (JSONL, from 1) or row (Parquet, from 0, as `datasets` indexes
it) and the field, and says what to do, so a reviewer can fix a labeled file the
way they would fix code.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from ..artifacts import atomic_path
from .chat import SPECIAL_TOKENS, conversation_prompt

logger = logging.getLogger(__name__)

MAX_LINE_BYTES = 64 * 1024
FORMATS = (".jsonl", ".parquet")

# Where a human-ranked comparison came from (data/feedback.py writes them): the annotation (`ranking`, shared by
# the C(K, 2) pairs of one ranking), who ranked and when, the labeling batch, its Label Studio task, and the MLflow
# run of the policy that wrote the responses.
PROVENANCE = ("ranking", "labeler", "labeled_at", "batch", "task_id", "policy_run_id")

# file stem -> (required string fields, optional string fields) of a canonical record
SCHEMAS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "prompts": (("id", "prompt"), ()),
    "demonstrations": (("id", "prompt", "response"), ("quality",)),
    "comparisons": (("id", "prompt", "chosen", "rejected"), PROVENANCE),
    "eval_prompts": (("id", "prompt"), ()),
}
LABEL_FILES = tuple(SCHEMAS)
# Fields a record may carry besides the canonical ones: TRL's names and shapes for the same content.
ALTERNATIVES = {"demonstrations": ("completion", "messages")}
HH_HUMAN, HH_ASSISTANT = "\n\nHuman:", "\n\nAssistant:"


class LabelFileError(ValueError):
    """A labeled file is malformed; the message names the file, the line (or Parquet row) and the field."""

    def __init__(
        self, path: Path | str, line: int | None, message: str, field_name: str | None = None, unit: str = "line"
    ):
        self.path, self.line, self.field = str(path), line, field_name
        where = f"{path}" if line is None else f"{path}:{line}" if unit == "line" else f"{path}:row {line}"
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
    lines: dict[str, int] = field(
        default_factory=dict
    )  # id -> line (JSONL) or row (Parquet), so later steps can point at a record
    sha256: str = ""  # of exactly the bytes these records were parsed from (the file is read once)

    def location(self, record_id: str) -> str:
        """`file:line` (JSONL) or `file:row N` (Parquet) of a record."""
        n = self.lines[record_id]
        return f"{self.path}:row {n}" if self.path.suffix == ".parquet" else f"{self.path}:{n}"


def file_sha256(path: Path | str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def label_file(directory: Path | str, kind: str) -> Path:
    """The labeled file of `kind` in `directory`: `<kind>.jsonl` or `<kind>.parquet`, whichever exists (never both)."""
    directory = Path(directory)
    found = [directory / f"{kind}{suffix}" for suffix in FORMATS if (directory / f"{kind}{suffix}").is_file()]
    if len(found) > 1:
        raise LabelFileError(
            found[0],
            None,
            f"{found[1].name} exists too: keep one file per kind, or the graph would not know which to read",
        )
    return found[0] if found else directory / f"{kind}.jsonl"


class _RecordError(ValueError):
    def __init__(self, message: str, field_name: str | None = None):
        super().__init__(message)
        self.field = field_name


def _text(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise _RecordError(
            f"must be a string, got {type(value).__name__} (a conversational field is a list of role/content messages)",
            name,
        )
    if not value.strip():
        raise _RecordError("must not be empty or whitespace", name)
    if marker := next((t for t in SPECIAL_TOKENS if t in value), None):
        raise _RecordError(
            f"contains the chat-format token {marker!r}; write a conversation as a list of messages instead", name
        )
    return value


def _messages(value: list, name: str) -> list[dict]:
    """A conversation's messages, checked: user and assistant turns alternating from a user turn."""
    if not value:
        raise _RecordError("is an empty list of messages", name)
    for i, message in enumerate(value):
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            raise _RecordError(f"message {i} must be an object with exactly 'role' and 'content'", name)
        expected = "user" if i % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise _RecordError(
                f"message {i} has role {message['role']!r}, expected {expected!r} (user and assistant turns alternate, "
                "starting with the user; the chat template has no system turn)",
                name,
            )
        _text(message["content"], f"{name}[{i}].content")
    return value


def _prompt(value: object, name: str = "prompt") -> str:
    """A request as a string, or a conversation ending with a user turn."""
    if not isinstance(value, list):
        return _text(value, name)
    messages = _messages(value, name)
    if messages[-1]["role"] != "user":
        raise _RecordError("a prompt conversation must end with a user turn", name)
    return conversation_prompt(messages)


def _response(value: object, name: str) -> str:
    """A response as a string, or as TRL's conversational completion: one assistant message."""
    if not isinstance(value, list):
        return _text(value, name)
    if (
        len(value) != 1
        or not isinstance(value[0], dict)
        or value[0].get("role") != "assistant"
        or set(value[0]) != {"role", "content"}
    ):
        raise _RecordError(
            "a conversational response must be exactly one message with role 'assistant' (and 'content')", name
        )
    return _text(value[0]["content"], f"{name}[0].content")


def _split_hh(prefix: str) -> list[dict]:
    """An HH-RLHF transcript (`\n\nHuman: a\n\nAssistant: b\n\nHuman: c`) as messages."""
    messages, rest = [], prefix
    while rest:
        role, marker, other = (
            ("user", HH_HUMAN, HH_ASSISTANT) if len(messages) % 2 == 0 else ("assistant", HH_ASSISTANT, HH_HUMAN)
        )
        if not rest.lstrip("\n").startswith(marker.strip()):
            raise _RecordError(
                f"the shared prompt of 'chosen' and 'rejected' is not an HH-RLHF transcript: expected {marker.strip()!r} turn {len(messages)}",
                "chosen",
            )
        rest = rest.lstrip("\n")[len(marker.strip()) :]
        end = rest.find(other)
        messages.append({"role": role, "content": (rest if end < 0 else rest[:end]).strip()})
        rest = "" if end < 0 else rest[end:]
    return messages


def _implicit_prompt(chosen: object, rejected: object) -> tuple[str, str, str]:
    """(prompt, chosen, rejected) of a comparison whose prompt is the shared beginning of both responses."""
    if isinstance(chosen, list) and isinstance(rejected, list):
        _messages(chosen, "chosen"), _messages(rejected, "rejected")
        if (
            len(chosen) < 2
            or chosen[:-1] != rejected[:-1]
            or len(rejected) != len(chosen)
            or chosen[-1]["role"] != "assistant"
        ):
            raise _RecordError(
                "without a 'prompt', 'chosen' and 'rejected' must be the same conversation up to a different last "
                "assistant turn (TRL's implicit prompt)",
                "chosen",
            )
        return conversation_prompt(chosen[:-1]), chosen[-1]["content"], rejected[-1]["content"]
    chosen, rejected = _text(chosen, "chosen"), _text(rejected, "rejected")
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    if HH_ASSISTANT in chosen[:shared]:
        cut = chosen[:shared].rindex(HH_ASSISTANT)
        messages = _split_hh(chosen[:cut])
        cut += len(HH_ASSISTANT)
    else:  # TRL's rule for plain strings: the shared characters, cut back to the last whole word
        cut = max(chosen.rfind(" ", 0, shared + 1), chosen.rfind("\n", 0, shared + 1))
        messages = [{"role": "user", "content": chosen[:cut]}] if cut > 0 else []
    if not messages or not messages[0]["content"].strip() or messages[-1]["role"] != "user":
        raise _RecordError(
            "has no 'prompt' and shares no prompt with 'rejected' (give a 'prompt' field, or an HH-RLHF transcript in both)",
            "prompt",
        )
    return (
        conversation_prompt(messages),
        _text(chosen[cut:].strip(), "chosen"),
        _text(rejected[cut:].strip(), "rejected"),
    )


def _canonical(record: dict, kind: str) -> dict:
    """The record in the canonical shape of its kind (strings only), its id derived from its content if absent."""
    required, optional = SCHEMAS[kind]
    allowed = ("id", *required[1:], *optional, *ALTERNATIVES.get(kind, ()))
    for name in record:
        if name not in allowed:
            raise _RecordError(f"unknown field (allowed: {', '.join(allowed)})", name)
    out: dict[str, str] = {}
    if kind == "comparisons":
        for name in ("chosen", "rejected"):
            if name not in record:
                raise _RecordError(
                    "missing (a comparisons record needs chosen and rejected, and a prompt unless both begin with it)",
                    name,
                )
        if "prompt" in record:
            out = {
                "prompt": _prompt(record["prompt"]),
                "chosen": _response(record["chosen"], "chosen"),
                "rejected": _response(record["rejected"], "rejected"),
            }
        else:
            out["prompt"], out["chosen"], out["rejected"] = _implicit_prompt(record["chosen"], record["rejected"])
        if out["chosen"].strip() == out["rejected"].strip():
            raise _RecordError("is identical to 'rejected': a comparison needs two different responses", "chosen")
    elif kind == "demonstrations":
        given = [name for name in ("response", "completion", "messages") if name in record]
        if len(given) > 1 or ("messages" in record and "prompt" in record):
            raise _RecordError(
                "give either prompt + response (or TRL's completion), or one messages conversation", given[-1]
            )
        if "messages" in record:
            if not isinstance(record["messages"], list):
                raise _RecordError(
                    f"must be a list of chat messages, got {type(record['messages']).__name__}", "messages"
                )
            messages = _messages(record["messages"], "messages")
            if len(messages) < 2 or messages[-1]["role"] != "assistant":
                raise _RecordError(
                    "a demonstration conversation must end with the assistant's answer to a user turn", "messages"
                )
            out = {"prompt": conversation_prompt(messages[:-1]), "response": messages[-1]["content"]}
        else:
            for name in ("prompt", "response"):
                if name not in record and not (name == "response" and given):
                    raise _RecordError("missing (a demonstrations record needs prompt and response, or messages)", name)
            out = {"prompt": _prompt(record["prompt"]), "response": _response(record[given[0]], given[0])}
    else:
        if "prompt" not in record:
            raise _RecordError(f"missing (a {kind} record needs prompt)", "prompt")
        out = {"prompt": _prompt(record["prompt"])}
    for name in optional:
        if name in record:
            out[name] = _text(record[name], name)
    if "id" in record:
        out = {"id": _text(record["id"], "id"), **out}
    else:
        digest = hashlib.sha256(json.dumps(out, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]
        out = {"id": f"{kind[0]}-{digest}", **out}
    return out


def _jsonl_records(path: Path, data: bytes):
    """(line number, parsed record) of each non-blank line."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
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
            yield line_no, json.loads(text)
        except json.JSONDecodeError as err:
            raise LabelFileError(path, line_no, f"invalid JSON: {err.msg} at column {err.colno}") from None
        except RecursionError:
            raise LabelFileError(path, line_no, "invalid JSON: nested too deeply") from None


def _parquet_records(path: Path, data: bytes):
    """(row number from 0, record) of each row; a null cell is an absent field (a column covers every row)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(pa.BufferReader(data)).to_pylist()
    except (pa.ArrowException, OSError) as err:
        raise LabelFileError(
            path, None, f"not a readable Parquet file ({err}); write it with pandas/datasets `to_parquet`"
        ) from None
    for row_no, row in enumerate(rows):
        record = {k: v for k, v in row.items() if v is not None}
        if len(json.dumps(record, default=str).encode()) > MAX_LINE_BYTES:
            raise LabelFileError(path, row_no, f"row is over the {MAX_LINE_BYTES}-byte cap", unit="row")
        yield row_no, record


def load_labels(path: Path | str, kind: str | None = None) -> LabelFile:
    """Load and validate one labeled file (JSONL or Parquet); `kind` defaults to the file's stem (e.g. 'comparisons')."""
    path = Path(path)
    kind = kind or path.stem
    if kind not in SCHEMAS:
        raise LabelFileError(path, None, f"unknown labeled file kind '{kind}' (expected one of {', '.join(SCHEMAS)})")
    if not path.is_file():
        raise LabelFileError(
            path,
            None,
            f"file not found ({kind}.jsonl or {kind}.parquet; set RLHF_DAG_LABELS_DIR or run `rlhf-dag make-labels`)",
        )
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    parquet = path.suffix == ".parquet"
    unit = "row" if parquet else "line"
    records: list[dict] = []
    seen: set[tuple] = set()
    ids: dict[str, int] = {}
    duplicates = 0
    for number, raw in (_parquet_records if parquet else _jsonl_records)(path, data):
        if not isinstance(raw, dict):
            raise LabelFileError(path, number, f"expected a JSON object, got {type(raw).__name__}", unit=unit)
        try:
            record = _canonical(raw, kind)
        except _RecordError as err:
            raise LabelFileError(path, number, str(err), err.field, unit=unit) from None
        content = tuple(sorted((k, v) for k, v in record.items() if k != "id"))
        if content in seen:
            duplicates += 1
            continue
        if record["id"] in ids:
            first = f"{unit} {ids[record['id']]}"
            raise LabelFileError(path, number, f"duplicate id {record['id']!r} (first on {first})", "id", unit=unit)
        seen.add(content)
        ids[record["id"]] = number
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
