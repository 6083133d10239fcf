"""A model as a user would bring it for `base_model.pretrained` (not a test module).

Nothing can be downloaded here, so the tests build and save one the way the hub
holds a Qwen2 checkpoint: a byte-level BPE (trained with `tokenizers`) behind
transformers' `Qwen2Tokenizer`, with its own special tokens and ChatML template,
PAD equal to EOS and no BOS; a Qwen2 causal LM (grouped-query attention, q/k/v
biases, untied output layer) whose embedding has exactly one row per token; and
the sampling defaults such checkpoints ship in generation_config.json. Its
weights are random: the tests check what the graph does with it, not what it knows.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM, Qwen2Tokenizer

from rlhf_dag.data.corpus import load_corpus

EOS = "<|im_end|>"
SPECIAL = ["<|endoftext|>", "<|im_start|>", EOS]
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# what Qwen2's generation_config.json holds: kept, they would change every distribution the graph samples
SAMPLING_DEFAULTS = {"do_sample": True, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.1}


def user_tokenizer(vocab_size: int = 600) -> Qwen2Tokenizer:
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(load_corpus("synthetic", 300, 1), trainer=trainer)
    with tempfile.TemporaryDirectory() as folder:
        vocab, merges = bpe.model.save(folder)
        tokenizer = Qwen2Tokenizer(
            vocab=vocab, merges=merges, unk_token=None, eos_token=EOS, pad_token=EOS, additional_special_tokens=SPECIAL
        )
    tokenizer.chat_template = CHATML
    return tokenizer


def save_user_model(path: Path, seed: int = 0) -> Path:
    """A Qwen2 checkpoint with its tokenizer in `path`, as `save_pretrained` (safetensors) writes it."""
    tokenizer = user_tokenizer()
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        **SAMPLING_DEFAULTS, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
