"""A training run killed with SIGKILL resumes from its last checkpoint when run again with the same inputs, and ends
with the weights of an uninterrupted run; a run with other inputs never picks the checkpoint up; a finished run leaves none."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import psutil
import pytest
import torch
from safetensors.torch import load_file

from rlhf_dag.config import checkpoints_dir, home_dir, resolve
from rlhf_dag.training import resume
from rlhf_dag.training.result import StepResult
from rlhf_dag.training.resume import last_complete_checkpoint

REPO = Path(__file__).resolve().parent.parent

# Long enough that a run is still training when its first checkpoint appears. SFT: 44 steps, the loss logged every
# 2, a checkpoint every 3: the training loss of a resumed run covers the steps before the checkpoint only if the
# loss was logged at the checkpoint too.
PPO = {"iterations": 24, "checkpoint_every": 2}
SFT = {"checkpoint_every": 3, "batch_size": 16}


def _inputs(step: str, result, labels: Path) -> dict[str, str]:
    if step == "ppo_policy":
        return {
            "sft_model": result.output_for_node("sft_model").path,
            "reward_model": result.output_for_node("reward_model").path,
            "prompts": str(labels / "prompts.jsonl"),
        }
    return {
        "base_model": result.output_for_node("base_model").path,
        "sft_dataset": result.output_for_node("sft_dataset").path,
    }


def _folder(step: str, inputs: dict, config: dict, processes: int = 1) -> Path:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WORLD_SIZE", str(processes))  # the key the ranks compute
        return checkpoints_dir() / step / resume.checkpoint_key(step, inputs, resolve(step, config))


def _saved(folder: Path) -> list[int]:
    """The complete checkpoints in `folder`, by step or iteration."""
    ppo = [int(p.stem.split("-")[1]) for p in folder.glob("iteration-*.pt")]
    trl = [int(p.parent.name.split("-")[1]) for p in folder.glob("checkpoint-*/trainer_state.json")]
    return sorted(ppo + trl)


def _start(step: str, inputs: dict, config: dict, out: Path, processes: int = 1) -> tuple[subprocess.Popen, Path]:
    """The spec runner in a child process (under torchrun for several), as a launcher starts it."""
    spec = out.with_suffix(".json")
    spec.write_text(json.dumps({"step": step, "inputs": inputs, "config": config, "output": str(out)}))
    log = out.with_suffix(".log")
    launcher = (
        ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)] if processes > 1 else []
    )
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, *launcher, "-m", "rlhf_dag.training.steps", "--spec", str(spec)],
            cwd=REPO,
            env=dict(os.environ),
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return proc, log


def _run(step: str, inputs: dict, config: dict, out: Path, processes: int = 1) -> StepResult:
    proc, log = _start(step, inputs, config, out, processes)
    assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
    return StepResult.load(out)


def _kill_at_first_checkpoint(proc: subprocess.Popen, log: Path, folder: Path) -> None:
    deadline = time.time() + 600
    while not _saved(folder):
        assert proc.poll() is None, f"the run ended before its first checkpoint:\n{log.read_text()[-3000:]}"
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    ranks = psutil.Process(proc.pid).children(recursive=True)  # torchrun starts each rank in a session of its own
    os.killpg(proc.pid, signal.SIGKILL)
    for rank in ranks:
        rank.kill()
    psutil.wait_procs(ranks, timeout=30)
    assert proc.wait(timeout=30) == -signal.SIGKILL, "the run finished before it could be killed"


def _weights(out: Path) -> dict[str, torch.Tensor]:
    weights = load_file(out / "model.safetensors")
    if (out / "value_model").is_dir():
        weights |= {f"value_model.{k}": v for k, v in load_file(out / "value_model" / "model.safetensors").items()}
    return weights


@pytest.mark.slow
@pytest.mark.parametrize(
    "step, config, processes, resumed_from, log_line",
    [
        ("ppo_policy", PPO, 1, "resumed_from_iteration", "ppo: resumed from the checkpoint of iteration"),
        ("sft_model", SFT, 1, "resumed_from_step", "sft_model: resumed from the checkpoint at step"),
        (
            "ppo_policy",
            PPO,
            2,
            "resumed_from_iteration",
            "ppo: resumed from the checkpoint of iteration",
        ),  # rank 0 saves every rank's RNG states
    ],
    ids=["ppo_policy", "sft_model", "ppo_policy-torchrun:2"],
)
def test_a_killed_run_resumes_and_ends_with_the_weights_of_an_uninterrupted_run(
    smoke_run, isolated_env, tmp_path, step, config, processes, resumed_from, log_line
):
    _, _, result = smoke_run
    inputs = _inputs(step, result, isolated_env / "labels")
    folder = _folder(step, inputs, config, processes)

    uninterrupted = _run(step, inputs, config, tmp_path / "uninterrupted", processes)
    assert uninterrupted.metrics[resumed_from] == 0 and not folder.exists()  # a finished run leaves no checkpoint

    proc, log = _start(step, inputs, config, tmp_path / "killed", processes)
    _kill_at_first_checkpoint(proc, log, folder)
    assert not (tmp_path / "killed").exists()
    k = _saved(folder)[-1]

    resumed = _run(step, inputs, config, tmp_path / "resumed", processes)
    assert resumed.metrics[resumed_from] == k > 0  # it did not start over
    assert f"{log_line} {k}/" in (tmp_path / "resumed.log").read_text()
    assert not folder.exists()

    expected, got = _weights(tmp_path / "uninterrupted"), _weights(tmp_path / "resumed")
    assert expected.keys() == got.keys()
    for name, tensor in expected.items():
        assert torch.allclose(got[name], tensor, rtol=1e-5, atol=1e-6), (
            f"{name}: max difference {(got[name] - tensor).abs().max().item():.3g}"
        )
    figures = (
        ("final_rm_score", "final_kl", "initial_rm_score")
        if step == "ppo_policy"
        else ("validation_loss", "training_loss")
    )
    for figure in (
        figures
    ):  # the history before the checkpoint came back with it (PPO) or through the trainer's log history (SFT)
        assert resumed.metrics[figure] == pytest.approx(uninterrupted.metrics[figure], rel=1e-5), figure


@pytest.mark.slow
def test_a_run_with_other_inputs_never_picks_up_a_checkpoint(smoke_run, isolated_env, tmp_path):
    """A killed PPO run's checkpoint, then its prompts file edited in place (another data version, the same path):
    the next run trains from the start and leaves the checkpoint for a run with the killed run's inputs."""
    _, _, result = smoke_run
    prompts = tmp_path / "prompts.jsonl"
    shutil.copy(isolated_env / "labels" / "prompts.jsonl", prompts)
    inputs = _inputs("ppo_policy", result, isolated_env / "labels") | {"prompts": str(prompts)}
    folder = _folder("ppo_policy", inputs, PPO)
    proc, log = _start("ppo_policy", inputs, PPO, tmp_path / "killed")
    _kill_at_first_checkpoint(proc, log, folder)
    saved = _saved(folder)

    prompts.write_text("".join(prompts.read_text().splitlines(keepends=True)[1:]))  # one prompt fewer
    other = _run("ppo_policy", inputs, PPO, tmp_path / "other")
    assert other.metrics["resumed_from_iteration"] == 0
    assert _saved(folder) == saved  # untouched
    shutil.rmtree(folder)


