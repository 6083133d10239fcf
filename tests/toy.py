"""Models small enough to reason about by hand, shared by the PPO and SFT tests (not a test module).

The vocabulary is four special tokens and eight words. Policies are 1-layer
Llamas; a "context-free" policy has a zeroed output matrix, so its next-token
distribution is softmax(bias / T) at every position, which makes EOS, KL and
entropy computable by hand.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification, PreTrainedTokenizerFast

from rlhf_dag.data.chat import ASSISTANT, EOS, PAD, USER

WORDS = ["a", "b", "c", "d", "e", "f", "g", "h"]
VOCAB = {token: i for i, token in enumerate([PAD, EOS, USER, ASSISTANT, *WORDS])}
PAD_ID, EOS_ID, ASSISTANT_ID, A_ID = VOCAB[PAD], VOCAB[EOS], VOCAB[ASSISTANT], VOCAB["a"]
SAMPLED = len(WORDS) + 1  # what a policy may emit: the words and EOS
HIDDEN = 16


def toy_tokenizer() -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.WordLevel(VOCAB, unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token=PAD, eos_token=EOS, additional_special_tokens=[USER, ASSISTANT]
    )


def llama_config() -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(VOCAB),
        hidden_size=HIDDEN,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        num_labels=1,
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        bos_token_id=EOS_ID,
    )


def causal_lm(seed: int = 0, bias: dict[str, float] | None = None) -> LlamaForCausalLM:
    """A random 1-layer Llama whose output layer has a bias of -30 on PAD and the chat tokens.

    A real SFT model gives them ~0 mass; a random one would sample PAD mid-response,
    which ppo_train reads as padding. With `bias` (word or EOS -> logit, others 0)
    the output weights are zeroed: the policy is softmax(bias / T) whatever the context.
    """
    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config())
    head = nn.Linear(HIDDEN, len(VOCAB), bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight if bias is None else torch.zeros_like(head.weight))
        head.bias.zero_()
        head.bias[[PAD_ID, VOCAB[USER], ASSISTANT_ID]] = -30.0
        for token, logit in (bias or {}).items():
            head.bias[VOCAB[token]] = logit
    model.lm_head = head
    model.generation_config.pad_token_id, model.generation_config.eos_token_id = PAD_ID, EOS_ID
    return model


def value_model(seed: int = 1) -> LlamaForSequenceClassification:
    torch.manual_seed(seed)
    return LlamaForSequenceClassification(llama_config())


@pytest.fixture(autouse=True)
def one_thread():
    """Models this small run fastest on one thread; a second only waits on the first (and on a busy machine, far longer).

    Autouse in every test module that imports it (`from toy import one_thread`)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
