"""Label Studio: the ranking project, its tasks, and its annotations read back as rankings (no Dagster here).

One project per labeling batch, with the ranking interface (`LABEL_CONFIG`): the prompt, then its K
responses as a list the labeler drags into order, best at the top (Label Studio's `List` + `Ranker`).
Ranking, not pairwise, because one ranking of K responses gives C(K, 2) comparisons for reading K
responses once, and they are consistent by construction (InstructGPT, section 3.5); the pairwise
template asks K(K-1)/2 separate questions for the same information.

The REST calls are those `label-studio-sdk` 2.x wraps (projects, import, export, users, token refresh),
made with `requests`: the SDK's own dependencies cap numpy below the project's (2.1.2) or pull opencv,
nltk and black into the training environment (2.0.x). Authentication is Label Studio 1.23's personal
access token: a long-lived refresh token, exchanged at `/api/token/refresh/` for a short-lived access
token sent as `Bearer` (a legacy token, if the organization enabled them, is sent as `Token`).

A Label Studio JSON export (`Export` -> JSON in the project's Data Manager) is read by `rankings_from_export`,
the same code that reads a live pull: a ranking project made here, or a pairwise project of Label Studio's
"Human preference collection for RLHF" template (`Pairwise` over two `Text` fields).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from .feedback import Ranking

LABEL_CONFIG = """<View>
  <Header value="Rank the responses: drag the best to the top, the worst to the bottom."/>
  <Text name="prompt" value="$prompt"/>
  <List name="responses" value="$responses" title="Responses"/>
  <Ranker name="rank" toName="responses"/>
  <Style>.htx-ranker-item p:last-child { display: none }</Style>
</View>"""


class LabelStudioError(RuntimeError):
    """Label Studio could not be reached, refused the token, or answered with an error; the message says what to do."""


def responses_sha256(responses: list[str]) -> str:
    """A task's fingerprint: a pull refuses a task whose responses were edited after the batch was pushed."""
    return hashlib.sha256(json.dumps(responses, ensure_ascii=False).encode("utf-8")).hexdigest()


def task_data(prompt_id: str, prompt: str, responses: list[str], batch: str, policy: str, policy_run_id: str) -> dict:
    """One labeling task: a prompt and its (de-duplicated) responses, with where they came from."""
    items = [
        {"id": f"r{i}", "title": f"Response {chr(ord('A') + i)}", "body": text} for i, text in enumerate(responses)
    ]
    return {
        "prompt": prompt,
        "prompt_id": prompt_id,
        "responses": items,
        "batch": batch,
        "policy": policy,
        "policy_run_id": policy_run_id,
        "responses_sha256": responses_sha256(responses),
    }


@dataclass
class PulledRankings:
    """What a pull or an export gave: valid rankings, and the annotations left out with the reason for each."""

    rankings: list[Ranking] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # skipped or cancelled by the labeler: not an error
    rejected: list[str] = field(default_factory=list)  # unusable annotations: ties, missing responses, edited tasks


def _labeler(completed_by, users: dict[int, str]) -> str:
    if isinstance(completed_by, dict):  # older exports expand the user
        return completed_by.get("email") or f"user {completed_by.get('id')}"
    return users.get(completed_by, f"user {completed_by}")


def _ranked_responses(task: dict, result: list[dict], where: str) -> tuple[str, ...]:
    """The task's responses best first, from a ranker result (all K, each once) or a pairwise choice."""
    data = task.get("data", {})
    for region in result:
        if region.get("type") == "ranker":
            items = {item["id"]: item["body"] for item in data.get("responses", [])}
            order = next(iter(region.get("value", {}).get("ranker", {}).values()), [])
            if sorted(order) != sorted(items):
                missing, repeated = sorted(set(items) - set(order)), sorted({i for i in order if order.count(i) > 1})
                raise ValueError(
                    f"{where}: the ranking must order every response once (tied or repeated: {repeated or 'none'}, "
                    f"missing: {missing or 'none'}, unknown: {sorted(set(order) - set(items)) or 'none'}); re-rank it in Label Studio"
                )
            return tuple(items[i] for i in order)
        if region.get("type") == "pairwise":
            left, right = region.get("to_name", "").split(",") if "," in region.get("to_name", "") else (None, None)
            selected = region.get("value", {}).get("selected")
            if left not in data or right not in data or selected not in ("left", "right"):
                raise ValueError(
                    f"{where}: a pairwise choice needs data fields named as its two Text tags and 'selected' left or right"
                )
            return (data[left], data[right]) if selected == "left" else (data[right], data[left])
    raise ValueError(
        f"{where}: no ranking in the annotation (submitted without moving a response? move one and back, then update)"
    )


