"""The web UI as a user drives it: `dagster dev` on 127.0.0.1, a run launched over GraphQL, the graph page in real Chromium."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from browser import run_in_chromium, stop_process_group

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ASSETS = [
    "pretraining_corpus",
    "base_model",
    "sft_dataset",
    "sft_model",
    "comparison_dataset",
    "reward_model",
    "ppo_policy",
    "policy_evaluation",
]


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
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1800,1000",
        "--virtual-time-budget=20000",
    ]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120)


def _in_ci() -> bool:
    """CI=true (or 1, yes) as CI services set it; CI=false or unset is a developer's machine."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def dagster_dev(tmp_path_factory):
    if CHROMIUM is None:  # decided before `dagster dev` starts, which takes up to minutes to answer
        message = "Chromium is not installed: `make ui-test-deps` installs Debian's chromium"
        pytest.fail(message) if _in_ci() else pytest.skip(message)
    tmp_path = tmp_path_factory.mktemp("ui")
    port = _free_port()
    labels = tmp_path / "labels"
    shutil.copytree(REPO / "assets", labels)
    env = {
        **os.environ,
        "RLHF_DAG_HOME": str(tmp_path / "home"),
        "DAGSTER_HOME": str(tmp_path / "dagster"),
        "RLHF_DAG_LABELS_DIR": str(labels),
        "RLHF_DAG_PROFILE": "smoke",
        "RLHF_DAG_AUTOMATION": "off",
    }  # no automation run racing the one this test launches
    env.pop("MLFLOW_TRACKING_URI", None)
    Path(env["DAGSTER_HOME"]).mkdir()
    log = (tmp_path / "dagster_dev.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dagster", "dev", "-h", "127.0.0.1", "-p", str(port), "-w", "workspace.yaml"],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        _wait_for(f"http://127.0.0.1:{port}/server_info", timeout=180)
        # The first visit shows a community sign-up dialog; mark it seen as a user's click would.
        _graphql(port, "mutation { setNuxSeen }")
        yield port, tmp_path, env
    finally:
        stop_process_group(proc)
        log.close()


@pytest.fixture(scope="session")
def materialized(dagster_dev):
    """The whole graph, launched from the UI's GraphQL as the Materialize button does."""
    from dagster import DagsterRunStatus
    from dagster_graphql import DagsterGraphQLClient

    port, tmp_path, env = dagster_dev
    client = DagsterGraphQLClient("127.0.0.1", port_number=port)

    def run(job: str, **selection) -> str:
        # the labeling location (workspace.yaml) has an asset job of its own: name the training graph's location
        run_id = client.submit_job_execution(
            job, repository_location_name="rlhf_dag", repository_name="__repository__", **selection
        )
        deadline = time.time() + 420
        status = client.get_run_status(run_id)
        while (
            status not in (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED)
            and time.time() < deadline
        ):
            time.sleep(3)
            status = client.get_run_status(run_id)
        assert status == DagsterRunStatus.SUCCESS, (tmp_path / "dagster_dev.log").read_text()[-3000:]
        return run_id

    run("observe_labels")  # what the automation does when it starts (off here)
    return port, tmp_path, env, run("__ASSET_JOB", asset_selection=ASSETS)


def _graphql(port: int, query: str) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        answer = json.load(response)
    assert "errors" not in answer, answer
    return answer["data"]


def test_launch_a_run_over_graphql_and_see_the_graph_in_chromium(materialized):
    port, tmp_path, _, run_id = materialized
    assert list((tmp_path / "home" / "artifacts" / "ppo_policy").glob(f"{run_id}/*.safetensors"))
    url = f"http://127.0.0.1:{port}/locations/rlhf_dag/asset-groups/rlhf"
    # the graph renders only the nodes in view; the alternatives to PPO and the labeling batches beside this group
    # widen it, so the page is dumped from a large window (a later --window-size wins)
    dom = _chromium("--window-size=4000,3000", "--dump-dom", url).stdout
    for asset in ASSETS:
        assert asset in dom, dom[-2000:]
    screenshot = tmp_path / "asset_graph.png"
    _chromium(f"--screenshot={screenshot}", url)
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 20_000
    _keep_screenshots([screenshot])


def _keep_screenshots(paths) -> None:
    """`make screenshots` sets RLHF_DAG_SCREENSHOTS=docs/images: the README's pictures come from this test's pages."""
    if os.environ.get("RLHF_DAG_SCREENSHOTS"):
        for path in paths:
            shutil.copy(path, Path(os.environ["RLHF_DAG_SCREENSHOTS"]) / path.name)


