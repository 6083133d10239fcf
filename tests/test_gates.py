"""Every blocking gate fails on a model it must refuse, and a failed gate stops everything downstream in the run, saying why."""

from __future__ import annotations

import math

import dagster as dg
import pytest

from rlhf_dag.artifacts import ArtifactHandle
from rlhf_dag.pipeline import checks
from rlhf_dag.pipeline.resources import QualityGates

GATES = QualityGates(accuracy_floor=0.75, kl_budget=12.0, eos_rate_floor=0.8)

# (id, check, asset, metrics it must pass, metrics it must refuse, what the refusal says)
CASES = [
    (
        "base_model_learned",
        "base_model_learned",
        "base_model",
        {"initial_loss": 6.9, "final_loss": 2.5},
        {"initial_loss": 6.9, "final_loss": 6.9},
        "held-out corpus loss did not go down (6.900 -> 6.900)",
    ),
    (
        "base_model_learned-nan",
        "base_model_learned",
        "base_model",
        {"initial_loss": 6.9, "final_loss": 2.5},
        {"initial_loss": 6.9, "final_loss": math.nan},
        "held-out corpus loss did not go down (6.900 -> nan)",
    ),
    (
        "sft_beats_base",
        "sft_beats_base",
        "sft_model",
        {"validation_loss": 0.3, "base_validation_loss": 4.2},
        {"validation_loss": 4.2, "base_validation_loss": 4.2},
        "SFT validation loss 4.200 is not below the base model's 4.200",
    ),
    (
        "reward_model_accuracy",
        "reward_model_accuracy",
        "reward_model",
        {"validation_accuracy": 0.75},
        {"validation_accuracy": 0.74},
        "held-out pairwise accuracy 0.740 is below the floor 0.75",
    ),
    (
        "ppo_within_kl_budget",
        "ppo_within_kl_budget",
        "ppo_policy",
        {"final_kl": 12.0},
        {"final_kl": 12.1},
        "mean sequence KL 12.10 exceeds the budget 12.0",
    ),
    (
        "ppo_emits_eos",
        "ppo_emits_eos",
        "ppo_policy",
        {"final_eos_rate": 0.8},
        {"final_eos_rate": 0.79},
        "only 79% of rollouts end with EOS (floor 80%)",
    ),
    (
        "ppo_finite-inf",
        "ppo_finite",
        "ppo_policy",
        {"final_kl": 1.0, "finite": 1.0},
        {"final_kl": math.inf, "finite": 1.0},
        "PPO statistics contain NaN or inf",
    ),
    (
        "ppo_finite-flag",
        "ppo_finite",
        "ppo_policy",
        {"final_kl": 1.0, "finite": 1.0},
        {"final_kl": 1.0, "finite": 0.0},
        "PPO statistics contain NaN or inf",
    ),
    (
        "dpo_within_kl_budget",
        "dpo_within_kl_budget",
        "dpo_policy",
        {"final_kl": 12.0},
        {"final_kl": 12.1},
        "exceeds the budget 12.0; raise beta",
    ),
    (
        "dpo_emits_eos",
        "dpo_emits_eos",
        "dpo_policy",
        {"final_eos_rate": 0.8},
        {"final_eos_rate": 0.79},
        "only 79% of its samples end with EOS (floor 80%)",
    ),
    (
        "grpo_within_kl_budget",
        "grpo_within_kl_budget",
        "grpo_policy",
        {"final_kl": 12.0},
        {"final_kl": 12.1},
        "exceeds the budget 12.0; raise beta",
    ),
    (
        "grpo_emits_eos",
        "grpo_emits_eos",
        "grpo_policy",
        {"final_eos_rate": 0.8},
        {"final_eos_rate": 0.79},
        "only 79% of its samples end with EOS",
    ),
    (
        "grpo_finite",
        "grpo_finite",
        "grpo_policy",
        {"final_kl": 1.0, "finite": 1.0},
        {"final_kl": math.nan, "finite": 1.0},
        "GRPO statistics contain NaN or inf",
    ),
    (
        "rloo_within_kl_budget",
        "rloo_within_kl_budget",
        "rloo_policy",
        {"final_kl": 12.0},
        {"final_kl": 12.1},
        "exceeds the budget 12.0; raise beta",
    ),
    (
        "rloo_emits_eos",
        "rloo_emits_eos",
        "rloo_policy",
        {"final_eos_rate": 0.8},
        {"final_eos_rate": 0.79},
        "only 79% of its samples end with EOS",
    ),
    (
        "rloo_finite",
        "rloo_finite",
        "rloo_policy",
        {"final_kl": 1.0, "finite": 1.0},
        {"final_kl": 1.0, "finite": 0.0},
        "RLOO statistics contain NaN or inf",
    ),
    (
        "dpo_finite",
        "dpo_finite",
        "dpo_policy",
        {"final_kl": 1.0, "finite": 1.0},
        {"final_kl": math.inf, "finite": 1.0},
        "DPO statistics contain NaN or inf",
    ),
]


