"""DPO, GRPO and RLOO (the `alternatives` job's trainers) called directly, on the toy Llamas of tests/toy.py.

Each test sets up a preference whose direction is unambiguous and checks that the
trained policy follows it, on prompts it never trained on, against a control:
- DPO: every chosen response is "a"s, its rejected twin as many "b"s; the implicit
  reward beta * log(pi / pi_ref) (Rafailov et al. 2023) is computed here, on
  held-out pairs, from the returned policy and the SFT model it started from.
- GRPO/RLOO: the reward is a rigged reward model (+1 per "a" in the response)
  read through `RewardModelReward`, as the graph reads the real one.
The SFT model is saved and reloaded (TRL builds policy and reference from its path),
which drops the toy's output bias: the saved model is a plain random 1-layer Llama.
"""

from __future__ import annotations

import random

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from test_ppo_train import RiggedReward
from toy import A_ID, EOS_ID, VOCAB, causal_lm, one_thread, toy_tokenizer  # noqa: F401  (one_thread: an autouse fixture)
from transformers import AutoModelForCausalLM

from rlhf_dag.config import DPOConfig, GRPOConfig, RLOOConfig
from rlhf_dag.data.chat import format_prompt
from rlhf_dag.training.dpo import train_dpo
from rlhf_dag.training.online import RewardModelReward, train_online


def saved_sft_model(folder, seed: int) -> str:
    causal_lm(seed).save_pretrained(folder)
    toy_tokenizer().save_pretrained(folder)
    return str(folder)


@torch.no_grad()
def response_logprob(model, tokenizer, prompt: str, response: str) -> float:
    """log pi(response + EOS | prompt): the sum over the response's tokens, as DPO's implicit reward takes it."""
    model.eval()
    prompt_ids = tokenizer(format_prompt(prompt))["input_ids"]
    ids = tokenizer(format_prompt(prompt) + response + tokenizer.eos_token)["input_ids"]
    assert ids[: len(prompt_ids)] == prompt_ids
    logp = F.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, :-1].float(), dim=-1)
    return float(logp[len(prompt_ids) - 1 :].gather(-1, torch.tensor(ids[len(prompt_ids) :]).unsqueeze(-1)).sum())


# ---------------------------------------------------------------- DPO


def comparisons(prompt_words: list[str], n: int, rng: random.Random) -> pd.DataFrame:
    """Pairs whose chosen response is 1-3 "a"s and whose rejected one is as many "b"s, after a prompt of `prompt_words`."""
    rows = []
    for _ in range(n):
        length = rng.randint(1, 3)
        rows.append(
            {
                "prompt": " ".join(rng.choices(prompt_words, k=rng.randint(1, 4))),
                "chosen": " ".join(["a"] * length),
                "rejected": " ".join(["b"] * length),
            }
        )
    return pd.DataFrame(rows)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dpo_gives_the_chosen_responses_of_held_out_pairs_a_clearly_higher_implicit_reward(tmp_path, seed):
    """Guards which side of a pair DPO pushes up: swapped chosen and rejected would give every held-out margin the other sign.

    32 training pairs, 4 epochs of batches of 8 (16 steps). The held-out prompts use words
    ("f", "g", "h") no training prompt has. Before training the policy is its reference: every
    implicit reward is 0. Trained (seeds 0-2): accuracy 1.0 and margin 0.77-0.89 (beta = 0.1, so
    about 8 nats of log-ratio between an "a" and a "b" response); the bound 0.3 is well under that,
    and swapped training lands near -0.8. The margin is computed here from the returned policy and
    the reloaded SFT model, since the trainer's own `validation_reward_margin` is measured on pairs
    built by the same `preference_dataset` as the training pairs, and would hide a swap; it must agree
    with ours when nothing is swapped.
    """
    rng = random.Random(seed)
    train, validation = comparisons(["c", "d", "e"], 32, rng), comparisons(["f", "g", "h"], 16, rng)
    sft = saved_sft_model(tmp_path, seed)
    tokenizer = toy_tokenizer()
    cfg = DPOConfig(epochs=4, batch_size=8, learning_rate=1e-2, beta=0.1, max_length=32, seed=seed)
    policy, metrics = train_dpo(sft, tokenizer, train, validation, cfg)
    reference = AutoModelForCausalLM.from_pretrained(sft)

    def implicit_reward(prompt: str, response: str) -> float:
        return cfg.beta * (
            response_logprob(policy, tokenizer, prompt, response)
            - response_logprob(reference, tokenizer, prompt, response)
        )

    margins = [
        implicit_reward(row.prompt, row.chosen) - implicit_reward(row.prompt, row.rejected)
        for row in validation.itertuples()
    ]
    accuracy, margin = sum(m > 0 for m in margins) / len(margins), sum(margins) / len(margins)
    assert accuracy >= 0.9 and margin > 0.3, (
        f"held-out implicit-reward accuracy {accuracy:.2f}, margin {margin:.3f}: {[round(m, 3) for m in margins]}"
    )
    assert metrics["validation_reward_accuracy"] == pytest.approx(accuracy)
    assert metrics["validation_reward_margin"] == pytest.approx(margin, abs=1e-4)


