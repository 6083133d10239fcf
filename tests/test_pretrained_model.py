"""`base_model.pretrained`: a user's checkpoint of a real architecture (Qwen2, its own BPE tokenizer) through the whole graph."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    Qwen2ForCausalLM,
    Qwen2ForSequenceClassification,
)
from user_model import EOS as USER_EOS
from user_model import SAMPLING_DEFAULTS, user_tokenizer

from rlhf_dag.data.chat import ASSISTANT, EOS, PAD, USER, format_prompt
from rlhf_dag.training.pretrain import wrap_tokenizer


@pytest.mark.parametrize(
    "eos,pad",
    [(USER_EOS, USER_EOS), (USER_EOS, None), (USER_EOS, "<|endoftext|>"), (None, None)],
    ids=["pad-is-eos", "no-pad", "own-pad", "no-eos"],
)
def test_a_users_tokenizer_keeps_its_eos_and_gets_a_distinct_pad_and_the_chat_tokens(eos, pad):
    """A checkpoint without a chat template of its own gets the graph's format and tokens."""
    tokenizer = user_tokenizer()
    tokenizer.eos_token, tokenizer.pad_token, tokenizer.chat_template = eos, pad, None
    own_ids = {token: tokenizer.convert_tokens_to_ids(token) for token in ("<|endoftext|>", "<|im_start|>", USER_EOS)}
    wrap_tokenizer(tokenizer)
    assert tokenizer.eos_token == (
        eos or EOS
    )  # the EOS the model learned to emit stays; ours only where there was none
    assert tokenizer.pad_token == (pad if pad not in (None, eos) else PAD) != tokenizer.eos_token
    assert {token: tokenizer.convert_tokens_to_ids(token) for token in own_ids} == own_ids
    ids = tokenizer(format_prompt("What is 2 + 2?") + "4" + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    assert (
        ids[0] == tokenizer.convert_tokens_to_ids(USER)
        and tokenizer.convert_tokens_to_ids(ASSISTANT) in ids
        and ids[-1] == tokenizer.eos_token_id
    )
    # its own special tokens stay special: decoding a response skips them as before
    assert (
        tokenizer.decode(tokenizer("4<|im_start|>", add_special_tokens=False)["input_ids"], skip_special_tokens=True)
        == "4"
    )
    chat = [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4"}]
    assert (
        tokenizer.apply_chat_template(chat, tokenize=False)
        == format_prompt("What is 2 + 2?") + "4" + tokenizer.eos_token
    )


def test_a_tokenizer_that_opens_with_bos_is_sampled_scored_and_templated_as_trl_trains_it():
    """Llama's tokenizer prepends its BOS, and TRL's trainers tokenize plain text with it (`trl.data_utils._tokenize`):
    the graph's sampling, scoring and chat template must give the model the same ids."""
    from tokenizers import processors
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from trl.data_utils import _tokenize

    from rlhf_dag.training.generate import generate_tokens

    tokenizer = user_tokenizer()
    tokenizer.bos_token, tokenizer.chat_template = "<|endoftext|>", None
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A",
        pair="<|endoftext|> $A $B",
        special_tokens=[("<|endoftext|>", tokenizer.bos_token_id)],
    )
    wrap_tokenizer(tokenizer)
    prompt, response = "What is 2 + 2?", "4"
    trained = _tokenize(tokenizer, format_prompt(prompt) + response + tokenizer.eos_token)["input_ids"]
    assert trained[0] == tokenizer.bos_token_id
    chat = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    assert tokenizer.apply_chat_template(chat, return_dict=True)["input_ids"] == trained
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    query, _ = generate_tokens(model, tokenizer, [format_prompt(prompt), format_prompt("Hi")], 2, 1.0, generator_seed=0)
    assert query[0].tolist() == _tokenize(tokenizer, format_prompt(prompt))["input_ids"] == trained[: query.shape[1]]


@pytest.mark.parametrize("keep", [True, False], ids=["own-template", "graph-template"])
def test_an_instruction_tuned_tokenizer_keeps_its_chat_template_and_eos_and_prompts_are_rendered_in_it(keep):
    """What instruction tuning taught a model is its own format (ChatML here, as SmolLM2's): every step formats a
    request with it, exactly as `apply_chat_template` renders one user turn; `keep_chat_template: false` opts out."""
    from tokenizers import processors
    from user_model import CHATML

    tokenizer = user_tokenizer()
    n = len(tokenizer)
    wrap_tokenizer(tokenizer, keep_template=keep)
    assert tokenizer.eos_token == USER_EOS and tokenizer.pad_token == PAD
    chat = [{"role": "user", "content": "What is 2 + 2?"}]
    rendered = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert format_prompt(" What is 2 + 2? ", tokenizer) == rendered
    if keep:
        assert tokenizer.chat_template == CHATML and len(tokenizer) == n + 1  # only the PAD
        assert rendered == "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n"
    else:
        assert rendered == format_prompt("What is 2 + 2?") and len(tokenizer) == n + 3
    # a BOS the tokenizer adds when it encodes is not written twice
    if keep:
        tokenizer.bos_token = "<|endoftext|>"
        tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single="<|endoftext|> $A", pair="<|endoftext|> $A $B", special_tokens=[("<|endoftext|>", 0)]
        )
        assert format_prompt("Hi", tokenizer) == rendered.replace("What is 2 + 2?", "Hi")