def test_the_checkpoint_key_changes_with_every_input_and_training_field_only(tmp_path, monkeypatch):
    labels = tmp_path / "prompts.jsonl"
    labels.write_text('{"id": "p1", "prompt": "What is 2 + 2?"}\n')
    inputs = {
        "sft_model": str(tmp_path / "sft_model" / "run-a"),
        "reward_model": str(tmp_path / "reward_model" / "run-b"),
        "prompts": str(labels),
    }
    key = resume.checkpoint_key("ppo_policy", inputs, resolve("ppo_policy"))

    same = [
        resolve("ppo_policy", {"checkpoint_every": 1}),
        resolve("ppo_policy", {"sample_temperature": 0.1}),
    ]  # change no weight
    assert {resume.checkpoint_key("ppo_policy", inputs, cfg) for cfg in same} == {key}
    assert (
        resolve("ppo_policy", {"checkpoint_every": 1}).training_hash() == resolve("ppo_policy").training_hash()
    )  # nor the code version

    others = {
        "a training field": resume.checkpoint_key("ppo_policy", inputs, resolve("ppo_policy", {"learning_rate": 1e-4})),
        "another upstream run": resume.checkpoint_key(
            "ppo_policy", inputs | {"sft_model": str(tmp_path / "sft_model" / "run-c")}, resolve("ppo_policy")
        ),
        "another step": resume.checkpoint_key("rloo_policy", inputs, resolve("ppo_policy")),
    }
    labels.write_text('{"id": "p1", "prompt": "What is 3 + 3?"}\n')
    others["an edited labeled file"] = resume.checkpoint_key("ppo_policy", inputs, resolve("ppo_policy"))
    labels.write_text('{"id": "p1", "prompt": "What is 2 + 2?"}\n')
    monkeypatch.setenv("WORLD_SIZE", "2")
    others["another world size"] = resume.checkpoint_key("ppo_policy", inputs, resolve("ppo_policy"))
    monkeypatch.delenv("WORLD_SIZE")
    assert resume.checkpoint_key("ppo_policy", inputs, resolve("ppo_policy")) == key
    assert key not in others.values() and len(set(others.values())) == len(others), others


