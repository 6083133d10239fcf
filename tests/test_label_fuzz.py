"""Property: whatever bytes or JSON a labeled file holds, the loader loads it or raises LabelFileError, nothing else."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlhf_dag.data.label_files import SCHEMAS, LabelFileError, load_labels

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=10,
)
records = st.dictionaries(
    st.sampled_from(["id", "prompt", "response", "chosen", "rejected", "quality", "extra"]),
    json_values | st.text(max_size=30),
    max_size=6,
)


def _load(data: bytes, kind: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{kind}.jsonl"
        path.write_bytes(data)
        try:
            labels = load_labels(path)
        except LabelFileError as err:
            assert str(path) in str(err)
            return
        required, optional = SCHEMAS[kind]
        for record in labels.records:
            assert set(required) <= set(record) <= set(required + optional)
            assert all(isinstance(v, str) and v.strip() for v in record.values())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=300), kind=st.sampled_from(sorted(SCHEMAS)))
def test_random_bytes_load_or_raise_our_error(data, kind):
    _load(data, kind)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(records | json_values, min_size=0, max_size=5), kind=st.sampled_from(sorted(SCHEMAS)))
def test_random_json_lines_load_or_raise_our_error(lines, kind):
    _load("\n".join(json.dumps(line) for line in lines).encode(), kind)


def test_deeply_nested_json_is_our_error_not_a_crash(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_bytes(b"[" * 30000 + b"]" * 30000 + b"\n")  # under the line cap, over the parser's recursion limit
    try:
        load_labels(path)
    except LabelFileError as err:
        assert f"{path}:1:" in str(err) and "nested too deeply" in str(err)
    else:
        raise AssertionError("a 30000-deep array is not a prompts record")
