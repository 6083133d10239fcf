"""Human rankings -> (chosen, rejected) comparisons with provenance, appended to the comparisons file; agreement.

A labeler who ranks K responses to a prompt makes C(K, 2) comparisons at once (InstructGPT, section 3.5):
response i is preferred to response j whenever i is ranked above j. Every pair keeps where it came from
(`labels.PROVENANCE`): who ranked, when, in which labeling batch and Label Studio task, and which policy run wrote
the responses. `ranking` identifies the annotation, so the reward model can treat one ranking's pairs as one
batch element and a second pull of the same annotation adds nothing.

Agreement is measured on pairs, as labeling teams report it: two labelers agree on a pair of responses
when they put them in the same order; a labeler agrees with the gold labeler (docs/gold_labeler.md)
when the response they preferred has the higher gold score.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import json
import re
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from ..artifacts import atomic_path
from .label_files import load_labels

# A labeler whose agreement is this far below the median of the others' is flagged for review.
OUTLIER_MARGIN = 0.2


@dataclass(frozen=True)
class Ranking:
    """One labeler's ordering of a task's responses, best first."""

    key: str  # unique per annotation: `<source>:<task id>:<annotation id>`
    prompt: str
    responses: tuple[str, ...]  # best first
    labeler: str
    labeled_at: str
    batch: str
    task_id: str
    policy_run_id: str


def batch_prompts(records: list[dict], batch: str, n: int) -> list[dict]:
    """The `n` prompts of a labeling batch: ordered by a hash of (batch, prompt id), so each batch draws its own
    and re-making a batch draws the same."""

    def position(record: dict) -> str:
        return hashlib.sha256(f"{batch}:{record['id']}".encode()).hexdigest()

    return sorted(records, key=position)[:n]


def ranking_pairs(ranking: Ranking) -> list[dict]:
    """The ranking's C(K, 2) comparisons, each with the ranking's provenance."""
    records = []
    for n, (i, j) in enumerate(itertools.combinations(range(len(ranking.responses)), 2)):
        records.append(
            {
                "id": f"{ranking.key}:{n}",
                "prompt": ranking.prompt,
                "chosen": ranking.responses[i],
                "rejected": ranking.responses[j],
                "ranking": ranking.key,
                "labeler": ranking.labeler,
                "labeled_at": ranking.labeled_at,
                "batch": ranking.batch,
                "task_id": ranking.task_id,
                "policy_run_id": ranking.policy_run_id,
            }
        )
    return records


@contextlib.contextmanager
def _locked(path: Path):
    """One writer at a time (the sensor and `rlhf-dag pull-labels` may pull together)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def append_rankings(path: Path | str, rankings: list[Ranking]) -> tuple[int, int]:
    """Append the pairs of the rankings not yet in the comparisons file; returns (rankings added, pairs added).

    The file is validated first (a broken file is never extended) and rewritten whole under a temporary
    name, then renamed: a reader sees the old file or the new one, never half of it. A ranking already in
    the file (same annotation) is skipped, so pulling twice adds nothing.
    """
    path = Path(path)
    with _locked(path):
        old = path.read_bytes() if path.is_file() else b""
        present = {r.get("ranking") for r in load_labels(path, "comparisons").records} if old.strip() else set()
        new = [r for r in dict.fromkeys(rankings) if r.key not in present]
        if not new:
            return 0, 0
        lines = [json.dumps(record, ensure_ascii=False) for ranking in new for record in ranking_pairs(ranking)]
        with atomic_path(path) as tmp:
            tmp.write_bytes(
                old + (b"" if not old or old.endswith(b"\n") else b"\n") + ("\n".join(lines) + "\n").encode("utf-8")
            )
            load_labels(tmp, "comparisons")  # the new file must load, or the old one stays
        return len(new), len(lines)


def _metric_key(name: str) -> str:
    """A labeler or batch name as an MLflow metric key part (MLflow allows letters, digits, _ - . / and space)."""
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", name)


