"""Every test runs against a throwaway RLHF_DAG_HOME; the smoke graph is materialized once per session.

The environment is set when this file is imported, before any test module
imports rlhf_dag: asset code versions are computed from the active profile at
import time, exactly as `dagster dev` or the CLI would see them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ROOT = Path(tempfile.mkdtemp(prefix="rlhf_dag_tests_"))
shutil.copytree(REPO / "assets", ROOT / "labels")
(ROOT / "dagster").mkdir()
os.environ.update(
    {
        "RLHF_DAG_HOME": str(ROOT / "home"),
        "DAGSTER_HOME": str(ROOT / "dagster"),
        "RLHF_DAG_LABELS_DIR": str(ROOT / "labels"),
        "RLHF_DAG_PROFILE": "smoke",
    }
)
os.environ.pop("MLFLOW_TRACKING_URI", None)


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(ROOT, ignore_errors=True)


TESTS = Path(__file__).resolve().parent


def _assertion_helper(path: Path) -> bool:
    return "_pytest" in path.parts or (
        not path.resolve().is_relative_to(TESTS) and bool({"testing", "_testing"} & set(path.parts))
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With RLHF_DAG_FAILURE_LOG set (tests/mutants.py sets it), one JSON line per failed phase of a test: its node id,
    the phase (setup, call, teardown), the exception's type, and whether the innermost frame that raised it lies in
    tests/. A test "caught" a mutation only when it failed in its call phase on an assertion of its own."""
    outcome = yield
    report, log = outcome.get_result(), os.environ.get("RLHF_DAG_FAILURE_LOG")
    if not log or not report.failed or call.excinfo is None:
        return
    excinfo = call.excinfo
    # pytest.fail and pytest.raises raise from pytest's own code, and a library's assertion helpers
    # (torch.testing.assert_close, numpy.testing, pandas.testing) from theirs: the frame that counts is the innermost
    # one outside them
    frames = [entry for entry in excinfo.traceback if not _assertion_helper(Path(str(entry.path)))]
    raised_in = Path(str(frames[-1].path)).resolve() if frames else None
    record = {
        "nodeid": item.nodeid,
        "when": report.when,
        "exception": excinfo.typename,
        "assertion": excinfo.errisinstance((AssertionError, pytest.fail.Exception)),
        "in_tests": raised_in is not None and raised_in.is_relative_to(TESTS),
        "message": str(excinfo.value).splitlines()[0][:300] if str(excinfo.value) else "",
    }
    with open(log, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


@pytest.fixture(scope="session")
def isolated_env():
    """The session's temp root: home/, dagster/ and a copy of assets/ in labels/."""
    return ROOT


@pytest.fixture(scope="session")
def smoke_run(isolated_env):
    """The core graph (what `rlhf-dag run` builds), smoke profile, materialized in-process into the session's persistent
    instance; tests/test_methods.py adds the alternatives to PPO, and wipes them again."""
    import dagster as dg

    from rlhf_dag.definitions import build_definitions

    defs = build_definitions()
    instance = dg.DagsterInstance.get()
    defs.resolve_job_def("observe_labels").execute_in_process(instance=instance)
    result = defs.resolve_job_def("rlhf_graph").execute_in_process(instance=instance)
    assert result.success
    return defs, instance, result


@contextlib.contextmanager
def own_home(root: Path):
    """RLHF_DAG_HOME and DAGSTER_HOME in `root` for the block (the labels stay the session's): a graph of its own."""
    saved = {k: os.environ[k] for k in ("RLHF_DAG_HOME", "DAGSTER_HOME")}
    (root / "dagster").mkdir(parents=True, exist_ok=True)
    os.environ.update({"RLHF_DAG_HOME": str(root / "home"), "DAGSTER_HOME": str(root / "dagster")})
    try:
        yield
    finally:
        os.environ.update(saved)


@pytest.fixture(scope="session")
def user_model_run(isolated_env):
    """The whole smoke graph on a Qwen2 checkpoint a user brings (`base_model.pretrained`, tests/user_model.py),
    full fine-tune, in a Dagster instance and RLHF_DAG_HOME of its own: (defs, instance, result, root, checkpoint)."""
    import dagster as dg
    from user_model import save_user_model

    from rlhf_dag.definitions import build_definitions

    root = isolated_env / "user_model"
    checkpoint = save_user_model(root / "checkpoint")
    with own_home(root):
        defs = build_definitions()
        instance = dg.DagsterInstance.get()
        defs.resolve_job_def("observe_labels").execute_in_process(instance=instance)
        run_config = {"ops": {"base_model": {"config": {"pretrained": str(checkpoint)}}}}
        result = defs.resolve_job_def("rlhf_graph").execute_in_process(instance=instance, run_config=run_config)
    assert result.success
    return defs, instance, result, root, checkpoint


# LoRA on SFT, the reward model and PPO. PPO's learning rate is LoRA's usual tenfold: in the smoke profile's two
# iterations the adapter must move the policy measurably away from its reference.
LORA = {"r": 4, "alpha": 8.0}
LORA_RUN_CONFIG = {
    "ops": {
        "sft_model": {"config": {"lora": LORA}},
        "reward_model": {"config": {"lora": LORA}},
        "ppo_policy": {"config": {"lora": LORA, "learning_rate": 1e-3}},
    }
}


@pytest.fixture(scope="session")
def lora_run(user_model_run):
    """`sft_model`, `reward_model`, `ppo_policy` and `policy_evaluation` re-materialized with LoRA over the user model's graph."""
    import dagster as dg

    defs, instance, full, root, checkpoint = user_model_run
    with own_home(root):
        selection = [dg.AssetKey(a) for a in ("sft_model", "reward_model", "ppo_policy", "policy_evaluation")]
        result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
            instance=instance, asset_selection=selection, run_config=LORA_RUN_CONFIG
        )
    assert result.success
    return defs, instance, result, full
