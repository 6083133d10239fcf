"""The web UI as a user drives it: `dagster dev` on 127.0.0.1, a run launched over GraphQL, the graph page in real Chromium."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ASSETS = ["pretraining_corpus", "base_model", "sft_dataset", "sft_model", "comparison_dataset", "reward_model", "ppo_policy", "policy_evaluation"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(url: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def _chromium(*args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--window-size=1800,1000", "--virtual-time-budget=20000"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120)


def _in_ci() -> bool:
    """CI=true (or 1, yes) as CI services set it; CI=false or unset is a developer's machine."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@pytest.fixture()
def dagster_dev(tmp_path):
    if CHROMIUM is None:  # decided before `dagster dev` starts, which takes up to minutes to answer
        message = "Chromium is not installed: `make ui-test-deps` installs Debian's chromium"
        pytest.fail(message) if _in_ci() else pytest.skip(message)
    port = _free_port()
    labels = tmp_path / "labels"
    shutil.copytree(REPO / "assets", labels)
    env = {**os.environ, "RLHF_DAG_HOME": str(tmp_path / "home"), "DAGSTER_HOME": str(tmp_path / "dagster"),
           "RLHF_DAG_LABELS_DIR": str(labels), "RLHF_DAG_PROFILE": "smoke",
           "RLHF_DAG_AUTOMATION": "off"}  # no automation run racing the one this test launches
    env.pop("MLFLOW_TRACKING_URI", None)
    Path(env["DAGSTER_HOME"]).mkdir()
    log = (tmp_path / "dagster_dev.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "dagster", "dev", "-h", "127.0.0.1", "-p", str(port), "-w", "workspace.yaml"],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for(f"http://127.0.0.1:{port}/server_info", timeout=180)
        yield port, tmp_path
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def test_launch_a_run_over_graphql_and_see_the_graph_in_chromium(dagster_dev):
    from dagster import DagsterRunStatus
    from dagster_graphql import DagsterGraphQLClient

    port, tmp_path = dagster_dev
    client = DagsterGraphQLClient("127.0.0.1", port_number=port)
    run_id = client.submit_job_execution("__ASSET_JOB", asset_selection=ASSETS)
    deadline = time.time() + 420
    status = client.get_run_status(run_id)
    while status not in (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED) and time.time() < deadline:
        time.sleep(3)
        status = client.get_run_status(run_id)
    assert status == DagsterRunStatus.SUCCESS, (tmp_path / "dagster_dev.log").read_text()[-3000:]
    assert list((tmp_path / "home" / "artifacts" / "ppo_policy").glob(f"{run_id}/*.safetensors"))

    # The first visit shows a community sign-up dialog; mark it seen as a user's click would.
    request = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=b'{"query": "mutation { setNuxSeen }"}', headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=30).read()
    url = f"http://127.0.0.1:{port}/locations/rlhf_dag/asset-groups/rlhf"
    dom = _chromium("--dump-dom", url).stdout
    for asset in ASSETS:
        assert asset in dom, dom[-2000:]
    screenshot = tmp_path / "asset_graph.png"
    _chromium(f"--screenshot={screenshot}", url)
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 20_000


def test_make_ui_and_mlflow_ui_bind_localhost_only():
    """What `make ui` and `make mlflow-ui` run (make -n prints the commands without running them)."""
    commands = subprocess.run(["make", "-n", "ui", "mlflow-ui"], cwd=REPO, capture_output=True, text=True, check=True).stdout.splitlines()
    (dagster,) = [c for c in commands if "dagster dev" in c]
    (mlflow,) = [c for c in commands if "mlflow ui" in c]
    assert " -h 127.0.0.1 " in dagster and " --host 127.0.0.1 " in mlflow
    assert "0.0.0.0" not in dagster + mlflow
