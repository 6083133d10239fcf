"""Rankings -> pairs with provenance, the comparisons file appended safely, agreement, Label Studio exports, the ranking loss.

Numbers are worked out by hand; the live server is exercised by tests/test_label_studio.py.
"""

from __future__ import annotations

import itertools
import json
import math
import socket

import pytest
import torch

from rlhf_dag.data.datasets import build_dataset
from rlhf_dag.data.feedback import Ranking, agreement, append_rankings, ranking_pairs
from rlhf_dag.data.label_files import LabelFileError, load_labels
from rlhf_dag.data.label_studio import LabelStudioClient, LabelStudioError, read_export, responses_sha256, task_data
from rlhf_dag.training.reward import RankingBatches, pair_weights, ranking_loss

PROMPT = "What is 2 + 2?"


def _ranking(key: str, responses, labeler: str = "ann@example.com", task: str = "7", batch: str = "b1") -> Ranking:
    return Ranking(key, PROMPT, tuple(responses), labeler, "2026-11-26T10:00:00Z", batch, task, "mlflow-run-1")


def _export_task(task_id: int, responses: list[str], annotations: list[dict]) -> dict:
    return {
        "id": task_id,
        "data": task_data("p1", PROMPT, responses, "b1", "sft_model", "mlflow-run-1"),
        "annotations": annotations,
    }


def _ranked(annotation_id: int, order: list[str], user: int = 3, **extra) -> dict:
    return {
        "id": annotation_id,
        "unique_id": f"u-{annotation_id}",
        "completed_by": user,
        "updated_at": "2026-11-26T10:00:00Z",
        "result": [
            {"type": "ranker", "from_name": "rank", "to_name": "responses", "value": {"ranker": {"rank": order}}}
        ],
        **extra,
    }


def test_a_ranking_of_k_gives_its_k_choose_2_pairs_in_rank_order_with_provenance():
    pairs = ranking_pairs(_ranking("r1", ["best", "good", "bad", "worst"]))
    assert len(pairs) == math.comb(4, 2) == 6
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [
        ("best", "good"),
        ("best", "bad"),
        ("best", "worst"),
        ("good", "bad"),
        ("good", "worst"),
        ("bad", "worst"),
    ]
    assert {
        (p["ranking"], p["labeler"], p["batch"], p["task_id"], p["policy_run_id"], p["labeled_at"]) for p in pairs
    } == {("r1", "ann@example.com", "b1", "7", "mlflow-run-1", "2026-11-26T10:00:00Z")}


def test_appending_is_idempotent_keeps_the_old_bytes_and_the_result_loads(tmp_path):
    path = tmp_path / "comparisons.jsonl"
    path.write_text(json.dumps({"id": "c1", "prompt": PROMPT, "chosen": "4", "rejected": "5"}) + "\n")
    old = path.read_bytes()
    assert append_rankings(path, [_ranking("r1", ["4", "It is 4.", "22"])]) == (1, 3)
    assert path.read_bytes().startswith(old)
    once = path.read_bytes()
    assert append_rankings(
        path, [_ranking("r1", ["4", "It is 4.", "22"]), _ranking("r2", ["4", "5"], labeler="bo@example.com")]
    ) == (1, 1)
    assert append_rankings(path, [_ranking("r2", ["4", "5"], labeler="bo@example.com")]) == (0, 0)  # pulled twice
    records = load_labels(path).records
    assert len(records) == 1 + 3 + 1 and path.read_bytes().startswith(once)


def test_a_broken_comparisons_file_is_never_extended(tmp_path):
    path = tmp_path / "comparisons.jsonl"
    path.write_text('{"id": "c1", "prompt": "p", "chosen": "a"}\n')
    before = path.read_bytes()
    with pytest.raises(LabelFileError, match="comparisons.jsonl:1: field 'rejected'"):
        append_rankings(path, [_ranking("r1", ["4", "5"])])
    assert path.read_bytes() == before and [
        p.name for p in tmp_path.iterdir() if not p.name.startswith(".comparisons")
    ] == ["comparisons.jsonl"]


def test_one_rankings_pairs_share_a_split_and_a_ranking_key(tmp_path):
    path = tmp_path / "comparisons.jsonl"
    path.write_text(json.dumps({"id": "c1", "prompt": "Write a story", "chosen": "a", "rejected": "b"}) + "\n")
    append_rankings(
        path, [_ranking("r1", ["w", "x", "y", "z"]), _ranking("r2", ["x", "w", "z", "y"], labeler="bo@example.com")]
    )
    frame = build_dataset(load_labels(path), 0.5, "rlhf-dag")
    assert frame.groupby("ranking")["split"].nunique().max() == 1
    assert (
        sorted(frame.groupby("ranking").size()) == [1, 6, 6]
        and frame.loc[frame["id"] == "c1", "ranking"].item() == "c1"
    )