def _judgements(records: list[dict]) -> dict[tuple, dict[str, bool]]:
    """(batch, task, unordered pair) -> {labeler: True if they preferred the pair's first response}."""
    out: dict[tuple, dict[str, bool]] = defaultdict(dict)
    for r in records:
        if r.get("labeler") and r.get("task_id"):
            first, second = sorted((r["chosen"], r["rejected"]))
            out[(r.get("batch", ""), r["task_id"], first, second)][r["labeler"]] = r["chosen"] == first
    return out


def agreement(records: list[dict], gold=None) -> dict:
    """Inter-labeler and labeler-vs-gold agreement on pairs, overall, per batch and per labeler; flagged labelers.

    `gold(prompt, response) -> float | None` judges a response (None: it cannot, the pair is left out).
    Only human-ranked records (with a labeler) count. Returns {"metrics": {name: value}, "flagged": [labeler],
    "table": Markdown}.
    """
    human = [r for r in records if r.get("labeler")]
    inter = defaultdict(lambda: [0, 0])  # (scope, name) -> [agreements, comparisons]
    for (batch, _, _, _), by_labeler in _judgements(human).items():
        for a, b in itertools.combinations(sorted(by_labeler), 2):
            same = by_labeler[a] == by_labeler[b]
            for scope in (("all", ""), ("batch", batch), ("labeler", a), ("labeler", b)):
                inter[scope][0] += same
                inter[scope][1] += 1
    versus_gold = defaultdict(lambda: [0, 0])
    if gold is not None:
        for r in human:
            chosen, rejected = gold(r["prompt"], r["chosen"]), gold(r["prompt"], r["rejected"])
            if chosen is None or rejected is None or chosen == rejected:
                continue
            for scope in (("all", ""), ("batch", r.get("batch", "")), ("labeler", r["labeler"])):
                versus_gold[scope][0] += chosen > rejected
                versus_gold[scope][1] += 1
    metrics, rates = {}, {}
    for label, counts in (("inter_labeler", inter), ("gold", versus_gold)):
        for (scope, name), (agree, total) in counts.items():
            key = f"agreement_{label}" if scope == "all" else f"agreement_{label}.{scope}.{_metric_key(name)}"
            metrics[key], metrics[f"{key}.pairs"] = agree / total, total
            if scope == "labeler":
                rates.setdefault(label, {})[name] = agree / total

    def outliers(by: dict) -> set:
        return {
            labeler
            for labeler, rate in by.items()
            if len(by) >= 2 and rate < statistics.median([v for k, v in by.items() if k != labeler]) - OUTLIER_MARGIN
        }

    # A labeler with gold-judged pairs is judged against gold: among three labelers, agreement with the others
    # singles out whoever is in the minority, right or wrong. Agreement with the others judges the rest.
    by_gold = rates.get("gold", {})
    flagged = sorted(
        outliers(by_gold) | {labeler for labeler in outliers(rates.get("inter_labeler", {})) if labeler not in by_gold}
    )

    def cell(counts, scope):
        agree, total = counts.get(scope, (0, 0))
        return f"{agree / total:.3f} ({total})" if total else "-"

    rows = []
    for scope in ("labeler", "batch"):
        names = sorted({r.get(scope, "") for r in human})
        rows += [
            f"| {scope} | pairs | agreement with other labelers (pair judgements) | agreement with gold (pairs) |"
            + (" flagged |" if scope == "labeler" else ""),
            "|---|---:|---|---|" + ("---|" if scope == "labeler" else ""),
            *(
                f"| {name} | {sum(r.get(scope, '') == name for r in human)} | {cell(inter, (scope, name))} | {cell(versus_gold, (scope, name))} |"
                + (f" {'yes' if name in flagged else ''} |" if scope == "labeler" else "")
                for name in names
            ),
            "",
        ]
    return {"metrics": metrics, "flagged": flagged, "table": "\n".join(rows).strip() if human else ""}
