"""Blocking asset checks: the quality gates between RLHF steps.

A failed blocking check stops every asset downstream of the checked one from
materializing in the same run, with the check's description saying why.
"""

from __future__ import annotations

import math

import dagster as dg

from ..artifacts import ArtifactHandle


def _gate(passed: bool, metadata: dict, why: str) -> dg.AssetCheckResult:
    """A check result whose description says why it failed (shown in the UI and the run log)."""
    return dg.AssetCheckResult(passed=bool(passed), metadata=metadata, description=None if passed else why)


@dg.asset_check(asset="base_model", blocking=True, description="Pretraining lowered the corpus loss (skipped for a user-supplied pretrained model).")
def base_model_learned(base_model: ArtifactHandle) -> dg.AssetCheckResult:
    m = base_model.metrics
    if "initial_loss" not in m:
        return dg.AssetCheckResult(passed=True, description="pretrained model supplied by the user; nothing trained here")
    passed = m["final_loss"] < m["initial_loss"] and math.isfinite(m["final_loss"])
    return _gate(passed, {"initial_loss": m["initial_loss"], "final_loss": m["final_loss"]}, f"corpus loss did not go down ({m['initial_loss']:.3f} -> {m['final_loss']:.3f}); raise base_model.epochs or learning_rate")


@dg.asset_check(asset="sft_model", blocking=True, description="SFT beats the base model's validation loss on held-out demonstrations.")
def sft_beats_base(sft_model: ArtifactHandle) -> dg.AssetCheckResult:
    m = sft_model.metrics
    passed = m["validation_loss"] < m["base_validation_loss"]
    return _gate(passed, {"validation_loss": m["validation_loss"], "base_validation_loss": m["base_validation_loss"]}, f"SFT validation loss {m['validation_loss']:.3f} is not below the base model's {m['base_validation_loss']:.3f}")


@dg.asset_check(asset="reward_model", blocking=True, description="The reward model ranks held-out comparisons correctly at least accuracy_floor of the time.")
def reward_model_accuracy(reward_model: ArtifactHandle) -> dg.AssetCheckResult:
    m = reward_model.metrics
    passed = m["validation_accuracy"] >= m["accuracy_floor"]
    return _gate(passed, {"validation_accuracy": m["validation_accuracy"], "accuracy_floor": m["accuracy_floor"]}, f"held-out pairwise accuracy {m['validation_accuracy']:.3f} is below the floor {m['accuracy_floor']}; add comparisons or train longer")


@dg.asset_check(asset="ppo_policy", blocking=True, description="PPO stayed within its KL budget to the SFT model.")
def ppo_within_kl_budget(ppo_policy: ArtifactHandle) -> dg.AssetCheckResult:
    m = ppo_policy.metrics
    passed = m["final_kl"] <= m["kl_budget"]
    return _gate(passed, {"final_kl": m["final_kl"], "kl_budget": m["kl_budget"]}, f"mean sequence KL {m['final_kl']:.2f} exceeds the budget {m['kl_budget']}; raise kl_coef or lower learning_rate")


@dg.asset_check(asset="ppo_policy", blocking=True, description="The PPO policy still ends its responses with EOS.")
def ppo_emits_eos(ppo_policy: ArtifactHandle) -> dg.AssetCheckResult:
    m = ppo_policy.metrics
    passed = m["final_eos_rate"] >= m["eos_rate_floor"]
    return _gate(passed, {"final_eos_rate": m["final_eos_rate"], "eos_rate_floor": m["eos_rate_floor"]}, f"only {m['final_eos_rate']:.0%} of rollouts end with EOS (floor {m['eos_rate_floor']:.0%}); make missing_eos_penalty more negative")


@dg.asset_check(asset="ppo_policy", blocking=True, description="No NaN or inf in PPO's losses, rewards or statistics.")
def ppo_finite(ppo_policy: ArtifactHandle) -> dg.AssetCheckResult:
    finite = all(math.isfinite(v) for v in ppo_policy.metrics.values() if isinstance(v, float))
    passed = finite and ppo_policy.metrics["finite"] == 1.0
    return _gate(passed, {}, "PPO statistics contain NaN or inf")


ASSET_CHECKS = [base_model_learned, sft_beats_base, reward_model_accuracy, ppo_within_kl_budget, ppo_emits_eos, ppo_finite]
