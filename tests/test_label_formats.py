"""The team's own data in the shapes TRL and `datasets` document: JSONL or Parquet, strings or conversations,
with or without ids, comparisons with an implicit prompt; and multi-turn prompts through the chat format.

Every file here is written by `datasets.Dataset.from_list(...).to_json / .to_parquet`, as a user's would be.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import datasets
import pytest

from rlhf_dag.config import resolve
from rlhf_dag.data.chat import CHAT_TEMPLATE, conversation_prompt, format_prompt
from rlhf_dag.data.label_files import LabelFileError, label_file, load_labels

ASSETS = Path(__file__).resolve().parent.parent / "assets"
CONVERSATION = [
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "2 + 2 = 4."},
    {"role": "user", "content": "And 3 + 3?"},
]


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def write(rows: list[dict], path: Path) -> Path:
    """The file exactly as `datasets` writes it."""
    dataset = datasets.Dataset.from_list(rows)
    if path.suffix == ".parquet":
        dataset.to_parquet(path)
    else:
        dataset.to_json(path)
    return path


def hh(prompt: str, response: str) -> str:
    return f"\n\nHuman: {prompt}\n\nAssistant: {response}"


# (kind, what the user's file holds, the canonical record it must become, id left out)
SHAPES = [
    (
        "comparisons",
        {"prompt": "What is 1 + 1?", "chosen": "2.", "rejected": "3."},  # TRL standard, explicit prompt
        {"prompt": "What is 1 + 1?", "chosen": "2.", "rejected": "3."},
    ),
    (
        "comparisons",
        {"prompt": user("What is 1 + 1?"), "chosen": assistant("2."), "rejected": assistant("3.")},  # conversational
        {"prompt": "What is 1 + 1?", "chosen": "2.", "rejected": "3."},
    ),
    (
        "comparisons",
        {
            "chosen": [*user("What is 1 + 1?"), *assistant("2.")],
            "rejected": [*user("What is 1 + 1?"), *assistant("3.")],
        },  # implicit
        {"prompt": "What is 1 + 1?", "chosen": "2.", "rejected": "3."},
    ),
    (
        "comparisons",
        {
            "chosen": [*CONVERSATION, *assistant("6.")],
            "rejected": [*CONVERSATION, *assistant("7.")],
        },  # implicit, multi-turn
        {"prompt": conversation_prompt(CONVERSATION), "chosen": "6.", "rejected": "7."},
    ),
    (
        "comparisons",
        {"chosen": hh("What is 1 + 1?", "It is 2."), "rejected": hh("What is 1 + 1?", "It is 3.")},  # HH-RLHF
        {"prompt": "What is 1 + 1?", "chosen": "It is 2.", "rejected": "It is 3."},
    ),
    (
        "comparisons",
        {
            "chosen": "\n\nHuman: What is 2 + 2?\n\nAssistant: 2 + 2 = 4.\n\nHuman: And 3 + 3?\n\nAssistant: 6.",  # HH, multi-turn
            "rejected": "\n\nHuman: What is 2 + 2?\n\nAssistant: 2 + 2 = 4.\n\nHuman: And 3 + 3?\n\nAssistant: 7.",
        },
        {"prompt": conversation_prompt(CONVERSATION), "chosen": "6.", "rejected": "7."},
    ),
    ("prompts", {"prompt": "What is 1 + 1?"}, {"prompt": "What is 1 + 1?"}),
    ("prompts", {"prompt": CONVERSATION}, {"prompt": conversation_prompt(CONVERSATION)}),
    ("eval_prompts", {"prompt": user("What is 1 + 1?")}, {"prompt": "What is 1 + 1?"}),
    (
        "demonstrations",
        {"prompt": "What is 1 + 1?", "completion": "2."},
        {"prompt": "What is 1 + 1?", "response": "2."},
    ),  # TRL prompt-completion
    (
        "demonstrations",
        {"prompt": CONVERSATION, "completion": assistant("6.")},
        {"prompt": conversation_prompt(CONVERSATION), "response": "6."},
    ),
    (
        "demonstrations",
        {"messages": [*CONVERSATION, *assistant("6.")]},
        {"prompt": conversation_prompt(CONVERSATION), "response": "6."},
    ),  # TRL conversational LM
]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
@pytest.mark.parametrize("kind,given,expected", SHAPES, ids=[f"{s[0]}-{i}" for i, s in enumerate(SHAPES)])
def test_each_documented_shape_becomes_the_canonical_record(tmp_path, suffix, kind, given, expected):
    labels = load_labels(write([given], tmp_path / f"{kind}{suffix}"))
    (record,) = labels.records
    assert {k: v for k, v in record.items() if k != "id"} == expected
    assert labels.sha256 == hashlib.sha256((tmp_path / f"{kind}{suffix}").read_bytes()).hexdigest()


def test_derived_ids_are_stable_and_follow_the_content(tmp_path):
    rows = [
        {"prompt": "What is 1 + 1?", "chosen": "2.", "rejected": "3."},
        {"prompt": "What is 2 + 2?", "chosen": "4.", "rejected": "5."},
    ]
    first = load_labels(write(rows, tmp_path / "a" / "comparisons.jsonl")).records
    again = load_labels(write(rows[::-1], tmp_path / "b" / "comparisons.parquet")).records
    assert {r["id"] for r in first} == {r["id"] for r in again}  # same content, same id: across runs, order and format
    assert first[0]["id"] != first[1]["id"]
    assert json.loads(json.dumps(first[0]["id"])).startswith("c-")
    # an explicit id is kept
    assert load_labels(write([{"id": "mine", **rows[0]}], tmp_path / "comparisons.jsonl")).records[0]["id"] == "mine"


# (kind, a good first row, a bad second row of the same columns (so that `datasets` writes both), field named, message)
BAD = [
    (
        "prompts",
        {"prompt": user("Hi")},
        {"prompt": [*CONVERSATION, *assistant("6.")]},
        "prompt",
        "must end with a user turn",
    ),
    (
        "prompts",
        {"prompt": user("Hi")},
        {"prompt": [{"role": "system", "content": "Be brief."}, *user("Hi")]},
        "prompt",
        "has role 'system', expected 'user'",
    ),
    (
        "prompts",
        {"prompt": user("Hi")},
        {"prompt": user("Say <|endoftext|> twice")},
        "prompt[0].content",
        "chat-format token '<|endoftext|>'",
    ),
    (
        "comparisons",
        {"chosen": [*user("A?"), *assistant("x")], "rejected": [*user("A?"), *assistant("y")]},
        {"chosen": [*user("A?"), *assistant("x")], "rejected": [*user("B?"), *assistant("y")]},
        "chosen",
        "same conversation up to",
    ),
    (
        "comparisons",
        {"chosen": hh("A?", "x"), "rejected": hh("A?", "y")},
        {"chosen": "Sure.", "rejected": "No."},
        "prompt",
        "shares no prompt",
    ),
    (
        "comparisons",
        {"prompt": "A?", "chosen": assistant("x"), "rejected": assistant("z")},
        {"prompt": "A?", "chosen": [*assistant("x"), *assistant("y")], "rejected": assistant("z")},
        "chosen",
        "exactly one message",
    ),
    (
        "demonstrations",
        {"messages": [*user("Hi"), *assistant("Hello.")]},
        {"messages": CONVERSATION},
        "messages",
        "must end with the assistant's answer",
    ),
]


@pytest.mark.parametrize("suffix,where", [(".jsonl", ":2:"), (".parquet", ":row 1:")])
@pytest.mark.parametrize("kind,good,bad,field,expected", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_a_bad_record_names_file_line_or_row_and_field(tmp_path, suffix, where, kind, good, bad, field, expected):
    path = write([good, bad], tmp_path / f"{kind}{suffix}")
    with pytest.raises(LabelFileError) as err:
        load_labels(path)
    message = str(err.value)
    assert message.startswith(f"{path}{where}"), message
    assert f"field '{field}':" in message and expected in message, message


def test_a_file_in_both_formats_is_refused_and_either_alone_is_found(tmp_path):
    rows = [{"prompt": "What is 1 + 1?"}]
    assert label_file(tmp_path, "prompts") == tmp_path / "prompts.jsonl"  # neither: where `make-labels` writes
    write(rows, tmp_path / "prompts.parquet")
    assert label_file(tmp_path, "prompts") == tmp_path / "prompts.parquet"
    write(rows, tmp_path / "prompts.jsonl")
    with pytest.raises(LabelFileError, match="prompts.parquet exists too: keep one file per kind"):
        label_file(tmp_path, "prompts")


def test_an_unreadable_parquet_file_is_our_error(tmp_path):
    path = tmp_path / "prompts.parquet"
    path.write_bytes(b"PAR1 not really")
    with pytest.raises(LabelFileError, match="not a readable Parquet file"):
        load_labels(path)


# ---------------------------------------------------------------- multi-turn prompts through the models


def test_the_chat_template_renders_a_conversation_as_the_prompt_format(smoke_run):
    """What the RM scores and PPO samples (`format_prompt` of the canonical prompt) is, token for token, what
    `apply_chat_template` makes of the user's messages with the tokenizer every model is saved with."""
    from transformers import AutoTokenizer

    _, _, result = smoke_run
    tokenizer = AutoTokenizer.from_pretrained(result.output_for_node("sft_model").path)
    assert tokenizer.chat_template == CHAT_TEMPLATE
    for messages in (user("What is 1 + 1?"), CONVERSATION):
        rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        assert rendered == format_prompt(conversation_prompt(messages))
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)[
            "input_ids"
        ]
        assert ids == tokenizer(format_prompt(conversation_prompt(messages)), add_special_tokens=False)["input_ids"]
    # the turns are the special tokens, not their characters spelled out
    assert (
        tokenizer.convert_tokens_to_ids("<|assistant|>")
        in tokenizer(format_prompt(conversation_prompt(CONVERSATION)), add_special_tokens=False)["input_ids"][1:-1]
    )