def test_one_run_at_a_time_owns_a_checkpoint_folder_which_is_gone_after_success(tmp_path):
    cfg, inputs = resolve("sft_model"), {"sft_dataset": str(tmp_path / "sft_dataset" / "run-a")}
    with resume.checkpointing("sft_model", inputs, cfg) as first:
        assert first is not None and first.is_relative_to(home_dir() / "checkpoints" / "sft_model")
        (first / "checkpoint-2").mkdir()
        with resume.checkpointing("sft_model", inputs, cfg) as second:  # a concurrent run with the same inputs
            assert second is None
        assert (first / "checkpoint-2").is_dir()
    assert not first.exists()
    with pytest.raises(RuntimeError), resume.checkpointing("sft_model", inputs, cfg) as failing:
        (failing / "checkpoint-2").mkdir()
        raise RuntimeError("out of memory")
    assert (failing / "checkpoint-2").is_dir()  # kept for the re-run
    with resume.checkpointing("sft_model", inputs, resolve("sft_model", {"checkpoint_every": 0})) as none:
        assert none is None
    shutil.rmtree(failing)


def test_a_volume_without_file_locks_still_checkpoints(tmp_path, monkeypatch, caplog):
    import errno
    import fcntl

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with resume.checkpointing("sft_model", {"sft_dataset": str(tmp_path / "run-a")}, resolve("sft_model")) as folder:
        assert folder is not None and folder.is_dir()
    assert not folder.exists() and "no file lock" in caplog.text


def test_a_half_written_trl_checkpoint_is_skipped_and_removed(tmp_path):
    for step in (4, 6):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "model.safetensors").write_bytes(b"")
    (tmp_path / "checkpoint-4" / "trainer_state.json").write_text(
        '{"global_step": 4}'
    )  # written last: checkpoint-6 was killed mid-save
    assert last_complete_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-4")
    assert not (tmp_path / "checkpoint-6").exists()
    assert last_complete_checkpoint(str(tmp_path / "checkpoint-4")) is None


@pytest.mark.slow
def test_a_killed_materialization_resumes_when_the_asset_is_materialized_again(smoke_run, isolated_env, tmp_path):
    """`dagster asset materialize --select ppo_policy`, SIGKILLed after its first checkpoint; materializing it again
    resumes: one new materialization, resumed, its checkpoints gone and nothing pointing at them."""
    defs, instance, _ = smoke_run
    before = instance.fetch_materializations(dg.AssetKey("ppo_policy"), limit=100).records
    run_config = {"ops": {"ppo_policy": {"config": PPO}}}
    (tmp_path / "run_config.json").write_text(json.dumps(run_config))
    inputs = {
        "sft_model": defs.load_asset_value("sft_model", instance=instance).path,
        "reward_model": defs.load_asset_value("reward_model", instance=instance).path,
        "prompts": str(isolated_env / "labels" / "prompts.jsonl"),
    }
    folder = _folder("ppo_policy", inputs, PPO)

    log = tmp_path / "killed.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dagster",
                "asset",
                "materialize",
                "-m",
                "rlhf_dag.definitions",
                "--select",
                "ppo_policy",
                "-c",
                str(tmp_path / "run_config.json"),
            ],
            cwd=REPO,
            env=dict(os.environ),
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _kill_at_first_checkpoint(proc, log, folder)
    k = _saved(folder)[-1]
    assert len(instance.fetch_materializations(dg.AssetKey("ppo_policy"), limit=100).records) == len(before)

    rerun = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance, asset_selection=[dg.AssetKey("ppo_policy")], run_config=run_config
    )
    assert rerun.success
    after = instance.fetch_materializations(dg.AssetKey("ppo_policy"), limit=100).records
    assert len(after) == len(before) + 1 and after[0].run_id == rerun.run_id
    handle = rerun.output_for_node("ppo_policy")
    assert handle.metrics["resumed_from_iteration"] == k > 0
    assert not folder.exists()
    handles = [json.loads(p.read_text())["path"] for p in (home_dir() / "handles").rglob("*.json")]
    materialized = [r.asset_materialization.metadata["path"].value for r in after]
    assert not [p for p in handles + materialized if Path(p).is_relative_to(checkpoints_dir())]
