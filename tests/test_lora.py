"""LoRA (peft): only adapters train, PPO's reference is the SFT model itself, and a LoRA model is saved as an adapter
that loads with peft and as merged weights that load with plain transformers."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import dagster as dg
import pytest
import torch
from peft import PeftModel
from test_ppo_train import PROMPTS, RiggedReward, ppo_config
from toy import causal_lm, one_thread, toy_tokenizer, value_model  # noqa: F401  (one_thread: an autouse fixture)
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    Qwen2ForCausalLM,
    Qwen2ForSequenceClassification,
)

from rlhf_dag.config import LoRAConfig
from rlhf_dag.data.chat import format_prompt
from rlhf_dag.training.lora import ADAPTER_DIR, adapt, is_adapted
from rlhf_dag.training.ppo import ppo_models, ppo_train, reference, response_logprobs

TOY_LORA = LoRAConfig(r=2, alpha=4.0)


def _checksum(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode() + state[name].detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _base_weights(model) -> dict[str, torch.Tensor]:
    """A LoRA model's frozen base weights, under their names in the plain model."""
    return {
        n.replace("base_model.model.", "").replace(".base_layer", ""): p.detach().clone()
        for n, p in model.named_parameters()
        if "lora_" not in n
    }


def _rollout(tokenizer, policy):
    """Query + response ids of a few sampled responses, as PPO scores them."""
    from rlhf_dag.training.generate import generate_tokens

    query, response = generate_tokens(policy, tokenizer, [format_prompt(p) for p in PROMPTS], 6, 1.0, generator_seed=0)
    query_response = torch.cat([query, response], dim=1)
    return query_response, query_response != tokenizer.pad_token_id, query.shape[1]


def test_the_lora_reference_is_the_sft_model_itself_not_the_adapted_policy():
    """[PPO-14] Disabling the adapter gives back the SFT model's log-probs exactly, whatever the adapter learned."""
    tokenizer, sft = toy_tokenizer(), causal_lm(seed=0)
    policy = adapt(copy.deepcopy(sft), TOY_LORA)
    torch.manual_seed(1)
    with torch.no_grad():  # what training does to an adapter: B leaves zero
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    query_response, mask, n_query = _rollout(tokenizer, sft)
    with reference(policy, None) as ref:
        reference_lp, _ = response_logprobs(ref, query_response, mask, n_query, 1.0, tokenizer.pad_token_id)
    expected, _ = response_logprobs(sft, query_response, mask, n_query, 1.0, tokenizer.pad_token_id)
    adapted, _ = response_logprobs(policy, query_response, mask, n_query, 1.0, tokenizer.pad_token_id)
    assert torch.allclose(reference_lp, expected, atol=1e-6)
    assert (adapted - expected).abs().max() > 0.1  # the adapter does change the policy: the check above can fail


def test_a_lora_policy_samples_from_a_merged_copy_that_follows_its_adapter():
    """[PPO-18] The merged copy computes what the adapted policy computes, after every update of the adapter, and
    merging never touches the base weights the reference is made of."""
    from rlhf_dag.training.lora import MergedCopy

    tokenizer = toy_tokenizer()
    policy = adapt(causal_lm(seed=0), TOY_LORA)
    base_before = _checksum(_base_weights(policy))
    merged = MergedCopy(policy)
    query_response, mask, n_query = _rollout(tokenizer, policy)
    torch.manual_seed(1)
    for _ in range(2):  # two updates of the adapter, as two PPO iterations make
        with torch.no_grad():
            for name, p in policy.named_parameters():
                if "lora_" in name:
                    p.add_(torch.randn_like(p) * 0.5)
        expected, _ = response_logprobs(policy, query_response, mask, n_query, 1.0, tokenizer.pad_token_id)
        copied, _ = response_logprobs(merged.refresh(), query_response, mask, n_query, 1.0, tokenizer.pad_token_id)
        assert torch.allclose(copied, expected, atol=1e-5)
    assert not any("lora_" in n for n, _ in merged.model.named_parameters())  # a plain model: no adapter to run
    assert _checksum(_base_weights(policy)) == base_before


