"""Lineage as a user drives it: editing a labeled file makes exactly its downstream stale, and retrain refreshes only that."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import dagster as dg
import pytest

from rlhf_dag.pipeline.lineage import asset_statuses, observe_labels, retrain

pytestmark = pytest.mark.slow

ALL = {
    "pretraining_corpus",
    "base_model",
    "sft_dataset",
    "sft_model",
    "comparison_dataset",
    "reward_model",
    "ppo_policy",
    "policy_evaluation",
}


def _stale(defs, instance) -> dict[str, list[str]]:
    observe_labels(defs, instance)
    # the alternatives to PPO, never asked for in the smoke run, are missing and stay so
    return {
        s.key: s.causes
        for s in asset_statuses(defs, instance)
        if s.status != "FRESH" and not (s.optional and s.status == "MISSING")
    }


def _append(path: Path, record: dict) -> bytes:
    original = path.read_bytes()
    path.write_bytes(original + (json.dumps(record) + "\n").encode())
    return original


def test_fresh_after_a_full_run(smoke_run):
    defs, instance, _ = smoke_run
    assert _stale(defs, instance) == {}


def test_editing_demonstrations_leaves_base_model_fresh(smoke_run, isolated_env):
    defs, instance, _ = smoke_run
    path = isolated_env / "labels" / "demonstrations.jsonl"
    original = _append(path, {"id": "new-demo", "prompt": "What is 1 + 1?", "response": "1 + 1 = 2."})
    try:
        stale = _stale(defs, instance)
        assert set(stale) == {"sft_dataset", "sft_model", "reward_model", "ppo_policy", "policy_evaluation"}
        assert any("labels/demonstrations" in c for c in stale["sft_dataset"])
    finally:
        path.write_bytes(original)
    assert _stale(defs, instance) == {}  # the file's old bytes are the old data version again


def test_editing_comparisons_stales_exactly_four_assets_and_retrain_refreshes_them(smoke_run, isolated_env):
    defs, instance, _ = smoke_run
    path = isolated_env / "labels" / "comparisons.jsonl"
    original = _append(
        path, {"id": "new-pair", "prompt": "What is 1 + 1?", "chosen": "1 + 1 = 2.", "rejected": "1 + 1 = 3."}
    )
    try:
        assert set(_stale(defs, instance)) == {"comparison_dataset", "reward_model", "ppo_policy", "policy_evaluation"}

        plan, _ = retrain(defs, instance, dry_run=True)
        assert set(plan) == {"comparison_dataset", "reward_model", "ppo_policy", "policy_evaluation"}
        before = {k: instance.get_latest_materialization_event(dg.AssetKey(k)).run_id for k in ALL}
        evaluated_before = defs.load_asset_value("policy_evaluation", instance=instance).lineage
        plan, result = retrain(defs, instance)
        assert result.success
        materialized = {
            e.event_specific_data.materialization.asset_key.to_user_string()
            for e in result.get_asset_materialization_events()
        }
        assert materialized == {"comparison_dataset", "reward_model", "ppo_policy", "policy_evaluation"}
        after = {k: instance.get_latest_materialization_event(dg.AssetKey(k)).run_id for k in ALL}
        assert {k for k in ALL if after[k] != before[k]} == materialized
        assert _stale(defs, instance) == {}
        # the evaluation sampled only the new PPO policy: base and SFT are the same models on the same prompts (the
        # base model's folder, unless a test re-materialized it since: the same data version, another folder)
        metadata = instance.get_latest_materialization_event(
            dg.AssetKey("policy_evaluation")
        ).asset_materialization.metadata
        evaluated = defs.load_asset_value("policy_evaluation", instance=instance).lineage
        same = [
            name
            for name, asset in (("base", "base_model"), ("sft", "sft_model"))
            if evaluated[asset] == evaluated_before[asset]
        ]
        # (another test may have re-materialized base_model or sft_model: the same data version in a new folder)
        assert metadata["samples_reused"].value == (", ".join(same) or "none")
        assert metadata["source_prompt_samples_reused"].value == (", ".join(same) or "none")
        # the retrained reward model was trained on the edited file
        dataset = result.output_for_node("comparison_dataset").metrics
        assert dataset["train_records"] + dataset["validation_records"] == original.count(b"\n") + 1
    finally:
        path.write_bytes(original)
        # back to the shipped file's versions, for the tests after this one
        plan, restored = retrain(defs, instance)
        assert (
            set(plan) == {"comparison_dataset", "reward_model", "ppo_policy", "policy_evaluation"} and restored.success
        )
    assert _stale(defs, instance) == {}


def test_a_config_change_makes_its_asset_stale(smoke_run, monkeypatch):
    _, instance, _ = smoke_run
    import rlhf_dag.definitions
    import rlhf_dag.pipeline.assets

    monkeypatch.setenv("RLHF_DAG_PROFILE", "default")  # every config field the profiles differ in changes
    try:
        importlib.reload(rlhf_dag.pipeline.assets)
        defs = rlhf_dag.definitions.build_definitions()
        stale = {s.key: s.causes for s in asset_statuses(defs, instance) if s.status == "STALE"}
        assert "reward_model" in stale and any("code version" in c for c in stale["reward_model"])
        # comparison_dataset's config is the same in both profiles: it stays fresh
        assert "comparison_dataset" not in stale
    finally:
        monkeypatch.setenv("RLHF_DAG_PROFILE", "smoke")
        importlib.reload(rlhf_dag.pipeline.assets)
