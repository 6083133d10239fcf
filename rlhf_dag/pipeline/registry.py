"""The MLflow model registry: every evaluated policy is a version of one registered model, and the alias
`champion` marks the one to serve.

An evaluation asset (`policy_evaluation` for PPO, `<method>_evaluation` for the
others) logs its policy's folder as an MLflow transformers model (with explicit
pip requirements: MLflow's inferred list adds torchvision, which this project
does not install) and registers it. The alias moves to the new version only when

- its gates pass on the evaluation's own samples: KL to SFT within the budget,
  EOS rate at least the floor, every figure finite (its training gates, the
  blocking checks, already passed, or the evaluation would not have run); and
- its win rate vs SFT is not below the current champion's lower 95% bound: the judge's (gold) win rate where
  the evaluation has one, else the reward model's preference (the proxy it optimized; a team without a judge),
  compared only with a champion measured the same way;

otherwise the version is registered without the alias, and the evaluation's
metadata and tags say why. `rlhf-dag promote <version>` and `rlhf-dag rollback`
move the alias by hand, each leaving a reason tag on the version; the registered
model's `champion.history` tag keeps the order of champions that rollback walks back.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import dagster as dg
from pydantic import Field

from ..artifacts import ArtifactHandle
from ..config import GateConfig
from ..training.result import StepResult
from .resources import QualityGates

CHAMPION = "champion"
HISTORY_TAG = "champion.history"
REASON_TAG = "champion.reason"


def pip_requirements() -> list[str]:
    """What loading a registered policy needs, pinned to the versions that saved it."""
    from importlib.metadata import version

    return [
        f"{package}=={version(package).split('+')[0]}"
        for package in ("mlflow", "torch", "transformers", "tokenizers", "safetensors")
    ]


def champion_version(client, name: str):
    """The ModelVersion the alias points at, or None (no champion yet, or no registered model)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def _history(client, name: str) -> list[str]:
    tag = client.get_registered_model(name).tags.get(HISTORY_TAG, "")
    return [v for v in tag.split(",") if v]


def set_champion(client, name: str, version: str, reason: str) -> None:
    """Point the alias at `version`, tag why, and append it to the champion history."""
    client.set_registered_model_alias(name, CHAMPION, version)
    client.set_model_version_tag(name, version, REASON_TAG, reason)
    client.set_registered_model_tag(name, HISTORY_TAG, ",".join([*_history(client, name), str(version)]))


def rollback(client, name: str, reason: str) -> tuple[str, str]:
    """Move the alias back to the champion before the current one; returns (from version, to version)."""
    history = _history(client, name)
    current = champion_version(client, name)
    if current is None or len(history) < 2:
        raise ValueError(
            f"{name}: no earlier champion to roll back to (champion history: {', '.join(history) or 'empty'})"
        )
    previous = history[-2]
    client.set_registered_model_alias(name, CHAMPION, previous)
    client.set_model_version_tag(name, current.version, "rolled_back.reason", reason)
    client.set_model_version_tag(name, previous, REASON_TAG, f"rollback from version {current.version}: {reason}")
    client.set_registered_model_tag(name, HISTORY_TAG, ",".join(history[:-1]))
    return str(current.version), previous


def win_figures(method: str, metrics: dict) -> tuple[str, float, float, float]:
    """(basis, win rate vs SFT, its 95% bounds): the judge's ("gold") where the evaluation has them, else the reward
    model's preference ("rm": the proxy the policy optimized)."""
    basis, prefix = ("gold", "") if f"win_rate_{method}_vs_sft" in metrics else ("rm", "rm_")
    win, low, high = (metrics[f"{prefix}win_rate_{method}_vs_sft{suffix}"] for suffix in ("", "_ci_low", "_ci_high"))
    return basis, win, low, high


BASIS_WORDS = {"gold": "gold win rate vs SFT", "rm": "RM win rate vs SFT (the proxy; no judge)"}


