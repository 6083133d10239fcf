"""Launchers: the trained steps run under torchrun (and in a pod) with the same lineage, MLflow run and metadata."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from rlhf_dag.pipeline.launch import StepLauncher

REPO = Path(__file__).resolve().parent.parent
TRAINED = ("base_model", "sft_model", "reward_model", "ppo_policy")
# PPO samples its rollouts: near-greedy sampling makes the rollouts of one process and of two ranks (each its
# half of the batch) the same, so that their losses differ only as the optimization does.
PPO_NEAR_GREEDY = {"ops": {"ppo_policy": {"config": {"temperature": 0.05}}}}


def _materialize(env: dict, select: str, launcher: str, run_config: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "dagster",
        "asset",
        "materialize",
        "-m",
        "rlhf_dag.definitions",
        "--select",
        select,
        "-c",
        str(run_config),
    ]
    done = subprocess.run(
        command, cwd=REPO, env={**env, "RLHF_DAG_LAUNCHER": launcher}, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _ppo_value_loss(path: str) -> float:
    history = json.loads((Path(path) / "ppo_history.json").read_text())
    return sum(row["vf_loss"] for row in history) / len(history)


@pytest.mark.slow
def test_the_smoke_graph_under_torchrun_2_matches_one_process(smoke_run, isolated_env, tmp_path):
    """`RLHF_DAG_LAUNCHER=torchrun:2 dagster asset materialize`: every trained asset ran on 2 ranks that all-reduced
    (MULTI_CPU, equal weight checksums) and reached the one-process loss at the same global batch within 2%.
    PPO's rollouts are sampled (each rank with its own seed), so its value loss is held to the spread between
    seeds instead: 0.247-0.309 over PPO seeds 0-5 in one process at this temperature (a scratch run of the
    smoke graph's ppo_policy step), within 15% of their mean."""
    _, _, one_process = smoke_run
    shutil.copytree(isolated_env / "labels", tmp_path / "labels")
    (tmp_path / "dagster").mkdir()
    env = {
        **os.environ,
        "RLHF_DAG_HOME": str(tmp_path / "home"),
        "DAGSTER_HOME": str(tmp_path / "dagster"),
        "RLHF_DAG_LABELS_DIR": str(tmp_path / "labels"),
    }
    run_config = tmp_path / "run_config.json"
    run_config.write_text(json.dumps(PPO_NEAR_GREEDY))
    _materialize(env, "group:rlhf", "torchrun:2", run_config)

    os.environ.update({k: env[k] for k in ("RLHF_DAG_HOME", "DAGSTER_HOME", "RLHF_DAG_LABELS_DIR")})
    try:
        instance = dg.DagsterInstance.get()
        metadata = {
            a: instance.get_latest_materialization_event(dg.AssetKey(a)).asset_materialization.metadata for a in TRAINED
        }
        values = {a: {k: getattr(v, "value", v) for k, v in m.items()} for a, m in metadata.items()}
        ppo_two_ranks = values["ppo_policy"]["path"]
        # the one-process PPO reference: the same upstream models, the same config, in the Dagster process
        _materialize(env, "ppo_policy", "in-process", run_config)
        ppo_one_process = (
            instance.get_latest_materialization_event(dg.AssetKey("ppo_policy"))
            .asset_materialization.metadata["path"]
            .value
        )
    finally:
        os.environ.update(
            {
                "RLHF_DAG_HOME": str(isolated_env / "home"),
                "DAGSTER_HOME": str(isolated_env / "dagster"),
                "RLHF_DAG_LABELS_DIR": str(isolated_env / "labels"),
            }
        )

    for asset in TRAINED:
        facts = values[asset]
        assert (facts["launcher"], facts["world_size"], facts["distributed_type"]) == ("torchrun:2", 2, "MULTI_CPU"), (
            asset
        )
        rank0, rank1 = facts["rank_checksums"].split(",")
        assert rank0 == rank1, asset
    losses = {
        "base_model": (
            "final_loss",
            json.loads((Path(values["base_model"]["path"]) / "step.json").read_text())["metrics"],
        ),
        "sft_model": (
            "validation_loss",
            json.loads((Path(values["sft_model"]["path"]) / "step.json").read_text())["metrics"],
        ),
        "reward_model": (
            "validation_loss",
            json.loads((Path(values["reward_model"]["path"]) / "step.json").read_text())["metrics"],
        ),
    }
    for asset, (key, metrics) in losses.items():
        reference = one_process.output_for_node(asset).metrics[key]
        assert metrics[key] == pytest.approx(reference, rel=0.02), asset
    assert _ppo_value_loss(ppo_two_ranks) == pytest.approx(_ppo_value_loss(ppo_one_process), rel=0.15)

    for asset in ("base_model", "sft_model", "ppo_policy"):
        AutoModelForCausalLM.from_pretrained(values[asset]["path"])
    AutoModelForSequenceClassification.from_pretrained(values["reward_model"]["path"])


@pytest.mark.slow
def test_a_failing_rank_fails_the_asset_with_its_traceback_in_the_run_log(smoke_run, monkeypatch):
    """A global batch that does not split over 2 ranks fails every rank; the run log shows a failed rank's traceback
    (whichever rank wrote it before torchrun stopped the other: seen both ways)."""
    defs, instance, _ = smoke_run
    monkeypatch.setenv("RLHF_DAG_LAUNCHER", "torchrun:2")
    job = defs.resolve_implicit_global_asset_job_def()
    run_config = {"ops": {"ppo_policy": {"config": {"rollout_batch_size": 3}}}}
    result = job.execute_in_process(
        instance=instance, asset_selection=[dg.AssetKey("ppo_policy")], run_config=run_config, raise_on_error=False
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    description = (
        failure.event_specific_data.user_failure_data.description
    )  # what the run log shows under the failed step
    assert "the launched step failed (torchrun:2)" in description
    assert "rank 0:\nTraceback" in description or "rank 1:\nTraceback" in description
    assert "rollout_batch_size=3 does not split over 2 processes" in description


def test_the_launcher_comes_from_the_environment_and_starts_the_spec_runner(monkeypatch, tmp_path):
    spec, logs = tmp_path / "spec.json", tmp_path / "logs"
    monkeypatch.delenv("RLHF_DAG_LAUNCHER", raising=False)
    assert StepLauncher().in_process
    monkeypatch.setenv("RLHF_DAG_LAUNCHER", "torchrun:2")
    assert StepLauncher().command(spec, logs) == [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "--log-dir",
        str(logs),
        "-m",
        "rlhf_dag.pipes_step",
        "--spec",
        str(spec),
    ]
    assert StepLauncher(launcher="accelerate:configs/accelerate/multi_cpu.yaml").command(spec, logs)[1:5] == [
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(REPO / "configs/accelerate/multi_cpu.yaml"),
    ]
    assert StepLauncher(launcher="in-process").in_process  # run config wins over the environment
    for wrong in ("torchrun", "torchrun:two", "mpi:4", "in-process:2"):
        with pytest.raises(dg.DagsterInvalidConfigError, match="is not one of 'in-process', 'torchrun:N'"):
            StepLauncher(launcher=wrong).resolved()


@pytest.mark.slow
def test_the_k8s_launcher_submits_a_step_pod_with_image_command_env_gpus_and_the_shared_volume(smoke_run, monkeypatch):
    """`k8s` (here from run config, over RLHF_DAG_LAUNCHER): the pod dagster_k8s.PipesK8sClient would create for
    sft_model, caught at the Kubernetes API (no cluster here): what the pod runs and what it mounts."""
    import kubernetes

    defs, instance, _ = smoke_run
    submitted = {}

    def create_namespaced_pod(self, namespace, body, **kwargs):
        command = body.spec.containers[0].command
        submitted.update(
            namespace=namespace, pod=body, spec=json.loads(Path(command[command.index("--spec") + 1]).read_text())
        )
        raise kubernetes.client.exceptions.ApiException(status=503, reason="no cluster in this test")

    monkeypatch.setattr(kubernetes.config, "load_kube_config", lambda *args, **kwargs: None)
    monkeypatch.setattr(kubernetes.client.CoreV1Api, "create_namespaced_pod", create_namespaced_pod)
    monkeypatch.setenv("RLHF_DAG_LAUNCHER", "in-process")
    launcher = {"launcher": "k8s", "image": "registry.example/rlhf-dag:1.0", "namespace": "rlhf", "gpus": 1}
    job = defs.resolve_implicit_global_asset_job_def()
    run = job.execute_in_process(
        instance=instance,
        asset_selection=[dg.AssetKey("sft_model")],
        raise_on_error=False,
        run_config={"resources": {"launcher": {"config": launcher}}},
    )
    assert (
        not run.success
        and "no cluster in this test"
        in next(
            e for e in run.all_events if e.event_type_value == "STEP_FAILURE"
        ).event_specific_data.user_failure_data.description
    )

    pod, spec = submitted["pod"], submitted["spec"]
    container = pod.spec.containers[0]
    assert submitted["namespace"] == "rlhf" and pod.spec.restart_policy == "Never"
    assert container.image == "registry.example/rlhf-dag:1.0"
    assert container.command[:3] == ["python", "-m", "rlhf_dag.pipes_step"]
    assert spec["step"] == "sft_model" and spec["output"].endswith(f"sft_model/{run.run_id}")
    # the inputs are the latest materializations (another test may have re-materialized one since smoke_run)
    latest = {
        name: instance.get_latest_materialization_event(dg.AssetKey(name)).asset_materialization.metadata["path"].value
        for name in ("base_model", "sft_dataset")
    }
    assert spec["inputs"] == latest
    env = {e.name: e.value for e in container.env}
    assert env["MLFLOW_RUN_ID"] == spec["lineage"]["mlflow_run_id"] and env["RLHF_DAG_PROFILE"] == "smoke"
    assert "DAGSTER_PIPES_CONTEXT" in env and "DAGSTER_PIPES_MESSAGES" in env  # rank 0 reports back through Pipes
    assert container.resources.limits["nvidia.com/gpu"] == "1"
    mounts = {m.name: m.mount_path for m in container.volume_mounts}
    claims = {v.name: v.persistent_volume_claim.claim_name for v in pod.spec.volumes if v.persistent_volume_claim}
    assert mounts["rlhf-dag-home"] == "/data/rlhf_dag" and claims == {"rlhf-dag-home": "rlhf-dag-home"}
