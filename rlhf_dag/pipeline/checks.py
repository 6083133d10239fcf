"""Asset checks: the quality gates between RLHF steps, and the held-out check of the eval prompts.

A failed blocking check stops every asset downstream of the checked one from
materializing in the same run, with the check's description saying why. The
thresholds come from the `gates` resource, so a check can be re-run with
another threshold without retraining anything.
"""

from __future__ import annotations

import math

import dagster as dg

from .. import graph
from ..artifacts import ArtifactHandle
from ..config import config_class, labels_dir
from ..data.label_files import label_file, leaked_prompts, load_labels
from .resources import QualityGates


def _gate(passed: bool, metadata: dict, why: str) -> dg.AssetCheckResult:
    """A check result whose description says why it failed (shown in the UI and the run log)."""
    return dg.AssetCheckResult(passed=bool(passed), metadata=metadata, description=None if passed else why)


@dg.asset_check(
    asset="base_model",
    blocking=True,
    description="Pretraining lowered the loss on held-out corpus documents, never trained on (skipped for a user-supplied pretrained model).",
)
def base_model_learned(base_model: ArtifactHandle) -> dg.AssetCheckResult:
    m = base_model.metrics
    if "initial_loss" not in m:
        return dg.AssetCheckResult(
            passed=True, description="pretrained model supplied by the user; nothing trained here"
        )
    passed = m["final_loss"] < m["initial_loss"] and math.isfinite(m["final_loss"])
    return _gate(
        passed,
        {"initial_loss": m["initial_loss"], "final_loss": m["final_loss"]},
        f"held-out corpus loss did not go down ({m['initial_loss']:.3f} -> {m['final_loss']:.3f}); raise base_model.epochs or learning_rate",
    )


@dg.asset_check(
    asset="sft_model",
    blocking=True,
    description="SFT beats the base model's validation loss on held-out demonstrations.",
)
def sft_beats_base(sft_model: ArtifactHandle) -> dg.AssetCheckResult:
    m = sft_model.metrics
    passed = m["validation_loss"] < m["base_validation_loss"]
    return _gate(
        passed,
        {"validation_loss": m["validation_loss"], "base_validation_loss": m["base_validation_loss"]},
        f"SFT validation loss {m['validation_loss']:.3f} is not below the base model's {m['base_validation_loss']:.3f}",
    )


@dg.asset_check(
    asset="reward_model",
    blocking=True,
    description="The reward model ranks held-out comparisons correctly at least accuracy_floor of the time.",
)
def reward_model_accuracy(reward_model: ArtifactHandle, gates: QualityGates) -> dg.AssetCheckResult:
    accuracy, floor = reward_model.metrics["validation_accuracy"], gates.thresholds().accuracy_floor
    by_kind = {
        k: v for k, v in reward_model.metrics.items() if k.startswith("validation_accuracy_")
    }  # shown beside the gate, not gated
    return _gate(
        accuracy >= floor,
        {"validation_accuracy": accuracy, "accuracy_floor": floor, **by_kind},
        f"held-out pairwise accuracy {accuracy:.3f} is below the floor {floor}; add comparisons or train longer",
    )


# A policy's three gates, shared by PPO and the TRL-trained alternatives; `samples` names what the EOS rate was
# measured on, the remedies what to change.
def _kl_gate(metrics: dict, gates: QualityGates, remedy: str) -> dg.AssetCheckResult:
    kl, budget = metrics["final_kl"], gates.thresholds().kl_budget
    return _gate(
        kl <= budget,
        {"final_kl": kl, "kl_budget": budget},
        f"mean sequence KL {kl:.2f} exceeds the budget {budget}; {remedy}",
    )


def _eos_gate(metrics: dict, gates: QualityGates, samples: str, remedy: str) -> dg.AssetCheckResult:
    rate, floor = metrics["final_eos_rate"], gates.thresholds().eos_rate_floor
    return _gate(
        rate >= floor,
        {"final_eos_rate": rate, "eos_rate_floor": floor},
        f"only {rate:.0%} of {samples} end with EOS (floor {floor:.0%}); {remedy}",
    )


