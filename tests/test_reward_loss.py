"""The reward model's pairwise loss, where its score is read, and the evaluation's win rate, with hand numbers."""

from __future__ import annotations

import math

import pytest
import torch
from toy import one_thread, toy_tokenizer, value_model  # noqa: F401  (one_thread: an autouse fixture)

from rlhf_dag.data.chat import EOS, format_prompt
from rlhf_dag.data.gold import GoldJudge
from rlhf_dag.training.evaluate import judge_scores, mean_judged, win_rate, win_rate_by_kind
from rlhf_dag.training.generate import Sample
from rlhf_dag.training.reward import accuracy_by_kind, pairwise_loss, score_texts


def test_pairwise_loss_two_pairs():
    loss = pairwise_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]))
    # -log sigmoid(1) = log(1 + e^-1) = 0.313262; -log sigmoid(0) = log 2 = 0.693147
    # mean = (0.313262 + 0.693147) / 2 = 0.503204
    assert loss.item() == pytest.approx(0.503204, abs=1e-6)


def test_pairwise_loss_penalises_the_wrong_order_more():
    # chosen scored below rejected by 1: -log sigmoid(-1) = log(1 + e) = 1.313262
    assert pairwise_loss(torch.tensor([0.0]), torch.tensor([1.0])).item() == pytest.approx(1.313262, abs=1e-6)


def test_pairwise_loss_is_finite_at_large_margins():
    # margin +200: -log sigmoid(200) = log(1 + e^-200) ~ 0; margin -200: log(1 + e^200) ~ 200
    assert pairwise_loss(torch.tensor([100.0]), torch.tensor([-100.0])).item() == pytest.approx(0.0, abs=1e-6)
    assert pairwise_loss(torch.tensor([-100.0]), torch.tensor([100.0])).item() == pytest.approx(200.0)


def test_pairwise_loss_gradient_pushes_chosen_up_and_rejected_down():
    chosen = torch.tensor([0.0], requires_grad=True)
    rejected = torch.tensor([0.0], requires_grad=True)
    pairwise_loss(chosen, rejected).backward()
    # d/dc [-log sigmoid(c - r)] = -(1 - sigmoid(0)) = -0.5; d/dr = +0.5
    assert chosen.grad.item() == pytest.approx(-0.5)
    assert rejected.grad.item() == pytest.approx(0.5)


def test_each_text_is_scored_at_its_own_eos_in_a_padded_batch():
    """`score_texts` batches texts of different lengths, right-padded, and reads each one's score at its EOS: the
    logit the model's own sequence-classification head gives the text alone, unpadded (what TRL's RewardTrainer trains).

    5 texts of 8, 10, 11 | 10, 5 tokens in batches of 3: both batches are padded, and no two texts score the same.
    """
    tokenizer, reward_model = toy_tokenizer(), value_model(2)
    prompts, responses = ["a b", "c d e f g h", "g", "h a b c d e", "b"], ["a a b", "c", "d e f g h a b", "e", "a"]
    with torch.no_grad():
        alone = [
            reward_model(input_ids=tokenizer(format_prompt(p) + r + EOS, return_tensors="pt").input_ids).logits.item()
            for p, r in zip(prompts, responses)
        ]
    assert len(set(alone)) == len(alone)
    assert score_texts(reward_model, tokenizer, prompts, responses, batch_size=3) == pytest.approx(alone, abs=1e-6)


def test_win_rate_counts_ties_half():
    a = [1.0, 0.5, 0.2, 0.9]
    b = [0.0, 0.5, 0.7, 0.1]
    mean, low, high = win_rate(a, b)
    # outcomes: win, tie, loss, win = 1, 0.5, 0, 1 -> mean 2.5/4 = 0.625
    # deviations 0.375, -0.125, -0.625, 0.375; squares sum 0.6875; sample var 0.6875/3 = 0.229167
    # sd 0.478714; half width 1.96 * 0.478714 / sqrt(4) = 0.469140
    # interval 0.625 - 0.469140 = 0.155860, and 1.094140 capped at 1.0
    assert mean == pytest.approx(0.625)
    assert low == pytest.approx(0.155860, abs=1e-6)
    assert high == 1.0


def test_win_rate_all_ties_is_one_half_with_no_spread():
    assert win_rate([0.3, 0.3], [0.3, 0.3]) == (0.5, 0.5, 0.5)


def test_win_rate_rejects_unpaired_lists():
    with pytest.raises(ValueError):
        win_rate([1.0, 2.0], [1.0])


def test_win_rate_leaves_out_pairs_the_gold_labeler_cannot_judge():
    # a user's own eval prompt has no gold score (None): only the two judged pairs count, win + loss = 0.5
    mean, _, _ = win_rate([0.9, None, 0.1], [0.2, 0.4, 0.8])
    assert mean == pytest.approx(0.5)
    assert all(math.isnan(v) for v in win_rate([None], [None]))


def test_gold_scores_of_prompts_outside_the_task_family_are_none():
    samples = [Sample("What is 2 + 2?", "4.", True, 2), Sample("Summarize my meeting notes.", "Done.", True, 2)]
    judged = judge_scores(samples, GoldJudge())
    assert judged[0] is not None and judged[1] is None
    assert mean_judged(samples, GoldJudge()) == pytest.approx(judged[0])
    assert (
        judge_scores(samples, None) == [None] * len(samples) and mean_judged(samples, None) is None
    )  # no judge: nothing judged


def test_accuracy_by_kind_splits_the_held_out_pairs_by_task_kind():
    prompts = [
        "What is 2 + 2?",
        "What is 3 times 4?",
        "What is 7 - 1?",
        "Write an email to my mother wishing her Merry Christmas, and ask how dad is doing.",
        "Summarize this contract.",
    ]
    by_kind = accuracy_by_kind(prompts, [True, False, False, True, True], GoldJudge())
    assert by_kind == {"email": (1.0, 1), "math": (pytest.approx(1 / 3), 3), "other": (1.0, 1)}
    with pytest.raises(ValueError):
        accuracy_by_kind(prompts, [True], GoldJudge())
    assert accuracy_by_kind(prompts, [True] * 5, None) == {}  # no judge, no kinds


def test_win_rate_by_kind_judges_each_kind_on_its_own_pairs():
    prompts = [
        "What is 2 + 2?",
        "What is 3 + 4?",
        "Write an email to my mother wishing her Merry Christmas, and ask how dad is doing.",
        "Write an email to my uncle wishing him Happy Birthday, and ask how my sister is doing.",
        "Summarize this contract.",
    ]
    ppo = [1.0, 0.5, 0.9, 0.2, None]
    sft = [0.5, 0.5, 0.3, 0.8, 0.4]
    # math: a win and a tie -> 0.75; email: a win and a loss -> 0.5; the prompt outside the domain is no kind
    assert win_rate_by_kind(prompts, ppo, sft, GoldJudge()) == {"email": 0.5, "math": 0.75}
    assert win_rate_by_kind(prompts, ppo, sft, None) == {}