def test_ppo_with_lora_trains_the_adapter_and_the_critic_never_the_base_weights():
    policy, critic = adapt(causal_lm(seed=0), TOY_LORA), value_model()
    base_before, critic_before = _checksum(_base_weights(policy)), _checksum(critic.state_dict())
    adapter_before = {n: p.detach().clone() for n, p in policy.named_parameters() if "lora_B" in n}
    result = ppo_train(policy, None, RiggedReward(), critic, toy_tokenizer(), PROMPTS, ppo_config(iterations=3))
    assert _checksum(_base_weights(policy)) == base_before
    assert _checksum(critic.state_dict()) != critic_before
    assert all(not torch.equal(p, adapter_before[n]) for n, p in policy.named_parameters() if "lora_B" in n)
    n_adapter = sum(p.numel() for n, p in policy.named_parameters() if "lora_" in n)
    assert result.metrics["trainable_parameters"] == n_adapter + sum(p.numel() for p in critic.parameters())
    # the adapter starts at zero (policy = reference, KL 0), and the policy moves away from its reference as it learns
    kl = [row["kl"] for row in result.history]
    assert abs(kl[0]) < 1e-5 and kl[-1] > 1e-3, kl


def test_with_lora_the_critic_trains_an_adapter_of_its_own_and_its_score_head_never_its_base_weights(tmp_path):
    """[PPO-19] `ppo_models` as the ppo_policy step calls it: the critic starts as the reward model, and with `lora`
    only its adapter and its score head train; with `critic_lora` off every weight of it does."""
    sft, rm = tmp_path / "sft", tmp_path / "rm"
    for folder, model in ((sft, causal_lm(seed=0)), (rm, value_model())):
        model.save_pretrained(folder)
        toy_tokenizer().save_pretrained(folder)
    cfg = ppo_config(iterations=3, lora=TOY_LORA)
    policy, ref, _, critic, tokenizer = ppo_models(str(sft), str(rm), cfg)
    assert ref is None and is_adapted(policy) and is_adapted(critic)
    base_before = _checksum({n: w for n, w in _base_weights(critic).items() if "score" not in n})
    score_before = critic.get_base_model().score.weight.detach().clone()
    adapter_before = {n: p.detach().clone() for n, p in critic.named_parameters() if "lora_B" in n}
    ppo_train(policy, ref, RiggedReward(), critic, tokenizer, PROMPTS, cfg)
    assert _checksum({n: w for n, w in _base_weights(critic).items() if "score" not in n}) == base_before
    assert not torch.equal(critic.get_base_model().score.weight, score_before)
    assert all(not torch.equal(p, adapter_before[n]) for n, p in critic.named_parameters() if "lora_B" in n)
    whole = ppo_models(str(sft), str(rm), cfg.model_copy(update={"critic_lora": False}))[3]
    assert not is_adapted(whole) and all(p.requires_grad for p in whole.parameters())


# ---------------------------------------------------------------- through the graph, on the user's Qwen2 checkpoint