# ---------------------------------------------------------------- GRPO and RLOO


class CountingRewardModel(RiggedReward):
    """`RiggedReward` (+weight per `token` in the response) with the `device` that `score_texts` moves each batch to."""

    device = torch.device("cpu")


def test_reward_model_reward_is_the_rm_score_or_the_penalty_for_a_response_without_eos():
    """The reward TRL receives: the RM score of prompt + response + EOS (2 "a"s: 2.0; 1 "a": 1.0), or with a penalty,
    -5.0 for a response whose ids do not end with EOS. The history logs the RM's own mean and the EOS rate either way."""
    completions, completion_ids, requests = ["a a", "a b"], [[A_ID, A_ID, EOS_ID], [A_ID, VOCAB["b"]]], ["c d", "e"]
    for penalty, expected in ((None, [2.0, 1.0]), (-5.0, [2.0, -5.0])):
        reward = RewardModelReward(CountingRewardModel(A_ID), toy_tokenizer(), penalty)
        rewards = reward([format_prompt(r) for r in requests], completions, completion_ids, requests)
        assert rewards == pytest.approx(expected)
        assert reward.history == [{"iteration": 1, "rm_score": pytest.approx(1.5), "eos_rate": 0.5}]


PROMPTS = ["a b", "c d e f", "g", "h a b c d e"]
HELD_OUT_PROMPTS = ["b c", "d d", "e f g", "h"]


@torch.no_grad()
def first_token_probability(model, tokenizer, prompts: list[str], token: int) -> float:
    """Mean over `prompts` of the probability that the response starts with `token`."""
    model.eval()
    probabilities = [
        F.softmax(
            model(input_ids=tokenizer(format_prompt(p), return_tensors="pt")["input_ids"]).logits[0, -1].float(), dim=-1
        )[token]
        for p in prompts
    ]
    return float(sum(probabilities) / len(probabilities))


@pytest.mark.parametrize("method", ["grpo", "rloo"])
def test_online_method_raises_the_reward_model_score_far_above_an_lr_0_control(tmp_path, method):
    """Guards the sign of the reward TRL is given: +1 per "a" in the response, through `RewardModelReward`, must be learned.

    20 steps of 4 prompts x 4 samples of up to 8 tokens, no EOS penalty (the branch that returns the RM's scores).
    Control (lr = 0, the same seed, so the same first batches): a random policy over 12 tokens, 0.39-0.48 "a"s per
    response over the last fifth (seeds 0-2). Trained: 7.0-7.8 (the cap is 8), with GRPO and RLOO alike; a negated
    reward drives it to 0. The bound, 3 "a"s above the control, is far from both. The returned policy must also
    start its answer to prompts it never saw with "a" most of the time (trained: 0.90-0.97; the control: 0.08-0.09,
    about 1 in 12).
    """
    config_class = {"grpo": GRPOConfig, "rloo": RLOOConfig}[method]
    sft, tokenizer = saved_sft_model(tmp_path, 0), toy_tokenizer()
    cfg = config_class(
        steps=20,
        prompts_per_step=4,
        num_generations=4,
        max_new_tokens=8,
        temperature=1.0,
        learning_rate=3e-2,
        beta=0.01,
        missing_eos_penalty=None,
        seed=0,
    )

    def run(learning_rate: float):
        reward = RewardModelReward(CountingRewardModel(A_ID), tokenizer, cfg.missing_eos_penalty)
        policy, metrics = train_online(
            method, sft, tokenizer, reward, PROMPTS, cfg.model_copy(update={"learning_rate": learning_rate})
        )
        return reward.history, policy, metrics

    (history, trained, metrics), (_, control, control_metrics) = run(cfg.learning_rate), run(0.0)
    assert len(history) == cfg.steps  # one row per generation batch: every reward went through RewardModelReward
    assert metrics["train_final_rm_score"] > control_metrics["train_final_rm_score"] + 3.0, (
        f"final RM score {metrics['train_final_rm_score']:.2f} vs control {control_metrics['train_final_rm_score']:.2f}; "
        f"per batch: {[round(r['rm_score'], 2) for r in history]}"
    )
    trained_a, control_a = (
        first_token_probability(policy, tokenizer, HELD_OUT_PROMPTS, A_ID) for policy in (trained, control)
    )
    assert trained_a > 0.5 and control_a < 0.2, (trained_a, control_a)