def champion_decision(method: str, metrics: dict, gates: GateConfig, champion) -> list[str]:
    """Why the new version must not become champion (empty: it may)."""
    basis, win, low, high = win_figures(method, metrics)
    kl, eos = metrics[f"{method}_kl_to_sft"], metrics[f"{method}_eos_rate"]
    failed = []
    if not all(math.isfinite(v) for v in (win, low, high, kl, eos)):
        failed.append("a figure is not finite (no gold-judged eval prompt gives no win rate)")
    if not kl <= gates.kl_budget:
        failed.append(f"KL to SFT {kl:.2f} is over the budget {gates.kl_budget}")
    if not eos >= gates.eos_rate_floor:
        failed.append(f"EOS rate {eos:.2f} is below the floor {gates.eos_rate_floor}")
    if champion is not None and champion.tags.get("win_rate_basis", "gold") == basis:
        bound = float(champion.tags["win_rate_vs_sft_ci_low"])
        if not win >= bound:
            failed.append(
                f"{BASIS_WORDS[basis]} {win:.3f} is below the lower 95% bound {bound:.3f} of the champion "
                f"(version {champion.version}, {champion.tags.get('method', '?')})"
            )
    return failed


def register_policy(name: str, method: str, policy: ArtifactHandle, metrics: dict, gates: GateConfig) -> dict:
    """Log `policy` (its folder) as an MLflow transformers model in the active run, register it as a new version of
    `name`, and move the champion alias to it if it earns it. Returns the decision as string tags."""
    import mlflow
    from mlflow import MlflowClient

    from ..training.models import load_causal_lm

    started = time.perf_counter()
    # the model object, not its folder: MLflow's folder path cannot name transformers 5's text-generation pipeline class
    model, tokenizer = load_causal_lm(policy.path)
    info = mlflow.transformers.log_model(
        transformers_model={"model": model, "tokenizer": tokenizer},
        name=f"{method}_policy",
        task="text-generation",
        pip_requirements=pip_requirements(),
        registered_model_name=name,
    )
    version = str(info.registered_model_version)
    client = MlflowClient()
    basis, win, low, high = win_figures(method, metrics)
    figures = {
        "method": method,
        "win_rate_basis": basis,
        "win_rate_vs_sft": win,
        "win_rate_vs_sft_ci_low": low,
        "win_rate_vs_sft_ci_high": high,
        "kl_to_sft": metrics[f"{method}_kl_to_sft"],
        "eos_rate": metrics[f"{method}_eos_rate"],
        "policy.path": policy.path,
        "policy.mlflow_run_id": policy.mlflow_run_id or "",
    }
    for key, value in figures.items():
        client.set_model_version_tag(name, version, key, str(value))
    champion = champion_version(client, name)
    failed = champion_decision(method, metrics, gates, champion)
    if failed:
        why = "not champion: " + "; ".join(failed)
        client.set_model_version_tag(name, version, "not_champion.reason", why)
    else:
        compared = champion is not None and champion.tags.get("win_rate_basis", "gold") == basis
        why = "champion: gates passed" + (
            f", {BASIS_WORDS[basis]} {win:.3f} >= version {champion.version}'s lower bound "
            f"{float(champion.tags['win_rate_vs_sft_ci_low']):.3f}"
            if compared
            else ", first champion"
            if champion is None
            else f", first champion measured by {BASIS_WORDS[basis]}"
        )
        set_champion(client, name, version, why)
    return {
        "registry.model": name,
        "registry.version": version,
        "registry.champion": "no" if failed else "yes",
        "registry.why": why,
        "registry.seconds": f"{time.perf_counter() - started:.2f}",
    }


class PolicyRegistry(dg.ConfigurableResource):
    """Where evaluated policies are registered: one registered model in the MLflow tracking store, its `champion` alias gated."""

    model_name: str = Field(
        "rlhf-dag-policy", description="MLflow registered model that holds every evaluated policy as a version"
    )

    def registration(self, method: str, gates: QualityGates) -> Callable[[StepResult, dict[str, ArtifactHandle]], None]:
        """What the publisher calls with an evaluation's result, inside its MLflow run: register `<method>_policy`."""
        thresholds = gates.thresholds()

        def register(result: StepResult, upstream: dict[str, ArtifactHandle]) -> None:
            decision = register_policy(
                self.model_name, method, upstream[f"{method}_policy"], result.metrics, thresholds
            )
            result.tags.update(decision)
            result.metrics["registration_seconds"] = float(decision["registry.seconds"])
            result.headline.append("registration_seconds")
            result.texts["registry.md"] = (
                f"**{self.model_name}** version {decision['registry.version']} ({method}): {decision['registry.why']}"
            )

        return register
