"""Bad labeled data fails the real asset before any training, names file and line, and loses nothing."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from rlhf_dag.config import artifacts_dir
from rlhf_dag.training.models import load_causal_lm
from rlhf_dag.training.overlong import fit_responses, sequence_tokens

pytestmark = pytest.mark.slow

GOOD = {"id": "x1", "prompt": "What is 1 + 1?", "chosen": "1 + 1 = 2.", "rejected": "1 + 1 = 3."}

# (name, bytes of the bad line, what the message must say)
BAD_LINES = [
    ("invalid json", b'{"id": "x1", "prompt": ', "invalid JSON"),
    ("not an object", b'["What is 1 + 1?", "2"]', "expected a JSON object"),
    (
        "missing field",
        json.dumps({k: v for k, v in GOOD.items() if k != "rejected"}).encode(),
        "field 'rejected': missing",
    ),
    ("extra field", json.dumps({**GOOD, "score": "9"}).encode(), "field 'score': unknown field"),
    ("wrong type", json.dumps({**GOOD, "chosen": 2}).encode(), "field 'chosen': must be a string"),
    ("empty string", json.dumps({**GOOD, "prompt": "   "}).encode(), "field 'prompt': must not be empty"),
    (
        "chosen == rejected",
        json.dumps({**GOOD, "rejected": GOOD["chosen"]}).encode(),
        "field 'chosen': is identical to 'rejected'",
    ),
    ("not utf-8", b'{"id": "x1", "prompt": "caf\xe9", "chosen": "a", "rejected": "b"}', "not valid UTF-8"),
    ("over the size cap", json.dumps({**GOOD, "chosen": "a" * 70000}).encode(), "over the 65536-byte cap"),
]


def _materialize(defs, instance, *assets: str, run_config: dict | None = None):
    job = defs.resolve_implicit_global_asset_job_def()
    return job.execute_in_process(
        instance=instance, asset_selection=[dg.AssetKey(a) for a in assets], run_config=run_config, raise_on_error=False
    )


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
    assert len(pd.read_parquet(handle.path)) == n_lines  # built from the file as it was, without the bad line


@pytest.mark.parametrize("asset,labels", [("ppo_policy", "prompts"), ("policy_evaluation", "eval_prompts")])
def test_a_bad_prompt_file_fails_its_model_before_loading_anything(smoke_run, isolated_env, asset, labels):
    """The prompt files have no dataset asset: the model asset that reads one validates it first."""
    defs, instance, _ = smoke_run
    path = isolated_env / "labels" / f"{labels}.jsonl"
    original = path.read_bytes()
    before = instance.get_latest_materialization_event(dg.AssetKey(asset))
    path.write_bytes(original + b'{"id": "bad-prompt"}\n')
    try:
        result = _materialize(defs, instance, asset)
    finally:
        path.write_bytes(original)
    assert not result.success
    message = _failure_message(result)
    line = original.count(b"\n") + 1
    assert f"{path}:{line}: field 'prompt': missing" in message, message
    assert instance.get_latest_materialization_event(dg.AssetKey(asset)).run_id == before.run_id
    assert not (artifacts_dir() / asset / result.run_id).exists()


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


def _append(path: Path, records: list[dict]) -> int:
    """Append records to a labeled file; return the line number of the first."""
    original = path.read_bytes()
    path.write_bytes(original + b"".join(json.dumps(r).encode() + b"\n" for r in records))
    return original.count(b"\n") + 1


LONG = " ".join(["and then the story went on"] * 80)

# (model asset, its dataset asset, labeled file, response field, an overlong record)
OVERLONG = [
    (
        "sft_model",
        "sft_dataset",
        "demonstrations",
        "response",
        {"id": "long1", "prompt": "What is 1 + 1?", "response": LONG},
    ),
    (
        "reward_model",
        "comparison_dataset",
        "comparisons",
        "rejected",
        {"id": "long1", "prompt": "What is 1 + 1?", "chosen": "1 + 1 = 2.", "rejected": LONG},
    ),
]


@pytest.mark.parametrize("model,dataset,labels,field,record", OVERLONG, ids=[c[0] for c in OVERLONG])
def test_an_overlong_record_fails_the_model_naming_file_line_and_length(
    smoke_run, isolated_env, model, dataset, labels, field, record
):
    defs, instance, _ = smoke_run
    path = isolated_env / "labels" / f"{labels}.jsonl"
    original = path.read_bytes()
    before = instance.get_latest_materialization_event(dg.AssetKey(model))
    line = _append(path, [record])
    # 'reject' (the smoke profile truncates), with room for every shipped record: only the new one is too long
    run_config = {"ops": {model: {"config": {"overlong": "reject", "max_length": 400}}}}
    try:
        result = _materialize(defs, instance, dataset, model, run_config=run_config)
    finally:
        path.write_bytes(original)
        assert _materialize(defs, instance, dataset).success  # back to the shipped file's data version
    assert not result.success
    message = _failure_message(result)
    assert f"{path}:{line}: record 'long1': prompt + {field} is " in message, message
    assert (
        f"tokens, over {model}'s max_length of 400; shorten it, or set {model}'s max_length to at least" in message
    ), message
    assert instance.get_latest_materialization_event(dg.AssetKey(model)).run_id == before.run_id
    assert not (artifacts_dir() / model / result.run_id).exists()  # it failed before training, so nothing was saved
    previous = defs.load_asset_value(model, instance=instance)
    assert (Path(previous.path) / "model.safetensors").is_file()


def test_overlong_records_are_cut_and_counted_under_truncate(smoke_run):
    """The smoke profile sets overlong: truncate, since its 400-token vocabulary makes some shipped records too long."""
    defs, instance, result = smoke_run
    warnings = [e.user_message for e in instance.all_logs(result.run_id) if e.level == logging.WARNING]
    for model in ("sft_model", "reward_model"):
        count = result.asset_materializations_for_node(model)[0].metadata["overlong_records"].value
        assert count > 0
        assert any(f"{model}: {int(count)} of " in w and "longer than max_length 128 tokens" in w for w in warnings), (
            warnings
        )
    # The RM's cut pairs, with the EOS that TRL appends, fit max_length exactly and keep each response's start: TRL drops none.
    _, tokenizer = load_causal_lm(result.output_for_node("sft_model").path)
    comparisons = pd.read_parquet(result.output_for_node("comparison_dataset").path)
    cut = fit_responses(tokenizer, comparisons, ("chosen", "rejected"), 128)
    for column in ("chosen", "rejected"):
        assert max(sequence_tokens(tokenizer, cut["prompt"], cut[column])) == 128
        assert all(full.startswith(part) for full, part in zip(comparisons[column], cut[column]))
        assert (cut[column] != comparisons[column]).any()


def _held_out_check(defs, instance):
    """Run only the eval_prompts_held_out check (no asset materializes) and return its evaluation."""
    job = defs.resolve_implicit_global_asset_job_def()
    key = dg.AssetCheckKey(dg.AssetKey("policy_evaluation"), "eval_prompts_held_out")
    result = job.get_subset(asset_selection=set(), asset_check_selection={key}).execute_in_process(
        instance=instance, raise_on_error=False
    )
    assert result.success and not result.get_asset_materialization_events()
    (evaluation,) = result.get_asset_check_evaluations()
    return evaluation


def test_an_eval_prompt_in_a_training_file_warns_with_the_count(smoke_run, isolated_env):
    defs, instance, _ = smoke_run
    path = isolated_env / "labels" / "demonstrations.jsonl"
    eval_prompts = [
        json.loads(raw)["prompt"]
        for raw in (isolated_env / "labels" / "eval_prompts.jsonl").read_text().splitlines()[:2]
    ]
    original = path.read_bytes()
    _append(path, [{"id": f"leak{i}", "prompt": p, "response": "An answer."} for i, p in enumerate(eval_prompts)])
    try:
        leaked = _held_out_check(defs, instance)
    finally:
        path.write_bytes(original)
    assert not leaked.passed and leaked.severity == dg.AssetCheckSeverity.WARN
    assert (
        leaked.metadata["eval_prompts_leaked"].value == 2 and leaked.metadata["leaked_into_demonstrations"].value == 2
    )
    assert (
        "2 in demonstrations.jsonl" in leaked.description and "evaluation is no longer held out" in leaked.description
    )
    restored = _held_out_check(defs, instance)
    assert restored.passed and restored.metadata["eval_prompts_leaked"].value == 0
