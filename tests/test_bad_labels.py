"""Bad labeled data fails the real asset before any training, names file and line, and loses nothing."""

from __future__ import annotations

import json

import dagster as dg
import pandas as pd
import pytest

pytestmark = pytest.mark.slow

GOOD = {"id": "x1", "prompt": "What is 1 + 1?", "chosen": "1 + 1 = 2.", "rejected": "1 + 1 = 3."}

# (name, bytes of the bad line, what the message must say)
BAD_LINES = [
    ("invalid json", b'{"id": "x1", "prompt": ', "invalid JSON"),
    ("not an object", b'["What is 1 + 1?", "2"]', "expected a JSON object"),
    ("missing field", json.dumps({k: v for k, v in GOOD.items() if k != "rejected"}).encode(), "field 'rejected': missing"),
    ("extra field", json.dumps({**GOOD, "score": "9"}).encode(), "field 'score': unknown field"),
    ("wrong type", json.dumps({**GOOD, "chosen": 2}).encode(), "field 'chosen': must be a string"),
    ("empty string", json.dumps({**GOOD, "prompt": "   "}).encode(), "field 'prompt': must not be empty"),
    ("chosen == rejected", json.dumps({**GOOD, "rejected": GOOD["chosen"]}).encode(), "field 'chosen': is identical to 'rejected'"),
    ("not utf-8", b'{"id": "x1", "prompt": "caf\xe9", "chosen": "a", "rejected": "b"}', "not valid UTF-8"),
    ("over the size cap", json.dumps({**GOOD, "chosen": "a" * 70000}).encode(), "over the 65536-byte cap"),
]


def _materialize(defs, instance, asset: str):
    job = defs.resolve_implicit_global_asset_job_def()
    return job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey(asset)], raise_on_error=False)


def _failure_message(result) -> str:
    error = result.get_step_failure_events()[0].event_specific_data.error
    messages = []
    while error is not None:
        messages.append(error.message)
        error = error.cause
    return "\n".join(messages)


@pytest.mark.parametrize("name,line,expected", BAD_LINES, ids=[b[0] for b in BAD_LINES])
def test_a_bad_line_fails_comparison_dataset_naming_file_and_line(smoke_run, isolated_env, name, line, expected):
    defs, instance, _ = smoke_run
    path = isolated_env / "labels" / "comparisons.jsonl"
    original = path.read_bytes()
    before = instance.get_latest_materialization_event(dg.AssetKey("comparison_dataset"))
    n_lines = original.count(b"\n")
    path.write_bytes(original + line + b"\n")
    try:
        result = _materialize(defs, instance, "comparison_dataset")
    finally:
        path.write_bytes(original)
    assert not result.success
    message = _failure_message(result)
    assert f"{path}:{n_lines + 1}:" in message and expected in message, message
    after = instance.get_latest_materialization_event(dg.AssetKey("comparison_dataset"))
    assert after.run_id == before.run_id  # the previous materialization is still the current one
    handle = defs.load_asset_value("comparison_dataset", instance=instance)
    assert len(pd.read_parquet(handle.path)) == 1536


def test_an_empty_file_fails_naming_the_file(smoke_run, isolated_env):
    defs, instance, _ = smoke_run
    path = isolated_env / "labels" / "demonstrations.jsonl"
    original = path.read_bytes()
    path.write_bytes(b"")
    try:
        result = _materialize(defs, instance, "sft_dataset")
    finally:
        path.write_bytes(original)
    assert not result.success and f"{path}: no records: the file is empty" in _failure_message(result)


def test_bom_crlf_and_duplicates_are_accepted_with_a_count(smoke_run, isolated_env):
    defs, instance, _ = smoke_run
    path = isolated_env / "labels" / "demonstrations.jsonl"
    original = path.read_bytes()
    lines = original.decode().splitlines()
    path.write_bytes(("\ufeff" + "\r\n".join(lines + lines[:3]) + "\r\n").encode())
    try:
        result = _materialize(defs, instance, "sft_dataset")
        assert result.success
        handle = result.output_for_node("sft_dataset")
        assert handle.metrics["duplicates_dropped"] == 3
        assert handle.metrics["train_records"] + handle.metrics["validation_records"] == len(lines)
    finally:
        path.write_bytes(original)
        assert _materialize(defs, instance, "sft_dataset").success  # back to the shipped file's data version