def _evaluate(check_name: str, asset: str, metrics: dict) -> dg.AssetCheckResult:
    check = checks.CHECKS_BY_NAME[check_name]
    handle = ArtifactHandle(asset, "/not/read", "hash", metrics=metrics)
    resources = {"gates": GATES} if "gates" in check.required_resource_keys else {}
    return check(handle, **resources)


@pytest.mark.parametrize("check_name,asset,good,bad,message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_gate_passes_at_its_threshold_and_refuses_past_it(check_name, asset, good, bad, message):
    """The check functions themselves, on hand-written handles (a real PPO run raises before a NaN could reach ppo_finite)."""
    passed = _evaluate(check_name, asset, good)
    assert passed.passed and passed.description is None
    refused = _evaluate(check_name, asset, bad)
    assert not refused.passed and message in refused.description, refused.description


# (accuracy_floor, kl_budget, eos_rate_floor) per profile: GateConfig's defaults, and smoke's PROFILES["smoke"]["gates"]
PROFILE_THRESHOLDS = {"default": (0.75, 12.0, 0.8), "smoke": (0.0, 1e6, 0.0), "gpu": (0.75, 12.0, 0.8)}


@pytest.mark.parametrize("profile", list(PROFILE_THRESHOLDS))
def test_unset_thresholds_are_the_active_profiles_and_a_set_one_wins(monkeypatch, profile):
    """The `gates` resource reads RLHF_DAG_PROFILE when a check runs, not the default profile's values."""
    monkeypatch.setenv("RLHF_DAG_PROFILE", profile)
    unset = QualityGates().thresholds()
    assert (unset.accuracy_floor, unset.kl_budget, unset.eos_rate_floor) == PROFILE_THRESHOLDS[profile]
    one_set = QualityGates(kl_budget=3.0).thresholds()
    assert (one_set.accuracy_floor, one_set.kl_budget, one_set.eos_rate_floor) == (
        PROFILE_THRESHOLDS[profile][0],
        3.0,
        PROFILE_THRESHOLDS[profile][2],
    )


def test_the_same_reward_model_passes_the_smoke_gate_and_fails_the_default_one(monkeypatch):
    """A reward model at chance (accuracy 0.5): smoke's floor 0 lets it through, the default floor 0.75 does not."""
    handle = ArtifactHandle("reward_model", "/not/read", "hash", metrics={"validation_accuracy": 0.5})
    outcomes = {}
    for profile in ("smoke", "default"):
        monkeypatch.setenv("RLHF_DAG_PROFILE", profile)
        outcomes[profile] = checks.reward_model_accuracy(reward_model=handle, gates=QualityGates())
    assert outcomes["smoke"].passed and outcomes["smoke"].metadata["accuracy_floor"].value == 0.0, outcomes["smoke"]
    assert (
        not outcomes["default"].passed and "accuracy 0.500 is below the floor 0.75" in outcomes["default"].description
    )


def test_a_pretrained_base_model_skips_the_learning_gate():
    result = _evaluate("base_model_learned", "base_model", {"parameters": 1000})
    assert result.passed and "supplied by the user" in result.description


# ---------------------------------------------------------------- through the real job


def _materialize(defs, instance, assets: list[str], run_config: dict | None = None):
    job = defs.resolve_implicit_global_asset_job_def()
    return job.execute_in_process(
        instance=instance, asset_selection=[dg.AssetKey(a) for a in assets], run_config=run_config, raise_on_error=False
    )


def _materialized(result) -> set[str]:
    return {
        e.event_specific_data.materialization.asset_key.to_user_string()
        for e in result.get_asset_materialization_events()
    }


def _latest_run(instance, asset: str) -> str:
    return instance.get_latest_materialization_event(dg.AssetKey(asset)).run_id


def _blocked(result, instance, gate: str, message: str, checked: str, downstream: str, downstream_before: str) -> None:
    """The run failed on `gate` alone, with `message`; `checked` materialized; `downstream` never ran and its previous version stays current."""
    assert not result.success
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert not evaluations[gate].passed and message in evaluations[gate].description, evaluations[gate].description
    assert all(e.passed for name, e in evaluations.items() if name != gate), evaluations
    assert _materialized(result) == {checked}
    assert _latest_run(instance, downstream) == downstream_before


@pytest.mark.slow
def test_a_reward_model_below_its_accuracy_floor_blocks_ppo(smoke_run):
    defs, instance, _ = smoke_run
    ppo_before = _latest_run(instance, "ppo_policy")
    result = _materialize(
        defs, instance, ["reward_model", "ppo_policy"], {"resources": {"gates": {"config": {"accuracy_floor": 1.01}}}}
    )  # unreachable on purpose
    _blocked(
        result, instance, "reward_model_accuracy", "below the floor 1.01", "reward_model", "ppo_policy", ppo_before
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "gate,threshold,message",
    [
        (
            "ppo_within_kl_budget",
            {"kl_budget": -1e6},
            "exceeds the budget -1000000.0; raise kl_coef or lower learning_rate",
        ),
        (
            "ppo_emits_eos",
            {"eos_rate_floor": 1.01},
            "of rollouts end with EOS (floor 101%); make missing_eos_penalty more negative",
        ),
    ],
    ids=["kl_budget", "eos_rate_floor"],
)
def test_a_ppo_policy_past_a_gate_blocks_the_evaluation(smoke_run, gate, threshold, message):
    """A threshold no policy can meet; ppo_policy retrains with its usual config, so its data version is unchanged."""
    defs, instance, _ = smoke_run
    evaluation_before = _latest_run(instance, "policy_evaluation")
    result = _materialize(
        defs, instance, ["ppo_policy", "policy_evaluation"], {"resources": {"gates": {"config": threshold}}}
    )
    _blocked(result, instance, gate, message, "ppo_policy", "policy_evaluation", evaluation_before)


@pytest.mark.slow
@pytest.mark.parametrize(
    "asset,gate,downstream,message",
    [
        ("base_model", "base_model_learned", "sft_model", "held-out corpus loss did not go down"),
        ("sft_model", "sft_beats_base", "reward_model", "is not below the base model's"),
    ],
    ids=["base_model", "sft_model"],
)
def test_a_model_that_learned_nothing_blocks_its_downstream(smoke_run, asset, gate, downstream, message):
    """learning_rate 0 leaves the weights as they started: the loss the gate compares is exactly the same before and after."""
    defs, instance, _ = smoke_run
    downstream_before = _latest_run(instance, downstream)
    result = _materialize(defs, instance, [asset, downstream], {"ops": {asset: {"config": {"learning_rate": 0.0}}}})
    try:
        _blocked(result, instance, gate, message, asset, downstream, downstream_before)
    finally:
        # The untrained model is now the asset's latest materialization (with the same data version: run config
        # is not part of it): put a trained one back for the tests after this one.
        assert _materialize(defs, instance, [asset]).success


@pytest.mark.slow
def test_a_threshold_change_reruns_only_the_check_and_stales_nothing(smoke_run):
    """Thresholds live with the checks (the `gates` resource): a stricter one fails the check alone, no model retrains or goes stale."""
    from rlhf_dag.pipeline.lineage import asset_statuses

    defs, instance, _ = smoke_run
    job = defs.resolve_implicit_global_asset_job_def()
    key = dg.AssetCheckKey(dg.AssetKey("reward_model"), "reward_model_accuracy")
    result = job.get_subset(asset_selection=set(), asset_check_selection={key}).execute_in_process(
        instance=instance,
        run_config={"resources": {"gates": {"config": {"accuracy_floor": 1.01}}}},
        raise_on_error=False,
    )
    (evaluation,) = result.get_asset_check_evaluations()
    assert not evaluation.passed and evaluation.metadata["accuracy_floor"].value == 1.01
    assert not result.get_asset_materialization_events()
    assert all(s.status == "FRESH" or (s.optional and s.status == "MISSING") for s in asset_statuses(defs, instance))
