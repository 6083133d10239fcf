"""Human feedback in the loop, for real: `make label-studio` (Label Studio 1.23.2, SQLite, a free port), a labeling batch
pushed by `rlhf-dag label-batch`, rankings submitted through Label Studio's REST API by two people and by a third
through the labeling page in headless Chromium (mouse drags and clicks), then `rlhf-dag pull-labels`.

Needs `.venv-label-studio` (`make label-studio-setup`, which CI runs) and Chromium (`make ui-test-deps`).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import dagster as dg
import pytest
import requests
from browser import run_in_chromium, stop_process_group

from rlhf_dag.data.gold import gold_score

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
LABEL_STUDIO = REPO / ".venv-label-studio" / "bin" / "label-studio"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PASSWORD = "rank-them-all-42"
BATCH = "smoke-batch-1"
DOWNSTREAM = {"comparison_dataset", "reward_model", "ppo_policy", "policy_evaluation"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _person(url: str, email: str) -> str:
    """Sign up on Label Studio's page as a new labeler does, then create their personal access token (Account & Settings)."""
    session = requests.Session()
    session.get(f"{url}/user/signup/", timeout=30)
    answer = session.post(
        f"{url}/user/signup/",
        data={"email": email, "password": PASSWORD, "csrfmiddlewaretoken": session.cookies["csrftoken"]},
        headers={"Referer": url},
        allow_redirects=False,
        timeout=30,
    )
    assert answer.status_code == 302, answer.text[:500]
    token = session.post(
        f"{url}/api/token/", headers={"X-CSRFToken": session.cookies["csrftoken"], "Referer": url}, json={}, timeout=30
    )
    assert token.status_code == 201, token.text
    return token.json()["token"]


class Labeler:
    """One person's REST session: a personal access token exchanged for short-lived access tokens, as the docs say."""

    def __init__(self, url: str, email: str):
        self.url, self.email = url, email
        refresh = _person(url, email)
        access = requests.post(f"{url}/api/token/refresh/", json={"refresh": refresh}, timeout=30).json()["access"]
        self.token, self.headers = refresh, {"Authorization": f"Bearer {access}"}

    def get(self, path: str, **params):
        answer = requests.get(self.url + path, headers=self.headers, params=params, timeout=30)
        answer.raise_for_status()
        return answer.json()

    def annotate(self, task_id: int, result: list, cancelled: bool = False) -> None:
        answer = requests.post(
            f"{self.url}/api/tasks/{task_id}/annotations/",
            headers=self.headers,
            timeout=30,
            json={"result": result, "was_cancelled": cancelled},
        )
        assert answer.status_code == 201, answer.text

    def rank(self, task: dict, order: list[str]) -> None:
        self.annotate(
            task["id"],
            [{"from_name": "rank", "to_name": "responses", "type": "ranker", "value": {"ranker": {"rank": order}}}],
        )


@pytest.fixture(scope="session")
def label_studio(isolated_env, tmp_path_factory):
    """`make label-studio` on a free port, its SQLite store under the tests' RLHF_DAG_HOME; (url, seconds to answer)."""
    if not LABEL_STUDIO.exists() or CHROMIUM is None:
        message = "needs .venv-label-studio (`make label-studio-setup`) and Chromium (`make ui-test-deps`)"
        pytest.fail(message) if _in_ci() else pytest.skip(message)
    port = _free_port()
    log_path = tmp_path_factory.mktemp("label_studio") / "label_studio.log"
    started = time.perf_counter()
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            ["make", "--no-print-directory", "label-studio", f"LABEL_STUDIO_PORT={port}"],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 400
        while True:
            try:
                if requests.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert proc.poll() is None and time.time() < deadline, log_path.read_text()[-3000:]
            time.sleep(1)
        seconds = time.perf_counter() - started
        print(
            f"\nLabel Studio answered after {seconds:.1f}s (make label-studio, SQLite in {isolated_env / 'home' / 'label-studio'})"
        )
        yield url, seconds
    finally:
        stop_process_group(proc)


def _gold_order(task: dict) -> list[str]:
    """The task's response ids, best first by the gold labeler (ties keep the shown order)."""
    items = task["data"]["responses"]
    return [i["id"] for i in sorted(items, key=lambda i: -gold_score(task["data"]["prompt"], i["body"]).score)]


async def _click(page, x: float, y: float) -> None:
    for kind in ("mousePressed", "mouseReleased"):
        await page.send(
            "Input.dispatchMouseEvent",
            type=kind,
            x=x,
            y=y,
            button="left",
            buttons=1 if kind == "mousePressed" else 0,
            clickCount=1,
        )


async def _center(page, selector: str, index: int = 0) -> tuple[float, float]:
    rect = await page.js(
        f"(() => {{const r = document.querySelectorAll({json.dumps(selector)})[{index}].getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]}})()"
    )
    return rect[0], rect[1]