def test_agreement_between_labelers_and_with_gold_worked_by_hand():
    # Two labelers rank the same 3 responses of task 7: ann a>b>c, bo b>a>c -> pairs ab (disagree), ac, bc (agree): 2/3.
    # Gold scores a=3, b=2, c=1 -> ann agrees on 3/3, bo on 2/3. A third labeler, cy, on task 8: c>b>a, gold 0/3.
    records = [
        *ranking_pairs(_ranking("r1", "abc")),
        *ranking_pairs(_ranking("r2", "bac", labeler="bo@example.com")),
        *ranking_pairs(_ranking("r3", "cba", labeler="cy@example.com", task="8", batch="b2")),
    ]
    gold = {"a": 3.0, "b": 2.0, "c": 1.0}
    figures = agreement(records, lambda prompt, response: gold[response])
    m = figures["metrics"]
    assert m["agreement_inter_labeler"] == pytest.approx(2 / 3) and m["agreement_inter_labeler.pairs"] == 3
    assert m["agreement_inter_labeler.labeler.ann_example.com"] == pytest.approx(2 / 3)
    assert m["agreement_inter_labeler.batch.b1"] == pytest.approx(2 / 3) and "agreement_inter_labeler.batch.b2" not in m
    assert m["agreement_gold"] == pytest.approx(5 / 9)
    assert m["agreement_gold.labeler.ann_example.com"] == 1.0 and m[
        "agreement_gold.labeler.bo_example.com"
    ] == pytest.approx(2 / 3)
    assert m["agreement_gold.batch.b2"] == 0.0
    assert figures["flagged"] == ["cy@example.com"]  # 0 against a median of 5/6 for the others
    assert "| cy@example.com | 3 | - | 0.000 (3) | yes |" in figures["table"]


def test_an_export_is_read_with_skips_ties_edits_and_pairwise_choices(tmp_path):
    responses = ["4", "5", "It is 4."]
    edited = _export_task(3, responses, [_ranked(30, ["r0", "r1", "r2"])])
    edited["data"]["responses"][1]["body"] = "6"  # someone changed a response in Label Studio after the push
    pairwise = {
        "id": 5,
        "data": {"prompt": PROMPT, "answer1": "4", "answer2": "5"},
        "annotations": [
            {
                "id": 50,
                "completed_by": {"id": 9, "email": "pw@example.com"},
                "result": [{"type": "pairwise", "to_name": "answer1,answer2", "value": {"selected": "right"}}],
            }
        ],
    }
    tasks = [
        _export_task(1, responses, [_ranked(10, ["r2", "r0", "r1"]), _ranked(11, [], user=4, was_cancelled=True)]),
        _export_task(2, responses, [_ranked(20, ["r0", "r0", "r1"]), {"id": 21, "completed_by": 3, "result": []}]),
        edited,
        _export_task(4, responses, []),
        pairwise,
    ]
    path = tmp_path / "export.json"
    path.write_text(json.dumps(tasks))
    pulled = read_export(path)
    assert [(r.key, r.responses, r.labeler) for r in pulled.rankings] == [
        ("u-10", ("It is 4.", "4", "5"), "user 3"),
        ("export:5:50", ("5", "4"), "pw@example.com"),
    ]
    assert pulled.skipped == ["export: task 1, annotation 11 by user 4: skipped by the labeler"]
    assert len(pulled.rejected) == 3
    assert (
        "task 2, annotation 20 by user 3: the ranking must order every response once (tied or repeated: ['r0'], missing: ['r2']"
        in pulled.rejected[0]
    )
    assert "annotation 21 by user 3: no ranking in the annotation" in pulled.rejected[1]
    assert "task 3: its responses were edited" in pulled.rejected[2]


def test_a_file_that_is_not_an_export_says_so(tmp_path):
    path = tmp_path / "export.json"
    path.write_text('{"prompt": "x"}')
    with pytest.raises(ValueError, match="export.json: not a Label Studio JSON export"):
        read_export(path)


