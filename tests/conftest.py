"""Every test runs against a throwaway RLHF_DAG_HOME; the smoke graph is materialized once per session.

The environment is set when this file is imported, before any test module
imports rlhf_dag: asset code versions are computed from the active profile at
import time, exactly as `dagster dev` or the CLI would see them.
"""

from __future__ import annotations

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