def _rank_in_the_browser(
    url: str, email: str, project: int, task_id: int, prompt: str, titles: list[str], screenshot: Path
) -> list[str]:
    """Log in on the login page, open the task, drag the last response to the top, Submit; returns the order shown."""

    async def script(page):
        await page.open(f"{url}/user/login/")
        await page.wait_for("!!document.querySelector('input[name=email]')")
        for field, text in (("email", email), ("password", PASSWORD)):
            await _click(page, *await _center(page, f"input[name={field}]"))
            await page.send("Input.insertText", text=text)
        await _click(page, *await _center(page, "form button[type=submit], form button"))
        await page.wait_for("location.pathname != '/user/login/'")
        await page.open(f"{url}/projects/{project}/data?task={task_id}")
        items, n = ".htx-ranker-item", len(titles)
        # the labeling stream opens on the task named in the address once its responses are all shown
        await page.wait_for(
            f"document.querySelectorAll('{items}').length == {n} && document.body.innerText.includes({json.dumps(prompt)})"
        )
        await asyncio.sleep(2)  # the labeling panel settles after its last request
        # the task opens on the others' annotations: a new one of her own, as the "+" beside their tabs makes
        await _click(page, *await _center(page, "button[aria-label='Create an annotation']"))
        submit = "Array.from(document.querySelectorAll('button')).findIndex(b => b.innerText.trim() == 'Submit')"
        await page.wait_for(
            f"{submit} >= 0 && Array.from(document.querySelectorAll('{items}')).map(e => e.innerText.split('\\n')[0]).join('|') == {json.dumps('|'.join(titles))}"
        )
        await asyncio.sleep(1)
        (x, y), (_, top) = await _center(page, items, n - 1), await _center(page, items, 0)
        mouse = dict(button="left", buttons=1)
        await page.send("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        await page.send("Input.dispatchMouseEvent", type="mousePressed", x=x, y=y, clickCount=1, **mouse)
        for step in range(1, 21):  # a drag, as a hand makes it: the list library needs movement to start one
            await page.send(
                "Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y + (top - 20 - y) * step / 20, **mouse
            )
            await asyncio.sleep(0.05)
        await page.send(
            "Input.dispatchMouseEvent", type="mouseReleased", x=x, y=top - 20, button="left", buttons=0, clickCount=1
        )
        await asyncio.sleep(1)
        order = await page.js(f"Array.from(document.querySelectorAll('{items}')).map(e => e.innerText.split('\\n')[0])")
        await page.screenshot(screenshot)
        await _click(page, *await _center(page, "button", await page.js(submit)))
        await asyncio.sleep(3)
        return order

    return run_in_chromium(CHROMIUM, _free_port(), script)


def _status_lines(capsys) -> dict[str, str]:
    from rlhf_dag.cli import main

    capsys.readouterr()
    assert main(["status"]) == 0
    # the alternatives to PPO, never built in this session's graph, are listed as optional: not part of the question
    return {
        line.split()[0]: line.split()[1]
        for line in capsys.readouterr().out.splitlines()[1:]
        if line.strip() and "(optional:" not in line
    }


def test_rank_in_label_studio_pull_into_comparisons_and_exactly_the_downstream_assets_go_stale(
    smoke_run, label_studio, isolated_env, monkeypatch, capsys, tmp_path
):
    from rlhf_dag.cli import main
    from rlhf_dag.config import resolve
    from rlhf_dag.training.steps import step_function

    url, start_seconds = label_studio
    defs, instance, result = smoke_run
    comparisons = isolated_env / "labels" / "comparisons.jsonl"
    shipped = comparisons.read_bytes()
    assert set(_status_lines(capsys).values()) == {"FRESH"}

    owner, alice, bob = (
        Labeler(url, "owner@example.com"),
        Labeler(url, "alice@example.com"),
        Labeler(url, "bob@example.com"),
    )
    _person(url, "carol@example.com")  # ranks in the browser
    monkeypatch.setenv("LABEL_STUDIO_URL", url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", owner.token)
    try:
        assert main(["label-batch", "--name", BATCH]) == 0
        (project,) = [p["id"] for p in owner.get("/api/projects/")["results"] if p["title"] == BATCH]
        tasks = owner.get("/api/tasks/", project=project, page_size=100)["tasks"]
        sft_run = (
            instance.get_latest_materialization_event(dg.AssetKey("sft_model"))
            .asset_materialization.metadata["mlflow_run_id"]
            .value
        )
        assert len(tasks) == resolve("labeling_candidates").prompts_per_batch
        for task in tasks:
            bodies = [r["body"] for r in task["data"]["responses"]]
            assert 2 <= len(bodies) <= 4 and len(set(bodies)) == len(bodies)  # K = 4, de-duplicated
            assert task["data"]["policy_run_id"] == sft_run and task["data"]["batch"] == BATCH

        first, second, third = tasks
        for task in tasks:
            alice.rank(task, _gold_order(task))
        for task in (first, second):
            bob.rank(task, _gold_order(task)[::-1])
        bob.annotate(third["id"], [], cancelled=True)  # Skip
        tied = [r["id"] for r in third["data"]["responses"]]
        owner.rank(third, [tied[0], *tied[:-1]])  # one response twice, one missing: not a ranking

        screenshot = tmp_path / "label_studio_ranking.png"
        titles, bodies = (
            [r["title"] for r in first["data"]["responses"]],
            [r["body"] for r in first["data"]["responses"]],
        )
        shown = _rank_in_the_browser(
            url, "carol@example.com", project, first["id"], first["data"]["prompt"], titles, screenshot
        )
        assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if os.environ.get("RLHF_DAG_SCREENSHOTS"):
            shutil.copy(screenshot, Path(os.environ["RLHF_DAG_SCREENSHOTS"]) / screenshot.name)
        assert shown == [titles[-1], *titles[:-1]]

        capsys.readouterr()
        assert main(["pull-labels"]) == 0
        report = capsys.readouterr()
        k = {t["id"]: len(t["data"]["responses"]) for t in tasks}
        rankings = [(alice.email, t) for t in tasks] + [
            (bob.email, first),
            (bob.email, second),
            ("carol@example.com", first),
        ]
        expected_pairs = sum(k[t["id"]] * (k[t["id"]] - 1) // 2 for _, t in rankings)
        assert f"+{expected_pairs} pairs from {len(rankings)} new ranking(s)" in report.out
        assert f"task {third['id']}" in report.err and "tied or repeated" in report.err  # the owner's ranking, rejected
        assert "skipped by the labeler" in report.out

        added = [json.loads(line) for line in comparisons.read_bytes()[len(shipped) :].decode().splitlines()]
        assert comparisons.read_bytes().startswith(shipped) and len(added) == expected_pairs
        for record in added:
            assert record["batch"] == BATCH and record["policy_run_id"] == sft_run and record["labeled_at"]
            assert record["labeler"] in {alice.email, bob.email, "carol@example.com"}
            assert record["task_id"] in {str(t["id"]) for t in tasks}
        by_ranking = {}
        for record in added:
            by_ranking.setdefault(record["ranking"], []).append(record)
        assert sorted(len(v) for v in by_ranking.values()) == sorted(
            k[t["id"]] * (k[t["id"]] - 1) // 2 for _, t in rankings
        )
        carol = [r for r in added if r["labeler"] == "carol@example.com"]
        assert {(r["chosen"], r["rejected"]) for r in carol} == set(
            itertools.combinations([bodies[-1], *bodies[:-1]], 2)
        )

        after_first_pull = comparisons.read_bytes()
        assert main(["pull-labels"]) == 0  # pulled twice: nothing added
        assert comparisons.read_bytes() == after_first_pull and "+0 pairs" in capsys.readouterr().out

        statuses = _status_lines(capsys)
        assert {a for a, s in statuses.items() if s == "STALE"} == DOWNSTREAM, statuses
        assert {a for a, s in statuses.items() if s != "STALE"} == {
            "pretraining_corpus",
            "base_model",
            "sft_dataset",
            "sft_model",
        }

        # agreement, as comparison_dataset reports it (its step, so the session's graph stays as it was)
        step = step_function("comparison_dataset")({"comparisons": str(comparisons)}, resolve("comparison_dataset"))
        m = step.metrics
        key = {email: email.replace("@", "_") for email in (alice.email, bob.email)}
        assert (
            m[f"agreement_gold.labeler.{key[alice.email]}"] == 1.0
            and m[f"agreement_gold.labeler.{key[bob.email]}"] == 0.0
        )
        assert bob.email in step.tags["flagged_labelers"] and alice.email not in step.tags["flagged_labelers"]
        assert m["human_rankings"] == len(rankings)
        print(
            f"\nLabel Studio start {start_seconds:.1f}s; pairs per ranking {expected_pairs / len(rankings):.2f} (K per task {sorted(k.values())}); "
            f"agreement: inter-labeler {m['agreement_inter_labeler']:.3f} on {m['agreement_inter_labeler.pairs']} pair judgements, "
            f"labeler vs gold {m['agreement_gold']:.3f} on {m['agreement_gold.pairs']}; flagged: {step.tags['flagged_labelers']}"
        )
    finally:
        comparisons.write_bytes(shipped)
        from rlhf_dag.pipeline.lineage import observe_labels

        observe_labels(defs, instance)