def test_label_studio_down_is_a_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    client = LabelStudioClient(f"http://127.0.0.1:{port}", "legacy-token")
    with pytest.raises(
        LabelStudioError, match=rf"not reachable at http://127.0.0.1:{port} \(start it with `make label-studio`"
    ):
        client.pull("b1")
    with pytest.raises(LabelStudioError, match="set LABEL_STUDIO_API_KEY to your personal access token"):
        LabelStudioClient("http://127.0.0.1:1", "")


def test_the_ranking_loss_makes_one_ranking_one_batch_element():
    # a ranking of 3 (3 pairs, margins 1, 0, 2) and a lone pair (margin -1): mean over the 2 rankings of their mean pair loss
    chosen, rejected = torch.tensor([1.0, 0.0, 2.0, -1.0]), torch.zeros(4)
    weights = torch.tensor(pair_weights(["r", "r", "r", "lone"]))
    assert weights.tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3, 1.0])
    by_hand = ((0.313262 + 0.693147 + 0.126928) / 3 + 1.313262) / 2
    assert ranking_loss(chosen, rejected, weights).item() == pytest.approx(by_hand, abs=1e-5)
    assert ranking_loss(chosen[3:], rejected[3:], weights[3:]).item() == pytest.approx(
        1.313262, abs=1e-5
    )  # a lone pair: the pairwise loss


def test_ranking_batches_never_split_a_ranking():
    rankings = ["a"] * 6 + ["b"] * 3 + ["c"] + ["d"] * 6 + ["e"] * 1
    sampler = RankingBatches(rankings, batch_size=8, seed=0)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert sorted(i for b in batches for i in b) == list(range(len(rankings)))
        for batch in batches:
            keys = {rankings[i] for i in batch}
            assert all(rankings.count(k) == sum(rankings[i] == k for i in batch) for k in keys)
            assert len(batch) <= 8
    assert len(sampler) == len(list(sampler))


def test_responses_sha256_changes_with_any_edit():
    assert responses_sha256(["a", "b"]) != responses_sha256(["a", "b "]) != responses_sha256(["b", "a"])


def test_the_reward_trainer_sees_whole_rankings_each_weighing_one(smoke_run, monkeypatch):
    """InstructGPT 3.5 in the real trainer: every training batch holds whole rankings, and their pair weights sum to
    the number of rankings in it (a ranking of 4 is 6 pairs of weight 1/6, a lone pair weighs 1)."""
    import dagster as dg
    import pandas as pd
    from transformers import AutoTokenizer

    from rlhf_dag.config import resolve
    from rlhf_dag.training import reward

    _, instance, _ = smoke_run
    sft = (
        instance.get_latest_materialization_event(dg.AssetKey("sft_model")).asset_materialization.metadata["path"].value
    )
    rows = [
        (f"r{n}", f"Write a story about hero {n}", *pair)
        for n in range(4)
        for pair in itertools.combinations("wxyz", 2)
    ]
    rows += [(f"lone{n}", f"What is {n} + 1?", str(n + 1), "no") for n in range(5)]
    frame = pd.DataFrame(rows, columns=["ranking", "prompt", "chosen", "rejected"])
    frame["id"] = [f"c{i}" for i in range(len(frame))]
    seen = []
    original = reward.ranking_loss

    def spy(chosen, rejected, weight):
        if torch.is_grad_enabled():  # training steps only (evaluation runs without gradients)
            seen.append(weight.tolist())
        return original(chosen, rejected, weight)

    monkeypatch.setattr(reward, "ranking_loss", spy)
    cfg = resolve("reward_model", {"epochs": 1.0, "batch_size": 8})
    reward.train_reward_model(sft, AutoTokenizer.from_pretrained(sft), frame, frame.head(8), cfg)
    assert len(seen) == len(reward.RankingBatches(list(frame["ranking"]), 8, 0)) and sum(map(len, seen)) == len(frame)
    for weights in seen:
        assert sum(weights) == pytest.approx(round(sum(weights)))
        assert sum(w == pytest.approx(1 / 6) for w in weights) % 6 == 0


