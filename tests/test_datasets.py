"""build_dataset's split is a fixed function of the prompt; write_parquet never leaves a partial file."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from rlhf_dag.data.datasets import _position, build_dataset, split_of, splits, write_parquet
from rlhf_dag.data.label_files import LabelFile

SALT = "salt"


def demos(prompts: list[str], start: int = 0) -> list[dict]:
    return [{"id": f"d{start + i:04d}", "prompt": p, "response": f"answer {start + i}"} for i, p in enumerate(prompts)]


def labels(records: list[dict]) -> LabelFile:
    return LabelFile(
        Path("demonstrations.jsonl"),
        "demonstrations",
        records,
        lines={r["id"]: n for n, r in enumerate(records, start=1)},
    )


def many_prompts(n: int, offset: int = 0) -> list[str]:
    return [f"What is {offset + i} + {i % 7}?" for i in range(n)]


def test_the_same_prompt_always_lands_in_the_same_split():
    prompts = many_prompts(30)
    records = demos(prompts * 3)  # every prompt three times, with different responses
    frame = build_dataset(labels(records), 0.5, SALT)
    assert set(frame["split"]) == {"train", "validation"}  # both splits occur: the hash alone decided
    per_prompt = frame.groupby("prompt")["split"].nunique()
    assert (per_prompt == 1).all()  # a prompt never sits in both splits
    for prompt, split in zip(frame["prompt"], frame["split"]):
        assert split == split_of(prompt, 0.5, SALT)
    # whitespace around a prompt does not change its split
    assert split_of("  " + prompts[0] + "\n", 0.5, SALT) == split_of(prompts[0], 0.5, SALT)


def test_adding_and_reordering_records_does_not_move_existing_ones():
    before = build_dataset(labels(demos(many_prompts(30))), 0.5, SALT)
    grown = demos(many_prompts(30)) + demos(many_prompts(20, offset=100), start=30)
    after = build_dataset(labels(list(reversed(grown))), 0.5, SALT)
    after_split = dict(zip(after["id"], after["split"]))
    assert {i: after_split[i] for i in before["id"]} == dict(zip(before["id"], before["split"]))


def test_columns_and_validation_fraction_bounds():
    frame = build_dataset(labels(demos(many_prompts(5))), 0.0, SALT)
    assert list(frame.columns) == ["id", "prompt", "response", "split", "source"]
    assert list(frame["source"]) == [f"demonstrations.jsonl:{n}" for n in range(1, 6)]
    assert set(frame["split"]) == {"train"}  # fraction 0: everything trains
    with pytest.raises(ValueError, match=r"validation_fraction must be in \[0, 1\), got 1"):
        build_dataset(labels(demos(many_prompts(5))), 1.0, SALT)


def test_a_tiny_file_still_gets_a_validation_row():
    prompts = ["What is 1 + 1?", "What is 2 + 3?"]
    assert [split_of(p, 0.05, SALT) for p in prompts] == ["train", "train"]  # the hash alone gives no validation row
    frame = build_dataset(labels(demos(prompts)), 0.05, SALT)
    assert list(frame["split"]) == ["train", "validation"]


def test_tiny_file_fallback_keeps_a_prompt_in_one_split():
    prompt = "What is 1 + 1?"
    assert split_of(prompt, 0.05, SALT) == "train"
    frame = build_dataset(labels(demos([prompt] * 3)), 0.05, SALT)
    assert frame["split"].nunique() == 1


def test_every_group_of_two_prompts_or_more_gets_held_out_rows_and_the_others_keep_their_split():
    """A kind whose prompts all hash into train (the smollm2 labels' stories: 10 prompts, none held out) would leave
    the reward model unmeasured on it: its lowest-hash prompt moves to validation; a one-prompt group stays whole."""
    prompts = many_prompts(40)
    alone = [p for p in prompts if split_of(p, 0.1, SALT) == "train"]
    groups = {p: "a" for p in prompts} | {p: "b" for p in alone[:5]} | {alone[5]: "single"}
    assert {split_of(p, 0.1, SALT) for p, g in groups.items() if g == "b"} == {"train"}
    plain = build_dataset(labels(demos(prompts)), 0.1, SALT)
    frame = build_dataset(labels(demos(prompts)), 0.1, SALT, groups.get)
    held_b = [p for p, s in zip(frame["prompt"], frame["split"]) if s == "validation" and groups[p] == "b"]
    assert held_b == [min(alone[:5], key=lambda p: _position(p, SALT))]
    moved = [p for p, a, b in zip(frame["prompt"], plain["split"], frame["split"]) if a != b]
    assert moved == held_b  # nothing else moved: the "single" group and group "a" (held out by its hash) kept theirs


def test_the_smollm2_comparisons_hold_out_pairs_of_every_kind():
    """comparison_dataset splits with the judge's kinds: the shipped smollm2 pairs give the RM's accuracy per kind."""
    from rlhf_dag.config import resolve
    from rlhf_dag.data.gold import GoldJudge
    from rlhf_dag.data.label_files import load_labels

    cfg = resolve("comparison_dataset", profile="smollm2")
    comparisons = load_labels(
        Path(__file__).resolve().parent.parent / "assets/smollm2/comparisons.jsonl", "comparisons"
    )
    frame = build_dataset(comparisons, cfg.validation_fraction, cfg.split_salt, GoldJudge().kind)
    held_out = frame[frame["split"] == "validation"]
    assert set(map(GoldJudge().kind, held_out["prompt"])) == {"story", "email", "math", "code"}


def test_write_parquet_round_trips_and_leaves_no_temp_file(tmp_path):
    frame = build_dataset(labels(demos(many_prompts(30))), 0.5, SALT)
    path = tmp_path / "data" / "demonstrations.parquet"
    write_parquet(frame.head(3), path)
    write_parquet(frame, path)  # overwrite in place
    assert [p.name for p in path.parent.iterdir()] == ["demonstrations.parquet"]
    pd.testing.assert_frame_equal(pd.read_parquet(path), frame)
    train, validation = splits(path)
    assert len(train) + len(validation) == 30
    assert set(train["split"]) == {"train"} and set(validation["split"]) == {"validation"}


def test_a_write_failing_halfway_leaves_the_previous_file_and_no_temp_file(tmp_path, monkeypatch):
    """The real writer writes half the rows, then the disk fills up: the half-written file never replaces the previous one."""
    import pyarrow.parquet as pq

    path = tmp_path / "demonstrations.parquet"
    previous = build_dataset(labels(demos(many_prompts(10))), 0.5, SALT)
    write_parquet(previous, path)
    write_table, written = pq.write_table, []

    def write_half_then_fail(table, where, *args, **kwargs):
        write_table(table.slice(0, table.num_rows // 2), where, *args, **kwargs)  # `where`: the handle pandas opened
        (partial,) = tmp_path.glob(".tmp-*")
        written.append((partial.name, len(pd.read_parquet(partial))))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pq, "write_table", write_half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        write_parquet(build_dataset(labels(demos(many_prompts(30, offset=50))), 0.5, SALT), path)
    assert len(written) == 1 and written[0][0].startswith(".tmp-demonstrations.parquet-")
    assert written[0][1] == 15  # it failed halfway through a real file: 15 of the 30 rows were on disk
    assert [p.name for p in tmp_path.iterdir()] == ["demonstrations.parquet"]
    pd.testing.assert_frame_equal(pd.read_parquet(path), previous)
