"""A team's own prompts and comparisons, outside the synthetic task family, with no judge: every step runs, the
evaluation reports what it can measure without one (no NaN), and the registry still names a champion."""

from __future__ import annotations

import json
import math

import dagster as dg
import pytest

pytestmark = pytest.mark.slow

THINGS = [
    "violin",
    "lighthouse",
    "teapot",
    "glacier",
    "bicycle",
    "cactus",
    "telescope",
    "harbor",
    "lantern",
    "meadow",
    "compass",
    "volcano",
    "piano",
    "canyon",
    "kettle",
    "orchard",
    "satellite",
    "windmill",
    "anchor",
    "library",
    "umbrella",
    "waterfall",
    "typewriter",
    "beehive",
]
HELD_OUT = ["accordion", "avalanche", "chandelier", "lagoon", "sundial", "trumpet", "igloo", "quarry"]


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def team_labels(folder):
    """Four label files of a team's own: describe a thing in one sentence. No prompt is of a synthetic task kind."""
    folder.mkdir(parents=True)
    prompt = "Describe a {} in one sentence.".format
    good = "A {} is a thing people notice, and this one is described in one plain sentence.".format
    asks = ["Describe a {} in one sentence.", "Tell me briefly what a {} is.", "What is a {}? One sentence, please."]
    _write(
        folder / "demonstrations.jsonl",
        [
            {"id": f"d{i}-{j}", "prompt": ask.format(t), "response": good(t)}
            for i, t in enumerate(THINGS)
            for j, ask in enumerate(asks)
        ],
    )
    _write(
        folder / "comparisons.jsonl",
        [
            {"id": f"c{i}-{j}", "prompt": prompt(t), "chosen": good(t), "rejected": bad}
            for i, t in enumerate(THINGS)
            for j, bad in enumerate(["I do not know.", "no no no no no no"])
        ],
    )
    _write(folder / "prompts.jsonl", [{"id": f"p{i}", "prompt": prompt(t)} for i, t in enumerate(THINGS)])
    _write(folder / "eval_prompts.jsonl", [{"id": f"e{i}", "prompt": prompt(t)} for i, t in enumerate(HELD_OUT)])
    return folder


def test_a_teams_own_prompts_with_no_judge_go_through_every_step_to_a_champion(isolated_env, monkeypatch):
    from conftest import own_home

    from rlhf_dag.definitions import build_definitions

    root = isolated_env / "team_data"
    monkeypatch.setenv("RLHF_DAG_LABELS_DIR", str(team_labels(root / "labels")))
    monkeypatch.setenv("RLHF_DAG_JUDGE", "none")
    with own_home(root):
        defs = build_definitions()
        instance = dg.DagsterInstance.get()
        defs.resolve_job_def("observe_labels").execute_in_process(instance=instance)
        # a few more SFT epochs than smoke's one, so that SFT beats the base model on these short demonstrations (its gate)
        result = defs.resolve_job_def("rlhf_graph").execute_in_process(
            instance=instance, run_config={"ops": {"sft_model": {"config": {"epochs": 4.0}}}}
        )
    assert result.success
    evaluation = result.output_for_node("policy_evaluation")
    metrics = evaluation.metrics
    assert all(math.isfinite(v) for v in metrics.values() if isinstance(v, float)), {
        k: v for k, v in metrics.items() if not math.isfinite(v)
    }
    # the reward model's preference of PPO over SFT, labelled as the proxy; nothing judged, no source-prompt figures
    assert (
        0
        <= metrics["rm_win_rate_ppo_vs_sft_ci_low"]
        <= metrics["rm_win_rate_ppo_vs_sft"]
        <= metrics["rm_win_rate_ppo_vs_sft_ci_high"]
        <= 1
    )
    assert {"ppo_kl_to_sft", "ppo_response_tokens", "ppo_eos_rate", "sft_rm_mean", "ppo_rm_mean"} <= set(metrics)
    assert not any(k.startswith("win_rate_") or "gold_mean" in k or "_source_pass_" in k for k in metrics), sorted(
        metrics
    )
    assert metrics["gold_judged_samples"] == 0
    assert evaluation.tags["registry.champion"] == "yes", evaluation.tags["registry.why"]
    assert (
        "RM win rate vs SFT (the proxy; no judge)" in evaluation.tags["registry.why"]
        or "first champion" in evaluation.tags["registry.why"]
    )
    rm = result.output_for_node("reward_model").metrics
    assert not any(k.startswith("validation_accuracy_") for k in rm)  # no judge, no task kinds
    sft = result.output_for_node("sft_model").metrics
    assert "gold_mean" not in sft and math.isfinite(sft["validation_loss"])