def test_the_sensor_appends_a_dropped_export_once_and_stops_with_the_file_intact_when_label_studio_is_down(
    isolated_env, tmp_path, monkeypatch
):
    import shutil

    import dagster as dg

    from rlhf_dag.pipeline.labeling_loop import LABELING_BATCHES, label_studio_pull
    from rlhf_dag.pipeline.resources import LabelStudio

    labels = tmp_path / "labels"
    (labels / "label_studio").mkdir(parents=True)
    shutil.copy(isolated_env / "labels" / "comparisons.jsonl", labels / "comparisons.jsonl")
    monkeypatch.setenv("RLHF_DAG_LABELS_DIR", str(labels))
    export = [_export_task(1, ["4", "5", "It is 4."], [_ranked(10, ["r2", "r0", "r1"])])]
    (labels / "label_studio" / "team-export.json").write_text(json.dumps(export))
    shipped = (labels / "comparisons.jsonl").read_bytes()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    instance = dg.DagsterInstance.ephemeral()
    context = dg.build_sensor_context(
        instance=instance, resources={"label_studio": LabelStudio(url=f"http://127.0.0.1:{port}")}
    )

    first = label_studio_pull(context)
    assert isinstance(first, dg.RunRequest)  # observe labels/comparisons at once
    assert (
        len(load_labels(labels / "comparisons.jsonl").records)
        == len(load_labels(isolated_env / "labels" / "comparisons.jsonl").records) + 3
    )
    after = (labels / "comparisons.jsonl").read_bytes()
    assert after.startswith(shipped)
    assert (
        isinstance(label_studio_pull(context), dg.SkipReason) and (labels / "comparisons.jsonl").read_bytes() == after
    )

    instance.add_dynamic_partitions(LABELING_BATCHES.name, ["batch-01"])
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "a-legacy-token")
    with pytest.raises(LabelStudioError, match=f"not reachable at http://127.0.0.1:{port}"):
        label_studio_pull(context)
    assert (labels / "comparisons.jsonl").read_bytes() == after


def test_pull_labels_appends_a_dropped_export_once_and_a_second_pull_adds_nothing(tmp_path, monkeypatch, capsys):
    """`rlhf-dag pull-labels` as a user runs it, with one Label Studio export dropped into <labels>/label_studio/ twice
    (the download and a browser's "(1)" copy of it): the first pull appends its ranking's 3 pairs once, in rank order;
    the second adds nothing and leaves comparisons.jsonl byte for byte as it was."""
    from rlhf_dag.cli import main

    labels = tmp_path / "labels"
    (labels / "label_studio").mkdir(parents=True)
    comparisons = labels / "comparisons.jsonl"
    comparisons.write_text(json.dumps({"id": "c1", "prompt": PROMPT, "chosen": "4", "rejected": "5"}) + "\n")
    shipped = comparisons.read_bytes()
    export = json.dumps([_export_task(1, ["4", "5", "It is 4."], [_ranked(10, ["r2", "r0", "r1"])])])
    for name in ("project-1-export.json", "project-1-export (1).json"):
        (labels / "label_studio" / name).write_text(export)
    monkeypatch.setenv("RLHF_DAG_LABELS_DIR", str(labels))
    monkeypatch.setenv(
        "DAGSTER_HOME", str(tmp_path / "dagster")
    )  # an instance with no labeling batch: no server to reach

    assert main(["pull-labels"]) == 0
    assert f"{comparisons}: +3 pairs from 1 new ranking(s)" in capsys.readouterr().out
    after = comparisons.read_bytes()
    assert after.startswith(shipped)
    added = [json.loads(line) for line in after[len(shipped) :].decode().splitlines()]
    assert [(r["chosen"], r["rejected"], r["ranking"]) for r in added] == [
        ("It is 4.", "4", "u-10"),
        ("It is 4.", "5", "u-10"),
        ("4", "5", "u-10"),
    ]

    assert main(["pull-labels"]) == 0
    assert comparisons.read_bytes() == after
    assert f"{comparisons}: +0 pairs from 0 new ranking(s)" in capsys.readouterr().out


def test_a_labeler_with_gold_pairs_is_judged_against_gold_not_against_a_majority():
    # ann ranks as gold (a>b>c>d); bo reverses it; cy is closer to bo. Against the other labelers ann is the
    # outlier (she agrees with cy on 2 of 6 pairs, bo on 4 of 6); against gold, bo is.
    records = [
        *ranking_pairs(_ranking("r1", "abcd")),
        *ranking_pairs(_ranking("r2", "dcba", labeler="bo@example.com")),
        *ranking_pairs(_ranking("r3", "dcab", labeler="cy@example.com")),
    ]
    gold = {"a": 4.0, "b": 3.0, "c": 2.0, "d": 1.0}
    with_gold = agreement(records, lambda prompt, response: gold[response])
    assert "ann@example.com" not in with_gold["flagged"] and "bo@example.com" in with_gold["flagged"]
    assert agreement(records, lambda prompt, response: None)["flagged"] == [
        "ann@example.com"
    ]  # no gold: the others judge