def _finite_gate(metrics: dict, method: str) -> dg.AssetCheckResult:
    finite = all(math.isfinite(v) for v in metrics.values() if isinstance(v, float))
    passed = finite and metrics["finite"] == 1.0
    return _gate(passed, {}, f"{method} statistics contain NaN or inf")


def _policy_gates(step: graph.Step) -> list[dg.AssetChecksDefinition]:
    """A policy's three gates, named `<method>_<gate>`, their remedies in the words of its config: PPO's KL coefficient
    is kl_coef, the TRL trainers' beta; a step that samples while training has missing_eos_penalty."""
    fields = config_class(step.name).model_fields
    name, knob = step.method.upper(), "kl_coef" if "kl_coef" in fields else "beta"
    samples = "rollouts" if "rollout_batch_size" in fields else "its samples"
    eos_remedy = (
        "make missing_eos_penalty more negative" if "missing_eos_penalty" in fields else "lower learning_rate or epochs"
    )
    after = "" if samples == "rollouts" else " (on its samples after training)"

    @dg.asset_check(
        asset=step.name,
        name=f"{step.method}_within_kl_budget",
        blocking=True,
        description=f"{name} stayed within its KL budget to the SFT model{after}.",
    )
    def within_kl_budget(policy: ArtifactHandle, gates: QualityGates) -> dg.AssetCheckResult:
        return _kl_gate(policy.metrics, gates, f"raise {knob} or lower learning_rate")

    @dg.asset_check(
        asset=step.name,
        name=f"{step.method}_emits_eos",
        blocking=True,
        description=f"The {name} policy still ends its responses with EOS.",
    )
    def emits_eos(policy: ArtifactHandle, gates: QualityGates) -> dg.AssetCheckResult:
        return _eos_gate(policy.metrics, gates, samples, eos_remedy)

    @dg.asset_check(
        asset=step.name,
        name=f"{step.method}_finite",
        blocking=True,
        description=f"No NaN or inf in {name}'s losses, rewards, statistics or weights.",
    )
    def finite(policy: ArtifactHandle) -> dg.AssetCheckResult:
        return _finite_gate(policy.metrics, name)

    return [
        {"within_kl_budget": within_kl_budget, "emits_eos": emits_eos, "finite": finite}[gate] for gate in step.gates
    ]


TRAINING_LABELS = ("prompts", "demonstrations", "comparisons")


@dg.asset_check(
    asset="policy_evaluation",
    additional_deps=[dg.AssetKey(["labels", name]) for name in (*TRAINING_LABELS, "eval_prompts")],
    description="The eval prompts are held out: none appears in a training file (a warning, not a gate).",
)
def eval_prompts_held_out() -> dg.AssetCheckResult:
    files = {name: label_file(labels_dir(), name) for name in (*TRAINING_LABELS, "eval_prompts")}
    eval_prompts = load_labels(files["eval_prompts"])
    leaked = {name: leaked_prompts(load_labels(files[name]), eval_prompts) for name in TRAINING_LABELS}
    where = ", ".join(f"{n} in {files[name].name}" for name, n in leaked.items() if n)
    return dg.AssetCheckResult(
        passed=not any(leaked.values()),
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "eval_prompts_leaked": sum(leaked.values()),
            **{f"leaked_into_{name}": n for name, n in leaked.items()},
        },
        description=None
        if not where
        else f"eval prompts also appear in training files ({where}); evaluation is no longer held out",
    )


# The gates of each step, as its row in graph.py lists them.
STEP_GATES = {
    "base_model_learned": base_model_learned,
    "sft_beats_base": sft_beats_base,
    "reward_model_accuracy": reward_model_accuracy,
}
ASSET_CHECKS = [
    *(
        check
        for step in graph.STEPS
        if step.gates and step.method is None
        for check in (STEP_GATES[gate] for gate in step.gates)
    ),
    *(check for step in graph.STEPS if step.gates and step.method is not None for check in _policy_gates(step)),
    eval_prompts_held_out,
]
CHECKS_BY_NAME = {spec.name: check for check in ASSET_CHECKS for spec in check.check_specs}
