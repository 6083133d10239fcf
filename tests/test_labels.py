"""load_labels: what a reviewer of a labeled file sees when it is right, and when it is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlhf_dag.config import resolve
from rlhf_dag.data.corpus import load_corpus
from rlhf_dag.data.datasets import build_dataset
from rlhf_dag.data.domain import SOURCE_PROMPTS
from rlhf_dag.data.label_files import (
    LABEL_FILES,
    MAX_LINE_BYTES,
    LabelFile,
    LabelFileError,
    leaked_prompts,
    load_labels,
)
from rlhf_dag.training.overlong import count_overlong
from rlhf_dag.training.pretrain import train_tokenizer

ASSETS = Path(__file__).resolve().parent.parent / "assets"

GOOD = {"id": "x1", "prompt": "What is 1 + 1?", "chosen": "1 + 1 = 2.", "rejected": "1 + 1 = 3."}
OTHER = {"id": "x2", "prompt": "What is 2 + 3?", "chosen": "5.", "rejected": "6."}


def line(record: dict) -> bytes:
    return json.dumps(record).encode()


def write(path: Path, *lines: bytes, newline: bytes = b"\n") -> Path:
    path.write_bytes(b"".join(raw + newline for raw in lines))
    return path


def test_valid_comparisons_file_loads(tmp_path):
    labels = load_labels(write(tmp_path / "comparisons.jsonl", line(GOOD), b"", line(OTHER)))
    assert labels.kind == "comparisons"  # from the file name
    assert labels.lines == {"x1": 1, "x2": 3}
    assert labels.records == [GOOD, OTHER]  # the blank line is skipped
    assert labels.duplicates_dropped == 0 and labels.warnings == []


def test_bom_and_crlf_are_accepted(tmp_path):
    path = tmp_path / "comparisons.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + line(GOOD) + b"\r\n" + line(OTHER) + b"\r\n")
    assert load_labels(path).records == [GOOD, OTHER]


def test_crlf_file_reports_the_right_line(tmp_path):
    path = tmp_path / "comparisons.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + line(GOOD) + b"\r\n" + line(OTHER) + b"\r\n" + b"{oops\r\n")
    with pytest.raises(LabelFileError, match="invalid JSON") as err:
        load_labels(path)
    assert f"{path}:3:" in str(err.value)


def test_demonstration_quality_is_optional_but_prompts_files_reject_it(tmp_path):
    demo = {"id": "d1", "prompt": "What is 1 + 1?", "response": "2.", "quality": "ideal"}
    assert load_labels(write(tmp_path / "demonstrations.jsonl", line(demo))).records == [demo]
    with pytest.raises(LabelFileError, match="field 'quality': unknown field"):
        load_labels(write(tmp_path / "prompts.jsonl", line({"id": "p1", "prompt": "Hi", "quality": "ideal"})))


# (case, bytes of line 2, field named in the message or None, what the message says)
BAD_LINES = [
    ("invalid json", b'{"id": "x3", "prompt": ', None, "invalid JSON"),
    ("not an object", b'["What is 1 + 1?", "2"]', None, "expected a JSON object, got list"),
    ("missing field", line({k: v for k, v in GOOD.items() if k != "rejected"}), "rejected", "missing"),
    ("unknown field", line({**GOOD, "id": "x3", "score": "9"}), "score", "unknown field"),
    ("number", line({**GOOD, "id": "x3", "chosen": 2}), "chosen", "must be a string, got int"),
    ("null", line({**GOOD, "id": "x3", "prompt": None}), "prompt", "must be a string, got NoneType"),
    ("empty string", line({**GOOD, "id": "x3", "rejected": ""}), "rejected", "must not be empty or whitespace"),
    ("whitespace string", line({**GOOD, "id": "x3", "prompt": " \t\n"}), "prompt", "must not be empty or whitespace"),
    (
        "chosen == rejected",
        line({**GOOD, "id": "x3", "rejected": " 1 + 1 = 2. "}),
        "chosen",
        "is identical to 'rejected'",
    ),
    ("not utf-8", b'{"id": "x3", "prompt": "caf\xe9", "chosen": "a", "rejected": "b"}', None, "not valid UTF-8"),
    (
        "over the size cap",
        line({**GOOD, "id": "x3", "chosen": "a" * MAX_LINE_BYTES}),
        None,
        f"over the {MAX_LINE_BYTES}-byte cap",
    ),
    ("duplicate id", line({**OTHER, "id": "x1"}), "id", "duplicate id 'x1' (first on line 1)"),
]


@pytest.mark.parametrize("case,bad,field,expected", BAD_LINES, ids=[b[0] for b in BAD_LINES])
def test_bad_line_names_file_line_and_field(tmp_path, case, bad, field, expected):
    path = write(tmp_path / "comparisons.jsonl", line(GOOD), bad, line(OTHER))
    with pytest.raises(LabelFileError) as err:
        load_labels(path)
    message = str(err.value)
    assert message.startswith(f"{path}:2:"), message
    assert expected in message, message
    assert err.value.path == str(path) and err.value.line == 2 and err.value.field == field
    if field:
        assert f"field '{field}':" in message


def test_line_of_exactly_the_cap_is_accepted(tmp_path):
    stub = line({**GOOD, "chosen": ""})
    record = {**GOOD, "chosen": "a" * (MAX_LINE_BYTES - len(stub))}
    assert len(line(record)) == MAX_LINE_BYTES
    assert load_labels(write(tmp_path / "comparisons.jsonl", line(record))).records == [record]


@pytest.mark.parametrize("content", [b"", b"\n\n  \r\n"], ids=["empty", "blank lines"])
def test_file_without_records_is_rejected(tmp_path, content):
    path = tmp_path / "comparisons.jsonl"
    path.write_bytes(content)
    with pytest.raises(LabelFileError, match="no records: the file is empty") as err:
        load_labels(path)
    assert str(err.value).startswith(f"{path}:")


def test_missing_file_and_unknown_kind(tmp_path):
    with pytest.raises(LabelFileError, match="file not found"):
        load_labels(tmp_path / "comparisons.jsonl")
    path = write(tmp_path / "ratings.jsonl", line(GOOD))
    with pytest.raises(LabelFileError, match="unknown labeled file kind 'ratings'"):
        load_labels(path)
    assert load_labels(path, kind="comparisons").records == [GOOD]


def test_exact_duplicates_are_dropped_and_counted(tmp_path):
    # lines 1, 2, 4 are the same record; line 5 is the same content under another id
    path = write(
        tmp_path / "comparisons.jsonl", line(GOOD), line(GOOD), line(OTHER), line(GOOD), line({**GOOD, "id": "x9"})
    )
    labels = load_labels(path)
    assert labels.records == [GOOD, OTHER]
    assert labels.duplicates_dropped == 3
    assert labels.warnings == [f"{path}: dropped 3 exact duplicate record(s)"]


def test_leaked_prompts_counts_training_prompts_that_are_eval_prompts(tmp_path):
    eval_prompts = LabelFile(
        tmp_path / "eval_prompts.jsonl",
        "eval_prompts",
        [{"id": "e0", "prompt": "What is 1 + 1?"}, {"id": "e1", "prompt": "What is 7 + 7?"}],
    )
    training = LabelFile(
        tmp_path / "prompts.jsonl",
        "prompts",
        [
            {"id": "p0", "prompt": "What is 1 + 1?"},  # leaked
            {"id": "p1", "prompt": "  What is 7 + 7?\n"},  # leaked (whitespace does not hide it)
            {"id": "p2", "prompt": "What is 3 + 3?"},
        ],
    )
    assert leaked_prompts(training, eval_prompts) == 2
    assert leaked_prompts(LabelFile(training.path, "prompts", training.records[2:]), eval_prompts) == 0


# ---------------------------------------------------------------- the shipped files


@pytest.fixture(scope="session")
def shipped() -> dict[str, LabelFile]:
    return {name: load_labels(ASSETS / f"{name}.jsonl") for name in LABEL_FILES}


def test_shipped_files_load_without_duplicates(shipped):
    for name, labels in shipped.items():
        assert labels.records, name
        assert labels.duplicates_dropped == 0, name
        assert labels.warnings == [], name


def test_no_eval_prompt_leaks_into_a_training_file(shipped):
    for name in ("prompts", "demonstrations", "comparisons"):
        assert leaked_prompts(shipped[name], shipped["eval_prompts"]) == 0, name


def test_the_source_prompts_are_eval_prompts(shipped):
    eval_prompts = {r["prompt"] for r in shipped["eval_prompts"].records}
    assert set(SOURCE_PROMPTS) <= eval_prompts


def test_shipped_files_fit_the_default_context(shipped):
    """The default run rejects no shipped record: each fits max_length under the tokenizer the default profile trains."""
    corpus, base = resolve("pretraining_corpus", profile="default"), resolve("base_model", profile="default")
    tokenizer = train_tokenizer(load_corpus(corpus.source, corpus.n_documents, corpus.seed), base.vocab_size)
    for name, responses, step in (
        ("demonstrations", ("response",), "sft_model"),
        ("comparisons", ("chosen", "rejected"), "reward_model"),
    ):
        cfg = resolve(step, profile="default")
        frame = build_dataset(shipped[name], 0.1, "rlhf-dag")
        assert (
            count_overlong(tokenizer, frame, responses, cfg.max_length, cfg.overlong, step) == 0
        )  # 'reject' raises otherwise