def rankings_from_export(tasks: list[dict], source: str, users: dict[int, str] | None = None) -> PulledRankings:
    """Rankings from Label Studio's JSON export format (a list of tasks with their annotations).

    `source` names the project or file, for messages and for the ranking keys; `users` maps user ids to
    emails (a live pull knows them; an export file carries ids, read as "user <id>").
    """
    out, users = PulledRankings(), users or {}
    for task in tasks:
        data = task.get("data", {})
        where_task = f"{source}: task {task.get('id')}"
        if not task.get("annotations"):
            continue  # not labeled yet
        if "responses" in data and data.get("responses_sha256") != responses_sha256(
            [r.get("body") for r in data["responses"]]
        ):
            out.rejected.append(
                f"{where_task}: its responses were edited after the batch was pushed (responses_sha256 differs); "
                f"these rankings do not judge what the policy wrote, so they are left out"
            )
            continue
        prompt = data.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            out.rejected.append(f"{where_task}: no 'prompt' field in the task data")
            continue
        for annotation in task["annotations"]:
            labeler = _labeler(annotation.get("completed_by"), users)
            where = f"{where_task}, annotation {annotation.get('id')} by {labeler}"
            if annotation.get("was_cancelled"):
                out.skipped.append(f"{where}: skipped by the labeler")
                continue
            try:
                ranked = _ranked_responses(task, annotation.get("result") or [], where)
            except ValueError as err:
                out.rejected.append(str(err))
                continue
            if len(set(ranked)) < 2:
                out.rejected.append(f"{where}: fewer than two different responses to compare")
                continue
            out.rankings.append(
                Ranking(
                    # the annotation's own id: the same in a live pull and in an export of the project
                    key=annotation.get("unique_id") or f"{source}:{task.get('id')}:{annotation.get('id')}",
                    prompt=prompt,
                    responses=ranked,
                    labeler=labeler,
                    labeled_at=str(annotation.get("updated_at") or annotation.get("created_at") or ""),
                    batch=str(data.get("batch", source)),
                    task_id=str(task.get("id")),
                    policy_run_id=str(data.get("policy_run_id", "")),
                )
            )
    return out


def read_export(path: Path | str) -> PulledRankings:
    """A Label Studio JSON export file, read as rankings (the file's stem is its source name)."""
    path = Path(path)
    try:
        tasks = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(
            f"{path}: not a Label Studio JSON export ({err}); export the project as JSON, not JSON-MIN or CSV"
        ) from None
    if not isinstance(tasks, list) or not all(isinstance(t, dict) and "data" in t for t in tasks):
        raise ValueError(
            f"{path}: not a Label Studio JSON export (expected a list of tasks with 'data' and 'annotations'); "
            f"export the project as JSON, not JSON-MIN or CSV"
        )
    return rankings_from_export(tasks, path.stem)


class LabelStudioClient:
    """The REST API of a Label Studio server, authenticated with a personal access token (or a legacy token)."""

    def __init__(self, url: str, token: str, timeout: float = 30):
        if not token:
            raise LabelStudioError(
                "no Label Studio token: set LABEL_STUDIO_API_KEY to your personal access token "
                "(Label Studio -> Account & Settings -> Personal Access Token -> Create; docs/labeling.md)"
            )
        self.url, self.token, self.timeout = url.rstrip("/"), token, timeout
        self._access: tuple[str, float] | None = None

    def _auth_header(self) -> dict:
        if self.token.count(".") != 2:  # a legacy token is not a JWT
            return {"Authorization": f"Token {self.token}"}
        if self._access is None or time.time() > self._access[1]:
            access = self._call("POST", "/api/token/refresh/", json={"refresh": self.token}, auth=False)["access"]
            self._access = (access, time.time() + 240)  # access tokens live 5 minutes by default
        return {"Authorization": f"Bearer {self._access[0]}"}

    def _call(self, method: str, path: str, auth: bool = True, **kwargs):
        import requests

        try:
            response = requests.request(
                method, self.url + path, headers=self._auth_header() if auth else {}, timeout=self.timeout, **kwargs
            )
        except requests.ConnectionError:
            raise LabelStudioError(
                f"Label Studio is not reachable at {self.url} (start it with `make label-studio`, or set LABEL_STUDIO_URL)"
            ) from None
        except requests.Timeout:
            raise LabelStudioError(
                f"Label Studio at {self.url} did not answer {method} {path} within {self.timeout:.0f}s"
            ) from None
        if response.status_code == 401:
            raise LabelStudioError(
                f"Label Studio at {self.url} refused the token ({response.text[:200]}): set LABEL_STUDIO_API_KEY to a valid "
                f"personal access token (Account & Settings -> Personal Access Token; docs/labeling.md)"
            )
        if response.status_code >= 400:
            raise LabelStudioError(
                f"Label Studio at {self.url}: {method} {path} answered {response.status_code}: {response.text[:300]}"
            )
        return response.json() if response.content else None

    def project_id(self, title: str) -> int | None:
        projects = self._call("GET", "/api/projects/", params={"title": title, "page_size": 1000})
        matches = [p["id"] for p in projects.get("results", projects) if p.get("title") == title]
        return matches[0] if matches else None

    def create_project(self, title: str, description: str) -> int:
        return self._call(
            "POST", "/api/projects/", json={"title": title, "description": description, "label_config": LABEL_CONFIG}
        )["id"]

    def import_tasks(self, project_id: int, tasks: list[dict]) -> int:
        return self._call("POST", f"/api/projects/{project_id}/import", json=[{"data": t} for t in tasks])["task_count"]

    def export(self, project_id: int) -> list[dict]:
        """Every task of the project with its annotations, in the JSON export format (cancelled ones included)."""
        return self._call(
            "GET", f"/api/projects/{project_id}/export", params={"exportType": "JSON", "download_all_tasks": "true"}
        )

    def users(self) -> dict[int, str]:
        return {
            u["id"]: u.get("email") or u.get("username") or f"user {u['id']}" for u in self._call("GET", "/api/users/")
        }

    def pull(self, batch: str) -> PulledRankings:
        """The rankings of a batch's project so far."""
        project = self.project_id(batch)
        if project is None:
            raise LabelStudioError(
                f"Label Studio at {self.url} has no project '{batch}': materialize that labeling_candidates partition first"
            )
        return rankings_from_export(self.export(project), batch, self.users())
