"""DPO, GRPO and RLOO beside PPO: trained by TRL's trainers, gated, evaluated vs SFT in one table, and registered in
MLflow with a `champion` alias that moves only through the gates (or by hand, with a reason)."""

from __future__ import annotations

import contextlib
import time
from types import SimpleNamespace

import dagster as dg
import pytest

from rlhf_dag.config import GateConfig, resolve
from rlhf_dag.pipeline.registry import CHAMPION, champion_decision

ALTERNATIVES = [
    "dpo_policy",
    "grpo_policy",
    "rloo_policy",
    "dpo_evaluation",
    "grpo_evaluation",
    "rloo_evaluation",
    "method_comparison",
]
GATES = GateConfig(kl_budget=5.0, eos_rate_floor=0.8)


def _metrics(method: str, win: float, low: float, kl: float = 1.0, eos: float = 0.9) -> dict:
    return {
        f"win_rate_{method}_vs_sft": win,
        f"win_rate_{method}_vs_sft_ci_low": low,
        f"win_rate_{method}_vs_sft_ci_high": 2 * win - low,
        f"{method}_kl_to_sft": kl,
        f"{method}_eos_rate": eos,
    }


def _champion(low: float) -> SimpleNamespace:
    return SimpleNamespace(version="3", tags={"win_rate_vs_sft_ci_low": str(low), "method": "ppo"})


def test_the_champion_rule():
    assert champion_decision("dpo", _metrics("dpo", 0.70, 0.60), GATES, None) == []  # first champion: gates suffice
    assert (
        champion_decision("dpo", _metrics("dpo", 0.65, 0.55), GATES, _champion(0.65)) == []
    )  # at the bound: not below it
    assert champion_decision("dpo", _metrics("dpo", 0.649, 0.55), GATES, _champion(0.65)) == [
        "gold win rate vs SFT 0.649 is below the lower 95% bound 0.650 of the champion (version 3, ppo)"
    ]
    assert champion_decision("grpo", _metrics("grpo", 0.9, 0.8, kl=5.01), GATES, None) == [
        "KL to SFT 5.01 is over the budget 5.0"
    ]
    assert champion_decision("rloo", _metrics("rloo", 0.9, 0.8, eos=0.79), GATES, None) == [
        "EOS rate 0.79 is below the floor 0.8"
    ]
    (why,) = champion_decision("rloo", _metrics("rloo", float("nan"), float("nan")), GATES, None)
    assert "not finite" in why


@pytest.mark.slow
@pytest.mark.parametrize("method", ["grpo", "rloo"])
def test_an_online_method_moves_the_policy_with_the_reward_model_as_reward(smoke_run, method):
    """Through the step function, with a reward that varies (no EOS penalty) and a learning rate that shows in a few steps."""
    from rlhf_dag.config import labels_dir
    from rlhf_dag.data.label_files import label_file
    from rlhf_dag.training.models import load_causal_lm
    from rlhf_dag.training.steps import step_function

    _, _, result = smoke_run
    sft = result.output_for_node("sft_model").path
    inputs = {
        "sft_model": sft,
        "reward_model": result.output_for_node("reward_model").path,
        "prompts": str(label_file(labels_dir(), "prompts")),
    }
    cfg = resolve(
        f"{method}_policy", {"steps": 4, "learning_rate": 5e-3, "check_prompts": 16, "missing_eos_penalty": None}
    )
    trained = step_function(f"{method}_policy")(inputs, cfg)
    before, _ = load_causal_lm(sft)
    deltas = [
        float((a - b.to(a.device)).abs().max())
        for a, b in zip(trained.model.state_dict().values(), before.state_dict().values())
    ]
    assert max(deltas) > 0 and trained.metrics["finite"] == 1.0
    history = trained.records[f"{method}_history.json"]
    assert len(history) == 4 and {"rm_score", "gold_score", "eos_rate"} <= set(
        history[0]
    )  # one row per generation batch, gold observing


@pytest.fixture(scope="session")
def alternatives(isolated_env):
    """The core graph and then the `alternatives` job, through Dagster, in an instance and RLHF_DAG_HOME of their own
    (built once per session, whatever the order): the shared smoke graph stays the core graph the other tests expect.
    (defs, instance, result, root): tests that read RLHF_DAG_HOME enter `own_home(root)`."""
    from conftest import own_home

    from rlhf_dag.definitions import build_definitions

    root = isolated_env / "alternatives"
    with own_home(root):
        defs = build_definitions()
        instance = dg.DagsterInstance.get()
        defs.resolve_job_def("observe_labels").execute_in_process(instance=instance)
        assert defs.resolve_job_def("rlhf_graph").execute_in_process(instance=instance).success
        result = defs.resolve_job_def("alternatives").execute_in_process(instance=instance, raise_on_error=False)
    return defs, instance, result, root