def _status(env: dict) -> dict[str, str]:
    """`rlhf-dag status` as a user runs it (it observes the label files first): asset -> FRESH / STALE / MISSING,
    leaving out the alternatives to PPO this test never asks for (MISSING, "optional")."""
    out = subprocess.run(
        [sys.executable, "-m", "rlhf_dag.cli", "status"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    return {
        line.split()[0]: line.split()[1] for line in out.splitlines()[1:] if line.strip() and "(optional" not in line
    }


def _unsynced_in_the_ui(port: int) -> dict[str, str]:
    """Each asset's stale status as the UI's asset graph reads it ("Unsynced" is STALE)."""
    nodes = _graphql(port, "{ assetNodes { assetKey { path } isMaterializable staleStatus } }")["assetNodes"]
    return {
        "/".join(n["assetKey"]["path"]): n["staleStatus"]
        for n in nodes
        if n["isMaterializable"] and "/".join(n["assetKey"]["path"]) in ASSETS
    }


def test_the_ui_marks_unsynced_exactly_what_status_calls_stale(materialized):
    port, tmp_path, env, _ = materialized
    path = tmp_path / "labels" / "comparisons.jsonl"
    original = path.read_bytes()
    path.write_bytes(
        original
        + (
            json.dumps({"id": "ui-edit", "prompt": "What is 1 + 1?", "chosen": "1 + 1 = 2.", "rejected": "1 + 1 = 3."})
            + "\n"
        ).encode()
    )
    try:
        status = _status(env)
        ui = _unsynced_in_the_ui(port)
        assert {k for k, v in status.items() if v == "STALE"} == {
            "comparison_dataset",
            "reward_model",
            "ppo_policy",
            "policy_evaluation",
        }
        assert ui == status
    finally:
        path.write_bytes(original)
    status = _status(env)
    assert set(status.values()) == {"FRESH"} and _unsynced_in_the_ui(port) == status


def test_policy_evaluation_page_shows_the_plot_and_a_clickable_mlflow_link(materialized):
    """The asset page as a user opens it: an MLflow link, the RM-vs-gold plot; screenshots of three asset pages
    (copied to docs/images when RLHF_DAG_SCREENSHOTS names that folder: `make screenshots`)."""
    port, tmp_path, _, run_id = materialized
    shots = tmp_path / "screenshots"
    shots.mkdir()
    base = f"http://127.0.0.1:{port}/assets"
    row = "[...document.querySelectorAll('tr')].find(tr => tr.querySelector('td') && tr.querySelector('td').innerText.trim() === '{}')"

    async def visit(page):
        seen = {}
        for asset in ("base_model", "ppo_policy"):
            await page.open(f"{base}/{asset}")
            await page.wait_for(f"!!{row.format('mlflow')}")
            await page.screenshot(shots / f"asset_{asset}.png")
        await page.open(f"{base}/policy_evaluation")
        seen["link"] = await page.wait_for(
            f"(() => {{ const a = {row.format('mlflow')}?.querySelector('a[href]'); return a && a.href }})()"
        )
        # Inline in the table: the plot as the MLflow UI serves it.
        seen["inline"] = await page.wait_for(
            f"{row.format('rm_vs_gold_plot')}?.querySelector('img')?.getAttribute('src')"
        )
        # The embedded copy, one click away, needs nothing else running: it must decode to a picture.
        await page.js(
            f"(() => {{ const r = {row.format('rm_vs_gold_png')}; r.scrollIntoView(); [...r.querySelectorAll('a')].find(a => a.innerText.includes('Show Markdown')).click() }})()"
        )
        seen["width"] = await page.wait_for(
            "(() => { const i = document.querySelector('[role=dialog] img'); return i && i.complete && i.naturalWidth })()"
        )
        await page.screenshot(shots / "asset_policy_evaluation_plot.png")
        await page.js(
            "[...document.querySelectorAll('[role=dialog] button')].find(b => b.innerText === 'Close').click()"
        )
        await page.wait_for("!document.querySelector('[role=dialog]')")
        await page.js(f"{row.format('mlflow')}.scrollIntoView({{block: 'center'}})")
        await page.screenshot(shots / "asset_policy_evaluation.png")
        return seen

    seen = run_in_chromium(CHROMIUM, _free_port(), visit)
    assert seen["link"].startswith("http://127.0.0.1:5000/#/experiments/") and seen["link"].endswith(
        f"/runs/{_mlflow_run_id(tmp_path, run_id)}"
    )
    assert seen["inline"].startswith("http://127.0.0.1:5000/get-artifact?path=rm_vs_gold.png&run_uuid=")
    assert seen["width"] > 100
    for shot in shots.iterdir():
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000, shot
    _keep_screenshots(shots.iterdir())


def _mlflow_run_id(tmp_path: Path, run_id: str) -> str:
    """policy_evaluation's MLflow run id, from the handle the run wrote."""
    return json.loads((tmp_path / "home" / "handles" / "policy_evaluation" / f"{run_id}.json").read_text())[
        "mlflow_run_id"
    ]


def test_make_ui_and_mlflow_ui_bind_localhost_only():
    """What `make ui` and `make mlflow-ui` run (make -n prints the commands without running them)."""
    commands = subprocess.run(
        ["make", "-n", "ui", "mlflow-ui"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    (dagster,) = [c for c in commands if "dagster dev" in c]
    (mlflow,) = [c for c in commands if "mlflow ui" in c]
    assert " -h 127.0.0.1 " in dagster and " --host 127.0.0.1 " in mlflow
    assert "0.0.0.0" not in dagster + mlflow
