"""Blocking asset checks: the quality gates between RLHF steps.

A failed blocking check stops every asset downstream of the checked one from
materializing in the same run, with the check's description saying why.
"""

from __future__ import annotations

import math

import dagster as dg

from ..artifacts import ArtifactHandle


@dg.asset_check(asset="base_model", blocking=True, description="Pretraining lowered the corpus loss (skipped for a user-supplied pretrained model).")
def base_model_learned(base_model: ArtifactHandle) -> dg.AssetCheckResult:
    m = base_model.metrics
    if "initial_loss" not in m:
        return dg.AssetCheckResult(passed=True, description="pretrained model supplied by the user; nothing trained here")
    passed = m["final_loss"] < m["initial_loss"] and math.isfinite(m["final_loss"])
    return dg.AssetCheckResult(
        passed=passed,
        metadata={"initial_loss": m["initial_loss"], "final_loss": m["final_loss"]},
        description=None if passed else f"corpus loss did not go down ({m['initial_loss']:.3f} -> {m['final_loss']:.3f}); raise base_model.epochs or learning_rate",
    )


@dg.asset_check(asset="sft_model", blocking=True, description="SFT beats the base model's validation loss on held-out demonstrations.")
def sft_beats_base(sft_model: ArtifactHandle) -> dg.AssetCheckResult:
    m = sft_model.metrics
    passed = m["validation_loss"] < m["base_validation_loss"]
    return dg.AssetCheckResult(
        passed=passed,
        metadata={"validation_loss": m["validation_loss"], "base_validation_loss": m["base_validation_loss"]},
        description=None if passed else f"SFT validation loss {m['validation_loss']:.3f} is not below the base model's {m['base_validation_loss']:.3f}",
    )


ASSET_CHECKS = [base_model_learned, sft_beats_base]