@contextlib.contextmanager
def _mlflow_store_restored():
    """MLflow's tracking URI is process-wide: point it back at the session's own store afterwards."""
    import mlflow

    from rlhf_dag.config import mlflow_tracking_uri

    try:
        yield
    finally:
        mlflow.set_tracking_uri(mlflow_tracking_uri())


def _metadata(result, asset: str) -> dict:
    (event,) = [
        e
        for e in result.get_asset_materialization_events()
        if e.event_specific_data.materialization.asset_key == dg.AssetKey(asset)
    ]
    return {k: v.value for k, v in event.event_specific_data.materialization.metadata.items()}


@pytest.mark.slow
def test_the_alternatives_train_pass_their_gates_and_fill_one_table(alternatives):
    _, _, result, _ = alternatives
    assert result.success
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {
        f"{m}_{g}": True for m in ("dpo", "grpo", "rloo") for g in ("within_kl_budget", "emits_eos", "finite")
    }
    assert _metadata(result, "dpo_policy")["final_kl"] > 0  # DPO moved the policy off SFT
    table = _metadata(result, "method_comparison")["method_table"]
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert [r.split(" | ")[0] for r in rows[1:]] == [
        "| SFT (reference, figures of ppo's evaluation)",
        "| PPO",
        "| DPO",
        "| GRPO",
        "| RLOO",
    ]
    for method in ("dpo", "grpo", "rloo"):
        evaluation = _metadata(result, f"{method}_evaluation")
        assert (
            0
            <= evaluation[f"win_rate_{method}_vs_sft_ci_low"]
            <= evaluation[f"win_rate_{method}_vs_sft"]
            <= evaluation[f"win_rate_{method}_vs_sft_ci_high"]
            <= 1
        )
        assert evaluation["registry_version"] in table and evaluation["registry_why"]
        # SFT was sampled once, by policy_evaluation, for every method's evaluation: same model, prompts, settings
        assert evaluation["samples_reused"] == "sft"
    # GRPO and RLOO show their RM-vs-gold curve, as PPO does
    assert "rm_vs_gold_png" in _metadata(result, "grpo_evaluation") and "rm_vs_gold_png" in _metadata(
        result, "rloo_evaluation"
    )


@pytest.mark.slow
def test_the_champion_loads_from_the_registry_and_moves_only_through_gates_or_by_hand(alternatives, capsys):
    import mlflow
    from conftest import own_home

    from rlhf_dag.cli import main
    from rlhf_dag.config import mlflow_tracking_uri
    from rlhf_dag.pipeline.registry import HISTORY_TAG, REASON_TAG

    defs, instance, result, root = alternatives
    assert result.success
    with _mlflow_store_restored(), own_home(root):
        mlflow.set_tracking_uri(mlflow_tracking_uri())
        client, name = mlflow.MlflowClient(), "rlhf-dag-policy"
        versions = {_metadata(result, f"{m}_evaluation")["registry_version"]: m for m in ("dpo", "grpo", "rloo")}
        for version, method in versions.items():
            assert client.get_model_version(name, version).tags["method"] == method
        champion = client.get_model_version_by_alias(name, CHAMPION)

        started = time.perf_counter()
        pipeline = mlflow.transformers.load_model(f"models:/{name}@{CHAMPION}")
        load_seconds = time.perf_counter() - started
        out = pipeline("What is 2 + 2?", max_new_tokens=4, do_sample=False)
        assert isinstance(out[0]["generated_text"], str)
        print(f"champion (version {champion.version}) loaded from the registry in {load_seconds:.2f} s")

        # a version that fails a gate is registered without the alias, and its evaluation says why
        run = defs.resolve_implicit_global_asset_job_def().execute_in_process(
            instance=instance,
            asset_selection=[dg.AssetKey("dpo_evaluation")],
            run_config={"resources": {"gates": {"config": {"kl_budget": -1.0}}}},
        )
        refused = _metadata(run, "dpo_evaluation")
        assert refused["registry_champion"] == "no" and "over the budget -1.0" in refused["registry_why"]
        assert str(client.get_model_version_by_alias(name, CHAMPION).version) == str(champion.version)

        # by hand: promote the refused version, then roll back to the champion before it
        assert main(["promote", refused["registry_version"], "--reason", "reviewed the samples"]) == 0
        assert str(client.get_model_version_by_alias(name, CHAMPION).version) == refused["registry_version"]
        assert (
            client.get_model_version(name, refused["registry_version"]).tags[REASON_TAG]
            == "promoted by hand: reviewed the samples"
        )
        assert main(["rollback", "--reason", "users complained"]) == 0
        assert str(client.get_model_version_by_alias(name, CHAMPION).version) == str(champion.version)
        assert (
            client.get_model_version(name, refused["registry_version"]).tags["rolled_back.reason"] == "users complained"
        )
        assert client.get_registered_model(name).tags[HISTORY_TAG].split(",")[-1] == str(champion.version)
        assert "champion version" in capsys.readouterr().out
