"""Every test runs against a throwaway RLHF_DAG_HOME; the smoke graph is materialized once per session."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def isolated_env(tmp_path_factory):
    """RLHF_DAG_HOME, DAGSTER_HOME and the labels dir in a temp dir, smoke profile; restored afterwards."""
    root = tmp_path_factory.mktemp("rlhf_dag")
    labels = root / "labels"
    shutil.copytree(REPO / "assets", labels)
    env = {
        "RLHF_DAG_HOME": str(root / "home"),
        "DAGSTER_HOME": str(root / "dagster"),
        "RLHF_DAG_LABELS_DIR": str(labels),
        "RLHF_DAG_PROFILE": "smoke",
        "MLFLOW_TRACKING_URI": "",
    }
    Path(env["DAGSTER_HOME"]).mkdir(parents=True)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    os.environ.pop("MLFLOW_TRACKING_URI")
    yield root
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def smoke_run(isolated_env):
    """The whole graph, smoke profile, materialized in-process into a persistent test instance."""
    import dagster as dg

    from rlhf_dag.definitions import build_definitions

    defs = build_definitions()
    instance = dg.DagsterInstance.get()
    defs.resolve_job_def("observe_labels").execute_in_process(instance=instance)
    result = defs.resolve_implicit_global_asset_job_def().execute_in_process(instance=instance)
    assert result.success
    return defs, instance, result