def _shipped_comparisons(n: int) -> list[dict]:
    return load_labels(ASSETS / "comparisons.jsonl").records[:n]


USER_FILES = {  # a user's comparisons in each documented shape, made from the shipped records (+ multi-turn ones)
    "standard.jsonl": lambda r: {"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]},
    "conversational.parquet": lambda r: {
        "prompt": user(r["prompt"]),
        "chosen": assistant(r["chosen"]),
        "rejected": assistant(r["rejected"]),
    },
    "implicit.jsonl": lambda r: {
        "chosen": [*user(r["prompt"]), *assistant(r["chosen"])],
        "rejected": [*user(r["prompt"]), *assistant(r["rejected"])],
    },
    "hh_rlhf.parquet": lambda r: {"chosen": hh(r["prompt"], r["chosen"]), "rejected": hh(r["prompt"], r["rejected"])},
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(USER_FILES))
def test_each_format_trains_a_reward_model(smoke_run, tmp_path, name):
    """comparison_dataset and reward_model, the step functions the assets run, on a file in each format."""
    from rlhf_dag.training.dataset_steps import comparison_dataset
    from rlhf_dag.training.models import load_reward_model
    from rlhf_dag.training.reward import reward_model, score_texts

    _, _, result = smoke_run
    shipped = [
        r
        for r in _shipped_comparisons(64)
        if r["chosen"] == r["chosen"].strip() and r["rejected"] == r["rejected"].strip()
    ]
    multi_turn = {
        "chosen": [*CONVERSATION, *assistant("3 + 3 = 6.")],
        "rejected": [*CONVERSATION, *assistant("3 + 3 = 7.")],
    }
    shape = USER_FILES[name]
    rows = [shape(r) for r in shipped]
    path = write(rows, tmp_path / f"comparisons{Path(name).suffix}")
    dataset = comparison_dataset({"comparisons": str(path)}, resolve("comparison_dataset"))
    frame = dataset.frames["comparison_dataset.parquet"]
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in shipped] == list(
        zip(frame["prompt"], frame["chosen"], frame["rejected"])
    )
    assert frame["source"].iloc[3] == (f"{path}:4" if path.suffix == ".jsonl" else f"{path}:row 3")
    assert dataset.tags["labels.sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()

    if name == "implicit.jsonl":  # a multi-turn comparison too: its prompt is the conversation so far
        write([*rows, multi_turn], path)
        dataset = comparison_dataset({"comparisons": str(path)}, resolve("comparison_dataset"))
        assert dataset.frames["comparison_dataset.parquet"]["prompt"].iloc[-1] == conversation_prompt(CONVERSATION)
    folder = tmp_path / "comparison_dataset"
    folder.mkdir()
    dataset.save(folder)
    rm = reward_model(
        {"sft_model": result.output_for_node("sft_model").path, "comparison_dataset": str(folder / dataset.main_file)},
        resolve("reward_model"),
    )
    assert 0.0 <= rm.metrics["validation_accuracy"] <= 1.0 and rm.metrics["train_pairs"] > 0
    rm_folder = tmp_path / "reward_model"
    rm_folder.mkdir()
    rm.save(rm_folder)
    scorer, tokenizer = load_reward_model(rm_folder)
    single, multi = score_texts(
        scorer, tokenizer, ["And 3 + 3?", conversation_prompt(CONVERSATION)], ["3 + 3 = 6.", "3 + 3 = 6."]
    )
    assert single != multi  # the earlier turns reach the reward model


@pytest.mark.slow
def test_ppo_trains_on_multi_turn_prompts_from_a_parquet_file(smoke_run, tmp_path):
    """prompts.parquet of conversations ending with a user turn, through the ppo_policy step."""
    import torch

    from rlhf_dag.training.models import load_causal_lm
    from rlhf_dag.training.ppo import ppo_policy

    _, _, result = smoke_run
    conversations = [
        [*user(f"What is {n} + {n}?"), *assistant(f"{n} + {n} = {2 * n}."), *user(f"And {n} + 1?")]
        for n in range(2, 10)
    ]
    path = write([{"prompt": c} for c in conversations], tmp_path / "prompts.parquet")
    sft = result.output_for_node("sft_model").path
    trained = ppo_policy(
        {"sft_model": sft, "reward_model": result.output_for_node("reward_model").path, "prompts": str(path)},
        resolve("ppo_policy"),
    )
    assert trained.metrics["prompts"] == len(conversations)
    assert trained.tags["labels.prompts.sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    before, _ = load_causal_lm(sft)
    changed = any(
        not torch.equal(a, b.to(a.device))
        for a, b in zip(trained.model.state_dict().values(), before.state_dict().values())
    )
    assert changed and trained.metrics["finite"] == 1.0