def _path(run, asset: str) -> Path:
    return Path(run[2].output_for_node(asset).path)


@pytest.mark.slow
def test_the_whole_graph_runs_on_a_users_qwen2_checkpoint(user_model_run):
    _, _, result, _, _ = user_model_run
    evaluations = result.get_asset_check_evaluations()
    assert len(evaluations) == 7 and all(e.passed for e in evaluations)
    assert result.output_for_node("base_model").tags["pretrained"].endswith("checkpoint")
    sft = result.output_for_node("sft_model").metrics
    assert sft["validation_loss"] < sft["base_validation_loss"]
    evaluation = result.output_for_node("policy_evaluation").metrics
    assert all(
        math.isfinite(evaluation[k]) for k in ("win_rate_ppo_vs_sft", "ppo_rm_mean", "ppo_kl_to_sft", "sft_gold_mean")
    )
    for asset, cls, architecture in (
        ("base_model", AutoModelForCausalLM, Qwen2ForCausalLM),
        ("sft_model", AutoModelForCausalLM, Qwen2ForCausalLM),
        ("reward_model", AutoModelForSequenceClassification, Qwen2ForSequenceClassification),
        ("ppo_policy", AutoModelForCausalLM, Qwen2ForCausalLM),
    ):
        model = cls.from_pretrained(_path(user_model_run, asset))  # plain transformers, no code of ours
        tokenizer = AutoTokenizer.from_pretrained(_path(user_model_run, asset))
        assert type(model) is architecture, asset
        assert (
            tokenizer.eos_token == USER_EOS
            and model.config.eos_token_id
            == tokenizer.eos_token_id
            != model.config.pad_token_id
            == tokenizer.pad_token_id
        )
        # the checkpoint's own ChatML format, kept: what every step trained and sampled with
        assert (
            tokenizer.apply_chat_template(
                [{"role": "user", "content": "What is 2 + 2?"}], add_generation_prompt=True, tokenize=False
            )
            == format_prompt("What is 2 + 2?", tokenizer)
            == "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n"
        )


@pytest.mark.slow
def test_the_base_model_is_the_users_weights_with_rows_for_the_new_tokens(user_model_run):
    _, _, _, _, checkpoint = user_model_run
    user = AutoModelForCausalLM.from_pretrained(checkpoint).state_dict()
    base_dir = _path(user_model_run, "base_model")
    base, tokenizer = AutoModelForCausalLM.from_pretrained(base_dir), AutoTokenizer.from_pretrained(base_dir)
    n_user = user["model.embed_tokens.weight"].shape[0]
    assert base.get_input_embeddings().num_embeddings == len(tokenizer) == n_user + 1  # the PAD
    for name, weight in base.state_dict().items():
        rows = weight[:n_user] if name in ("model.embed_tokens.weight", "lm_head.weight") else weight
        assert torch.equal(rows, user[name]), name
    # the checkpoint's sampling defaults are not the graph's: every step passes its own
    assert not {k for k in SAMPLING_DEFAULTS if k in json.loads((base_dir / "generation_config.json").read_text())}


@pytest.mark.slow
def test_ppo_on_the_users_model_samples_from_the_distribution_it_optimizes(user_model_run):
    """[PPO-12] With the checkpoint's repetition_penalty/top_p left in its generation config, rollouts were drawn from
    another distribution than the one PPO scores: the first ratio was off by 0.03 instead of 5e-7."""
    history = json.loads((_path(user_model_run, "ppo_policy") / "ppo_history.json").read_text())
    assert max(row["first_minibatch_max_ratio_error"] for row in history) < 1e-4