def _lora_targets(adapter: Path) -> set[str]:
    return {
        f"{module}.weight" for module in json.loads((adapter / "adapter_config.json").read_text())["target_modules"]
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    "asset,upstream,cls,architecture",
    [
        ("sft_model", "base_model", AutoModelForCausalLM, Qwen2ForCausalLM),
        ("reward_model", "sft_model", AutoModelForSequenceClassification, Qwen2ForSequenceClassification),
        ("ppo_policy", "sft_model", AutoModelForCausalLM, Qwen2ForCausalLM),
    ],
    ids=["sft_model", "reward_model", "ppo_policy"],
)
def test_a_lora_step_trains_only_its_adapter_and_saves_it_beside_merged_weights(
    lora_run, asset, upstream, cls, architecture
):
    _, instance, result, _ = lora_run
    handle = result.output_for_node(asset)
    folder, upstream_dir = Path(handle.path), Path(handle.lineage[upstream])
    metadata = instance.get_latest_materialization_event(dg.AssetKey(asset)).asset_materialization.metadata
    assert metadata["fine_tune"].value.startswith("lora r=4 alpha=8")
    assert handle.metrics["trainable_parameters"] < 0.2 * handle.metrics["parameters"]  # PPO's: policy and critic

    merged = cls.from_pretrained(folder)  # the handle's folder: a plain transformers model
    assert type(merged) is architecture and not (folder / "adapter_config.json").exists()
    start = cls.from_pretrained(upstream_dir, **({"num_labels": 1} if asset == "reward_model" else {}))
    start_weights = {n: w.clone() for n, w in start.state_dict().items()}
    adapted = PeftModel.from_pretrained(start, folder / ADAPTER_DIR)  # the adapter, over the exact upstream version
    assert Path(adapted.peft_config["default"].base_model_name_or_path) == upstream_dir
    rebuilt, saved = adapted.merge_and_unload().state_dict(), merged.state_dict()
    assert saved.keys() == rebuilt.keys()
    assert all(torch.allclose(saved[n], rebuilt[n], atol=1e-6) for n in saved), "merged weights != upstream + adapter"

    targets = _lora_targets(folder / ADAPTER_DIR)
    frozen = {
        n for n in saved if n not in targets and not n.startswith("score.")
    }  # a reward model's new head trains whole
    assert {"model.embed_tokens.weight", "model.norm.weight"} <= frozen
    assert _checksum({n: saved[n] for n in frozen}) == _checksum({n: start_weights[n] for n in frozen})
    assert any(not torch.equal(saved[n], start_weights[n]) for n in targets)


@pytest.mark.slow
def test_lora_ppo_is_kl_penalized_against_the_sft_model(lora_run):
    """The reference is the SFT model: the policy's KL to it grows from 0 as the adapter trains (a reference that
    is the adapted policy itself would keep it at 0), and PPO's reference log-probs are the SFT model's."""
    _, _, result, _ = lora_run
    ppo_dir, sft_dir = Path(result.output_for_node("ppo_policy").path), Path(result.output_for_node("sft_model").path)
    kl = [row["kl"] for row in json.loads((ppo_dir / "ppo_history.json").read_text())]
    assert abs(kl[0]) < 1e-5 and abs(kl[-1]) > 1e-5, (
        kl
    )  # the sampled estimate of KL can be negative; 0 only if the reference is the policy

    tokenizer, sft = AutoTokenizer.from_pretrained(sft_dir), AutoModelForCausalLM.from_pretrained(sft_dir)
    policy = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(sft_dir), ppo_dir / ADAPTER_DIR)
    query_response, mask, n_query = _rollout(tokenizer, policy)
    with reference(policy, None) as ref:
        reference_lp, _ = response_logprobs(ref, query_response, mask, n_query, 1.0, tokenizer.pad_token_id)
    expected, _ = response_logprobs(sft, query_response, mask, n_query, 1.0, tokenizer.pad_token_id)
    assert torch.allclose(reference_lp, expected, atol=1e-5)


@pytest.mark.slow
def test_the_graph_downstream_of_lora_models_runs_on_their_merged_weights(lora_run):
    _, _, result, full = lora_run
    rm = result.output_for_node("reward_model")
    assert rm.lineage["sft_model"] == result.output_for_node("sft_model").path  # the LoRA SFT model's merged dir
    evaluation = result.output_for_node("policy_evaluation")
    assert evaluation.lineage["ppo_policy"] == result.output_for_node("ppo_policy").path
    assert evaluation.lineage["base_model"] == full.output_for_node("base_model").path
    value_model_dir = Path(result.output_for_node("ppo_policy").path) / "value_model"
    assert type(AutoModelForSequenceClassification.from_pretrained(value_model_dir)) is Qwen2ForSequenceClassification
    assert (value_model_dir / ADAPTER_DIR / "adapter_config.json").is_file()  # the critic's own adapter (PPO-19)
