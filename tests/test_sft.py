"""`supervised_finetune` itself on a toy model: the loss is on response tokens only, as InstructGPT's SFT."""

from __future__ import annotations

import pandas as pd
import torch
from toy import causal_lm, one_thread, toy_tokenizer  # noqa: F401  (one_thread: an autouse fixture)

from rlhf_dag.config import SFTConfig
from rlhf_dag.data.chat import format_prompt
from rlhf_dag.training.sft import supervised_finetune

PROMPT = "b c d e f g h"


@torch.no_grad()
def prompt_word_nll(model, tokenizer) -> float:
    """Mean negative log-likelihood of the prompt's words "c" ... "h", each given the ones before it."""
    ids = tokenizer(format_prompt(PROMPT), add_special_tokens=False, return_tensors="pt")[
        "input_ids"
    ]  # <|user|> b ... h <|assistant|>
    logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    words = range(2, ids.shape[1] - 1)  # positions of "c" ... "h"
    return -sum(logp[t - 1, ids[0, t]].item() for t in words) / len(words)


def test_sft_trains_on_the_response_and_never_on_the_prompt():
    """Every demonstration is the prompt "b c d e f g h" answered "a".

    32 steps at lr 2e-2 teach the 1-layer model the answer (response loss 2.17 -> under 0.1). Had the
    prompt tokens been in the loss, the same steps would also teach it the prompt's fixed word order
    (their NLL fell below 0.1 when tried, `make mutants`); on responses only, nothing rewards predicting
    them, and their NLL stays above 1.5 (log 9 = 2.2 is a uniform guess among the 9 tokens a policy emits).
    """
    tokenizer, base = toy_tokenizer(), causal_lm(0)
    frame = pd.DataFrame({"id": [f"d{i}" for i in range(16)], "prompt": [PROMPT] * 16, "response": ["a"] * 16})
    assert prompt_word_nll(base, tokenizer) > 1.5
    cfg = SFTConfig(epochs=8, batch_size=4, learning_rate=2e-2, max_length=32, seed=0)
    result = supervised_finetune(base, tokenizer, frame, frame.head(4), cfg)
    assert result.metrics["base_validation_loss"] > 2.0 and result.metrics["validation_loss"] < 0.1, result.metrics
    assert prompt_word_nll(result.model, tokenizer) > 1.5
