"""Pretraining's data path: documents packed into rows without attending to each other, and a tokenizer
whose digits look the same in a request and in its answer (what lets the base model copy operands)."""

from __future__ import annotations

import random
import re

import pytest
import torch

from rlhf_dag.config import PretrainConfig
from rlhf_dag.data.chat import format_prompt
from rlhf_dag.data.domain import Task, confused_response, ideal_response, pretraining_documents, sample_task
from rlhf_dag.data.gold import gold_score
from rlhf_dag.training.pretrain import PackedCollator, build_model, packed_documents, train_tokenizer


@pytest.fixture(scope="session")
def tokenizer():
    return train_tokenizer(pretraining_documents(400, seed=0), 400)


@pytest.fixture(scope="session")
def model(tokenizer):
    cfg = PretrainConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_length=128)
    return build_model(cfg, tokenizer).eval()


def _unpacked_loss(model, tokenizer, texts: list[str]) -> float:
    """Token-weighted mean loss of each document alone (EOS appended, first token not predicted)."""
    total, count = 0.0, 0
    for text in texts:
        ids = torch.tensor([tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]])
        with torch.no_grad():
            loss = model(input_ids=ids, labels=ids).loss.item()
        total, count = total + loss * (ids.shape[1] - 1), count + ids.shape[1] - 1
    return total / count


def test_packed_rows_give_each_document_its_own_loss(model, tokenizer):
    texts = pretraining_documents(24, seed=1)
    assert max(len(ids) for ids in tokenizer(texts)["input_ids"]) < 255  # none is cut
    rows = packed_documents(tokenizer(texts)["input_ids"], tokenizer.eos_token_id, 256)
    assert len(rows) < len(texts)  # several documents share a row
    assert sum(len(r["seq_lengths"]) for r in rows) == len(texts)
    batch = PackedCollator(tokenizer.pad_token_id)([rows[i] for i in range(len(rows))])
    with torch.no_grad():
        packed = model(**batch).loss.item()
    assert packed == pytest.approx(_unpacked_loss(model, tokenizer, texts), rel=1e-5)


def test_a_packed_document_never_sees_the_one_before_it(model, tokenizer):
    first, second = "Q: What is 2 + 2?\nA: 2 + 2 = 4.", "Worksheet:\n3 + 4 = 7"
    rows = [
        packed_documents(tokenizer([other, second])["input_ids"], tokenizer.eos_token_id, 128)[0]
        for other in (first, "To do: walk the dog and call Anna")
    ]
    logits = []
    for row in rows:
        assert len(row["seq_lengths"]) == 2
        batch = PackedCollator(tokenizer.pad_token_id)([row])
        with torch.no_grad():
            out = model(**batch).logits[0]
        logits.append(
            out[-row["seq_lengths"][-1] :]
            if row["seq_lengths"][-1] == len(tokenizer(second)["input_ids"]) + 1
            else out[: row["seq_lengths"][0]]
        )
    # the same document, after two different neighbours: identical logits
    assert torch.allclose(logits[0], logits[1], atol=1e-5)


def test_digits_are_the_same_tokens_in_a_request_and_its_answer(tokenizer):
    prompt, response = "What is 2 + 7?", "2 + 7 = 9."
    prompt_ids = tokenizer(format_prompt(prompt))["input_ids"]
    ids = tokenizer(format_prompt(prompt) + response)["input_ids"]
    assert ids[: len(prompt_ids)] == prompt_ids
    tokens = tokenizer.convert_ids_to_tokens(ids)
    answer = tokens[len(prompt_ids) :]
    # each operand is one token carrying its space, identical in the request and in the answer
    assert tokens[: len(prompt_ids)].count("Ġ2") == 1 and answer[0] == "Ġ2"
    assert "Ġ7" in tokens[: len(prompt_ids)] and answer[2] == "Ġ7"
    assert all(len(t.lstrip("Ġ")) == 1 for t in answer if t.lstrip("Ġ").isdigit())


@pytest.mark.parametrize(
    "text", ["Worksheet:\n12 times 3 = 36", "def is_even(n):\n    return n % 2 == 0", "Hi Mom,\n\nMerry Christmas!"]
)
def test_the_tokenizer_round_trips_text(tokenizer, text):
    assert tokenizer.decode(tokenizer(text)["input_ids"]).removeprefix(" ") == text


def test_a_confused_sum_either_misstates_the_result_or_answers_another_sum():
    """About half the confused sums restate the request and get the result wrong, about half answer another
    sum correctly (an operand not copied): the reward model must learn that both are wrong answers."""
    rng = random.Random(0)
    kinds = {"other sum": 0, "wrong result": 0}
    for _ in range(200):
        task = sample_task(rng, "math")
        bad = confused_response(task, rng)
        a, op, b, result = re.match(r"(-?\d+) (\+|-|times) (-?\d+) = (-?\d+)", bad).groups()
        restated = Task("math", task.prompt, {"a": int(a), "op": op, "b": int(b)})
        if (restated.params["a"], restated.params["b"]) != (
            task.params["a"],
            task.params["b"],
        ) and restated.answer == int(result):
            kinds["other sum"] += 1
        elif (restated.params["a"], restated.params["b"]) == (task.params["a"], task.params["b"]) and int(
            result
        ) != task.answer:
            kinds["wrong result"] += 1
        assert (
            gold_score(task.prompt, bad).score < gold_score(task.prompt, ideal_response(task, rng)).score
            or int(result) == task.answer
        )
    assert kinds["other sum"] >= 90 and kinds["wrong result"] >= 40, kinds
