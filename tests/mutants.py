"""`make mutants`: break the code on purpose, one way at a time, and check that a test notices.

Each mutation is a textual patch of one file (exact snippets, so a change to the
code shows up as "patch did not apply", never as a silent pass). The script
copies the working tree (tracked and untracked, not ignored files) to a scratch
folder per worker with the venv linked in, checks that the named tests pass
there unmutated, then for each mutation patches its worker's copy, runs the tests
that should catch it (`pytest -x`, in the order listed, fastest first), prints
one line, restores the file, and ends with `caught N of M`.

"Caught" means one of the named tests failed in its own body, on an assertion
(or `pytest.fail`) raised from a frame in tests/: conftest.py logs every failed
phase of a test when RLHF_DAG_FAILURE_LOG is set. A failure in a fixture's
setup, a crash in library code, or a test that was not named is an ERROR, not a
catch: the patch no longer means what it says, or the test does not guard it.
The script exits non-zero unless every mutation is caught.

`check_patches` (run by tests/test_mutants.py in `make test`, in a second) applies
every patch in memory: each snippet occurs once, the patch changes the file, the
result parses, and every named test exists.

    .venv/bin/python tests/mutants.py              # all mutations, two workers (what `make mutants` runs)
    .venv/bin/python tests/mutants.py -k gate      # those whose name contains "gate"
    .venv/bin/python tests/mutants.py --docs       # and rewrite the table in docs/testing.md
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from queue import Queue

REPO = Path(__file__).resolve().parent.parent
PPO = "tests/test_ppo_train.py::"
GATES = "tests/test_gates.py::"
UNIT_GATE = GATES + "test_each_gate_passes_at_its_threshold_and_refuses_past_it"
FEEDBACK = "tests/test_feedback.py::"
LORA = "tests/test_lora.py::"
PRETRAINED = "tests/test_pretrained_model.py::"
METHODS = "tests/test_preference_methods.py::"


@dataclass
class Mutation:
    name: str
    file: str
    patches: list[tuple[str, str]]  # (snippet that must occur exactly once, its replacement)
    tests: list[str]  # pytest node ids, fastest first


MUTATIONS = [
    Mutation(
        "pretraining: packed documents attend to each other (attention mask kept)",
        "rlhf_dag/training/pretrain.py",
        [('        del batch["attention_mask"]\n', "")],
        [
            "tests/test_pretrain.py::test_a_packed_document_never_sees_the_one_before_it",
            "tests/test_pretrain.py::test_packed_rows_give_each_document_its_own_loss",
        ],
    ),
    Mutation(
        "pretraining: a digit's space is a token of its own (operands not copyable)",
        "rlhf_dag/training/pretrain.py",
        [
            (
                'pre_tokenizers.Split(Regex("\\u0120?[0-9]"), behavior="isolated")',
                "pre_tokenizers.Digits(individual_digits=True)",
            )
        ],
        ["tests/test_pretrain.py::test_digits_are_the_same_tokens_in_a_request_and_its_answer"],
    ),
    Mutation(
        "confused sums never answer another sum",
        "rlhf_dag/data/domain.py",
        [
            (
                "        if rng.random() < 0.5:  # the right sum, a wrong result",
                "        if True:  # the right sum, a wrong result",
            )
        ],
        ["tests/test_pretrain.py::test_a_confused_sum_either_misstates_the_result_or_answers_another_sum"],
    ),
    Mutation(
        "PPO scoring reads the RM score one token before the response's end",
        "rlhf_dag/training/ppo.py",
        [
            (
                "rm_scores[:, -1]  # rows are left-padded",
                "rm_scores[:, -2]  # rows are left-padded",
            )
        ],
        [
            "tests/test_ppo_speed_paths.py::test_packed_scoring_gives_the_padded_rollouts_reference_log_probs_values_and_scores"
        ],
    ),
    Mutation(
        "rows after a shared opening count their positions from 0",
        "rlhf_dag/training/ppo.py",
        [("        position_ids=position_ids + shared,\n", "        position_ids=position_ids,\n")],
        ["tests/test_ppo_speed_paths.py::test_a_packed_minibatch_scores_as_the_padded_rollout[shared-prefix]"],
    ),
    Mutation(
        "rows after a shared opening do not attend to it",
        "rlhf_dag/training/ppo.py",
        [
            (
                "mask = torch.cat([mb.attention_mask.new_ones((rows, shared)), mb.attention_mask], dim=1)",
                "mask = torch.cat([mb.attention_mask.new_zeros((rows, shared)), mb.attention_mask], dim=1)",
            )
        ],
        ["tests/test_ppo_speed_paths.py::test_a_packed_minibatch_scores_as_the_padded_rollout[shared-prefix]"],
    ),
    Mutation(
        "a shared opening run once takes no gradient (its keys and values detached)",
        "rlhf_dag/training/ppo.py",
        [
            (
                "layer.keys, layer.values = layer.keys.expand(rows, -1, -1, -1), layer.values.expand(rows, -1, -1, -1)",
                "layer.keys, layer.values = layer.keys.detach().expand(rows, -1, -1, -1), layer.values.detach().expand(rows, -1, -1, -1)",
            )
        ],
        ["tests/test_ppo_speed_paths.py::test_a_shared_opening_run_once_trains_as_if_every_row_ran_it[shared-prefix]"],
    ),
    Mutation(
        "the sampler ignores the temperature",
        "rlhf_dag/training/generate.py",
        [
            (
                "logp = torch.log_softmax(logits.float() / temperature, dim=-1)",
                "logp = torch.log_softmax(logits.float(), dim=-1)",
            )
        ],
        ["tests/test_ppo_speed_paths.py::test_the_sampler_draws_each_token_with_its_tempered_probability"],
    ),
    Mutation(
        "the sampler takes the token after the drawn one",
        "rlhf_dag/training/generate.py",
        [
            (
                "tokens = torch.searchsorted(cdf, u, right=True).clamp(max=cdf.shape[1] - 1)",
                "tokens = torch.searchsorted(cdf, u, right=True).add(1).clamp(max=cdf.shape[1] - 1)",
            )
        ],
        ["tests/test_ppo_speed_paths.py::test_the_sampler_draws_each_token_with_its_tempered_probability"],
    ),
    Mutation(
        "RM accuracy by kind lumps every kind together",
        "rlhf_dag/training/reward.py",
        [('right[judge.kind(prompt) or "other"].append(ok)', 'right["other"].append(ok)')],
        ["tests/test_reward_loss.py::test_accuracy_by_kind_splits_the_held_out_pairs_by_task_kind"],
    ),
    Mutation(
        "win rate by kind pairs the samples with another prompt's kind",
        "rlhf_dag/training/evaluate.py",
        [("kinds = [judge.kind(p) for p in prompts]", "kinds = [judge.kind(p) for p in reversed(prompts)]")],
        ["tests/test_reward_loss.py::test_win_rate_by_kind_judges_each_kind_on_its_own_pairs"],
    ),
    Mutation(
        "RM trained with chosen and rejected swapped",
        "rlhf_dag/training/reward.py",
        [
            (
                '"chosen": list(train["chosen"]),\n            "rejected": list(train["rejected"]),',
                '"chosen": list(train["rejected"]),\n            "rejected": list(train["chosen"]),',
            )
        ],
        ["tests/test_smoke_graph.py::test_the_reward_model_beats_chance_and_its_starting_accuracy"],
    ),
    Mutation(
        "KL penalty's sign flipped",
        "rlhf_dag/training/ppo.py",
        [("rewards = -kl_coef * kl", "rewards = kl_coef * kl")],
        ["tests/test_ppo_math.py::test_kl_penalty_on_every_token_and_score_on_the_last_real_token"],
    ),
    Mutation(
        "advantages not whitened",
        "rlhf_dag/training/ppo.py",
        [("advantages = masked_whiten(advantages, mask)", "advantages = advantages")],
        [PPO + "test_advantages_are_whitened_over_the_rollout_batch"],
    ),
    Mutation(
        "missing-EOS penalty inverted (given to responses that end)",
        "rlhf_dag/training/ppo.py",
        [("torch.where(ended, score,", "torch.where(~ended, score,")],
        [
            PPO + "test_missing_eos_penalty_replaces_the_score_of_unended_responses",
            PPO + "test_missing_eos_penalty_on_a_mixed_rollout",
        ],
    ),
    Mutation(
        "reference reloaded from the policy every iteration",
        "rlhf_dag/training/ppo.py",
        [
            (
                "    for iteration in range(resumed_from + 1, cfg.iterations + 1):\n",
                "    for iteration in range(resumed_from + 1, cfg.iterations + 1):\n        ref_policy.load_state_dict(policy.state_dict())\n",
            )
        ],
        [PPO + "test_reference_and_reward_model_weights_are_untouched_while_policy_and_critic_train"],
    ),
    Mutation(
        "reference in the optimizer and trained through a KL term of the loss",
        "rlhf_dag/training/ppo.py",
        [
            (
                "p for p in (*policy.parameters(), *value_model.parameters()) if p.requires_grad\n",
                "p for p in (*policy.parameters(), *value_model.parameters(), *ref_policy.requires_grad_(True).parameters()) if p.requires_grad\n",
            ),
            (
                "new_logprobs, entropy, new_values = learner(packed, cfg.temperature, pad)",
                "new_logprobs, entropy, new_values = packed_logprobs_and_values(policy, value_model, packed, cfg.temperature)\n"
                "                ref_new_logprobs = packed_logprobs_and_values(ref_policy, value_model, packed, cfg.temperature)[0]",
            ),
            (
                "loss = pg_loss + cfg.vf_coef * vf_loss",
                "loss = pg_loss + cfg.vf_coef * vf_loss + kl_coef * (new_logprobs - ref_new_logprobs).mean()",
            ),
        ],
        [PPO + "test_reference_and_reward_model_weights_are_untouched_while_policy_and_critic_train"],
    ),
    Mutation(
        "LoRA: PPO's reference is the adapted policy, not the SFT model",
        "rlhf_dag/training/ppo.py",
        [("    with policy.disable_adapter():\n        yield policy\n", "    if True:\n        yield policy\n")],
        [
            LORA + "test_the_lora_reference_is_the_sft_model_itself_not_the_adapted_policy",
            LORA + "test_lora_ppo_is_kl_penalized_against_the_sft_model",
        ],
    ),
    Mutation(
        "LoRA: PPO trains the base weights along with the adapter",
        "rlhf_dag/training/ppo.py",
        [
            (
                "policy, reference = adapt(policy, cfg.lora), None",
                "policy, reference = adapt(policy, cfg.lora).requires_grad_(True), None",
            )
        ],
        [LORA + "test_a_lora_step_trains_only_its_adapter_and_saves_it_beside_merged_weights[ppo_policy]"],
    ),
    Mutation(
        "LoRA: the model folder holds the upstream weights, the adapter not merged",
        "rlhf_dag/training/lora.py",
        [("merged = model.merge_and_unload()", "merged = model.unload()")],
        [LORA + "test_a_lora_step_trains_only_its_adapter_and_saves_it_beside_merged_weights[sft_model]"],
    ),
    Mutation(
        "a user's model: its EOS replaced by ours",
        "rlhf_dag/training/pretrain.py",
        [
            (
                '    if tokenizer.eos_token is None:\n        special["eos_token"] = EOS',
                '    if True:\n        special["eos_token"] = EOS',
            )
        ],
        [PRETRAINED + "test_a_users_tokenizer_keeps_its_eos_and_gets_a_distinct_pad_and_the_chat_tokens"],
    ),
    Mutation(
        "a user's model: prompts sampled without the BOS its tokenizer adds",
        "rlhf_dag/training/generate.py",
        [
            (
                'batch = tokenizer(texts, return_tensors="pt", padding=True)',
                'batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)',
            )
        ],
        [PRETRAINED + "test_a_tokenizer_that_opens_with_bos_is_sampled_scored_and_templated_as_trl_trains_it"],
    ),
    Mutation(
        "SFT loss on prompt tokens too",
        "rlhf_dag/training/sft.py",
        [("completion_only_loss=True", "completion_only_loss=False")],
        ["tests/test_sft.py::test_sft_trains_on_the_response_and_never_on_the_prompt"],
    ),
    Mutation(
        "eval win rate computed PPO vs PPO",
        "rlhf_dag/training/evaluate.py",
        [
            (
                "win_rate(results[a][key], results[b][key])",
                "win_rate(results[a][key], results[a if a == method else b][key])",
            )
        ],
        ["tests/test_steps.py::test_the_evaluation_compares_ppo_with_sft_samples"],
    ),
    Mutation(
        "gate base_model_learned always passes",
        "rlhf_dag/pipeline/checks.py",
        [('passed = m["final_loss"] < m["initial_loss"] and math.isfinite(m["final_loss"])', "passed = True")],
        [
            UNIT_GATE + "[base_model_learned]",
            GATES + "test_a_model_that_learned_nothing_blocks_its_downstream[base_model]",
        ],
    ),
    Mutation(
        "gate sft_beats_base always passes",
        "rlhf_dag/pipeline/checks.py",
        [('passed = m["validation_loss"] < m["base_validation_loss"]', "passed = True")],
        [UNIT_GATE + "[sft_beats_base]", GATES + "test_a_model_that_learned_nothing_blocks_its_downstream[sft_model]"],
    ),
    Mutation(
        "gate reward_model_accuracy always passes",
        "rlhf_dag/pipeline/checks.py",
        [("return _gate(\n        accuracy >= floor,", "return _gate(\n        True,")],
        [UNIT_GATE + "[reward_model_accuracy]", GATES + "test_a_reward_model_below_its_accuracy_floor_blocks_ppo"],
    ),
    Mutation(
        "gate ppo_within_kl_budget always passes",
        "rlhf_dag/pipeline/checks.py",
        [("return _gate(\n        kl <= budget,", "return _gate(\n        True,")],
        [
            UNIT_GATE + "[ppo_within_kl_budget]",
            GATES + "test_a_ppo_policy_past_a_gate_blocks_the_evaluation[kl_budget]",
        ],
    ),
    Mutation(
        "gate ppo_emits_eos always passes",
        "rlhf_dag/pipeline/checks.py",
        [("return _gate(\n        rate >= floor,", "return _gate(\n        True,")],
        [UNIT_GATE + "[ppo_emits_eos]", GATES + "test_a_ppo_policy_past_a_gate_blocks_the_evaluation[eos_rate_floor]"],
    ),
    Mutation(
        "gate ppo_finite always passes",
        "rlhf_dag/pipeline/checks.py",
        [('passed = finite and metrics["finite"] == 1.0', "passed = True")],
        [UNIT_GATE + "[ppo_finite-inf]", UNIT_GATE + "[ppo_finite-flag]"],
    ),
    Mutation(
        "the champion alias ignores the current champion's lower bound",
        "rlhf_dag/pipeline/registry.py",
        [("        if not win >= bound:", "        if False:")],
        ["tests/test_methods.py::test_the_champion_rule"],
    ),
    Mutation(
        "a multi-turn prompt's assistant turn loses its EOS",
        "rlhf_dag/data/chat.py",
        [('ASSISTANT + m["content"] + EOS', 'ASSISTANT + m["content"]')],
        ["tests/test_label_formats.py::test_the_chat_template_renders_a_conversation_as_the_prompt_format"],
    ),
    Mutation(
        "an HH-RLHF comparison keeps the assistant marker in its responses",
        "rlhf_dag/data/label_files.py",
        [("        cut += len(HH_ASSISTANT)\n", "")],
        ["tests/test_label_formats.py::test_each_documented_shape_becomes_the_canonical_record"],
    ),
    Mutation(
        "GRPO/RLOO reward ignores the reward model",
        "rlhf_dag/training/online.py",
        [("            return scores\n", "            return [0.0 for _ in scores]\n")],
        ["tests/test_methods.py::test_an_online_method_moves_the_policy_with_the_reward_model_as_reward"],
    ),
    Mutation(
        "a failed atomic write leaves its temporary file",
        "rlhf_dag/artifacts.py",
        [("    finally:\n        _remove(tmp)\n", "    finally:\n        pass\n")],
        ["tests/test_datasets.py::test_a_write_failing_halfway_leaves_the_previous_file_and_no_temp_file"],
    ),
    Mutation(
        "make-labels ranks the policy's samples without a share per kind",
        "rlhf_dag/data/synthetic_labels.py",
        [
            (
                "if key not in seen and len(pairs) < n and per_kind[task.kind] < quota[task.kind]:",
                "if key not in seen and len(pairs) < n:",
            )
        ],
        ["tests/test_domain_and_gold.py::test_policy_comparisons_give_each_kind_an_equal_share_of_the_pairs"],
    ),
    Mutation(
        "make-labels ignores --kind-weight (every kind an equal share)",
        "rlhf_dag/data/synthetic_labels.py",
        [
            (
                "return {kind: math.ceil(n * weights.get(kind, 1.0) / total) for kind in KINDS}",
                "return {kind: math.ceil(n / len(KINDS)) for kind in KINDS}",
            )
        ],
        ["tests/test_domain_and_gold.py::test_policy_comparisons_give_a_weighted_kind_its_weight_in_pairs"],
    ),
    Mutation(
        "a kind with no held-out prompt stays unmeasured",
        "rlhf_dag/data/datasets.py",
        [("    if groups is not None:\n        sets +=", "    if False:\n        sets +=")],
        [
            "tests/test_datasets.py::test_every_group_of_two_prompts_or_more_gets_held_out_rows_and_the_others_keep_their_split",
            "tests/test_datasets.py::test_the_smollm2_comparisons_hold_out_pairs_of_every_kind",
        ],
    ),
    Mutation(
        "samples are keyed by the model's folder alone",
        "rlhf_dag/training/generate.py",
        [
            (
                '"weights": [(w.name, w.stat().st_size, w.stat().st_mtime_ns) for w in weights],',
                '"weights": [w.name for w in weights],',
            )
        ],
        ["tests/test_sample_cache.py::test_a_folder_written_again_is_another_model"],
    ),
    Mutation(
        "a human ranking's pairs in reverse order",
        "rlhf_dag/data/feedback.py",
        [
            (
                '"chosen": ranking.responses[i],\n                "rejected": ranking.responses[j],',
                '"chosen": ranking.responses[j],\n                "rejected": ranking.responses[i],',
            )
        ],
        [FEEDBACK + "test_a_ranking_of_k_gives_its_k_choose_2_pairs_in_rank_order_with_provenance"],
    ),
    Mutation(
        "a ranking already pulled is appended again",
        "rlhf_dag/data/feedback.py",
        [("new = [r for r in dict.fromkeys(rankings) if r.key not in present]", "new = list(dict.fromkeys(rankings))")],
        [
            FEEDBACK + "test_appending_is_idempotent_keeps_the_old_bytes_and_the_result_loads",
            FEEDBACK + "test_pull_labels_appends_a_dropped_export_once_and_a_second_pull_adds_nothing",
        ],
    ),
    Mutation(
        "a task whose responses were edited in Label Studio is accepted",
        "rlhf_dag/data/label_studio.py",
        [('if "responses" in data and data.get("responses_sha256")', 'if False and data.get("responses_sha256")')],
        [FEEDBACK + "test_an_export_is_read_with_skips_ties_edits_and_pairwise_choices"],
    ),
    Mutation(
        "RM loss averages pairs, not rankings (InstructGPT 3.5)",
        "rlhf_dag/training/reward.py",
        [
            (
                "return -(F.logsigmoid(chosen - rejected) * pair_weight).sum() / pair_weight.sum()",
                "return -F.logsigmoid(chosen - rejected).mean()",
            )
        ],
        [FEEDBACK + "test_the_ranking_loss_makes_one_ranking_one_batch_element"],
    ),
    Mutation(
        "RM batches cut through rankings",
        "rlhf_dag/training/reward.py",
        [
            (
                "            if current and len(current) + len(self.groups[g]) > self.batch_size:\n                batches.append(current)\n                current = []\n            current = current + self.groups[g]\n",
                "            current = current + self.groups[g]\n            while len(current) >= self.batch_size:\n                batches.append(current[: self.batch_size])\n                current = current[self.batch_size :]\n",
            )
        ],
        [FEEDBACK + "test_ranking_batches_never_split_a_ranking"],
    ),
    Mutation(
        "PPO resumed without its random states",
        "rlhf_dag/training/ppo.py",
        [('        resume.set_rng_states(resumed["rng"][distributed.rank()])\n', "")],
        [
            "tests/test_resume.py::test_a_killed_run_resumes_and_ends_with_the_weights_of_an_uninterrupted_run[ppo_policy]"
        ],
    ),
    Mutation(
        "checkpoint key blind to a labeled file's bytes",
        "rlhf_dag/training/resume.py",
        [("        if path.is_file():", "        if False:")],
        ["tests/test_resume.py::test_the_checkpoint_key_changes_with_every_input_and_training_field_only"],
    ),
    Mutation(
        "run config cannot set a field to None (an override of None is dropped)",
        "rlhf_dag/config.py",
        [
            (
                "values = {**PROFILES[profile].get(asset, {}), **(overrides or {})}",
                "values = {**PROFILES[profile].get(asset, {}), **{k: v for k, v in (overrides or {}).items() if v is not None}}",
            )
        ],
        ["tests/test_config.py::test_an_override_of_none_is_kept_and_an_absent_field_takes_the_profile_value"],
    ),
    Mutation(
        "a profile's misspelt field is ignored",
        "rlhf_dag/config.py",
        [("unknown = sorted(set(fields) - set(cls.model_fields))", "unknown = []")],
        ["tests/test_config.py::test_a_profile_that_names_an_unknown_asset_or_field_is_an_error"],
    ),
    Mutation(
        "DPO trained with chosen and rejected swapped",
        "rlhf_dag/training/dpo.py",
        [
            (
                '"chosen": list(frame["chosen"]),\n            "rejected": list(frame["rejected"]),',
                '"chosen": list(frame["rejected"]),\n            "rejected": list(frame["chosen"]),',
            )
        ],
        [METHODS + "test_dpo_gives_the_chosen_responses_of_held_out_pairs_a_clearly_higher_implicit_reward"],
    ),
    Mutation(
        "GRPO and RLOO maximize the negated reward-model score",
        "rlhf_dag/training/online.py",
        [("            return scores\n", "            return [-s for s in scores]\n")],
        [
            METHODS + "test_online_method_raises_the_reward_model_score_far_above_an_lr_0_control[grpo]",
            METHODS + "test_online_method_raises_the_reward_model_score_far_above_an_lr_0_control[rloo]",
        ],
    ),
    Mutation(
        "PPO's clip range ignored",
        "rlhf_dag/training/ppo.py",
        [
            (
                "new_logprobs, old_logprobs, mb_advantages, mb_mask, cfg.clip_range\n",
                "new_logprobs, old_logprobs, mb_advantages, mb_mask, 1e9\n",
            )
        ],
        [PPO + "test_a_tight_clip_range_holds_the_policy_near_its_rollout_policy"],
    ),
    Mutation(
        "PPO's clip range fixed at the default 0.2",
        "rlhf_dag/training/ppo.py",
        [
            (
                "new_logprobs, old_logprobs, mb_advantages, mb_mask, cfg.clip_range\n",
                "new_logprobs, old_logprobs, mb_advantages, mb_mask, 0.2\n",
            )
        ],
        [PPO + "test_a_tight_clip_range_holds_the_policy_near_its_rollout_policy"],
    ),
    Mutation(
        "RM score read at the first token, not the EOS",
        "rlhf_dag/training/reward.py",
        [("all_scores[torch.arange(len(chunk)), last].tolist()", "all_scores[:, 0].tolist()")],
        ["tests/test_reward_loss.py::test_each_text_is_scored_at_its_own_eos_in_a_padded_batch"],
    ),
    Mutation(
        "gates read their thresholds from the default profile",
        "rlhf_dag/pipeline/resources.py",
        [
            (
                "return resolve(GATES, {k: v for k, v in given.items() if v is not None})",
                'return resolve(GATES, {k: v for k, v in given.items() if v is not None}, profile="default")',
            )
        ],
        [
            GATES + "test_unset_thresholds_are_the_active_profiles_and_a_set_one_wins[smoke]",
            GATES + "test_the_same_reward_model_passes_the_smoke_gate_and_fails_the_default_one",
        ],
    ),
    Mutation(
        "a ranking already pulled is looked up by its pairs' ids (a second pull appends it again)",
        "rlhf_dag/data/feedback.py",
        [('present = {r.get("ranking") for r in', 'present = {r.get("id") for r in')],
        [FEEDBACK + "test_pull_labels_appends_a_dropped_export_once_and_a_second_pull_adds_nothing"],
    ),
    Mutation(
        "an export dropped twice is appended twice in one pull",
        "rlhf_dag/data/feedback.py",
        [
            (
                "new = [r for r in dict.fromkeys(rankings) if r.key not in present]",
                "new = [r for r in rankings if r.key not in present]",
            )
        ],
        [FEEDBACK + "test_pull_labels_appends_a_dropped_export_once_and_a_second_pull_adds_nothing"],
    ),
    Mutation(
        "an asset blind to the labeled files of the steps above it",
        "rlhf_dag/graph.py",
        [("for s in (name, *upstream_steps(name))", "for s in (name,)")],
        [
            "tests/test_graph.py::test_upstream_labels_are_those_of_the_step_and_of_every_step_above_it",
            "tests/test_definitions.py::test_asset_graph_shape_matches_the_contract",
        ],
    ),
    Mutation(
        "training imports the synthetic world (the gold labeler's task kinds)",
        "rlhf_dag/training/evaluate.py",
        [
            (
                "from .judge import Judge, load_judge\n",
                "from ..data.domain import KINDS  # noqa: F401\nfrom .judge import Judge, load_judge\n",
            )
        ],
        [
            "tests/test_definitions.py::test_training_imports_nothing_of_the_synthetic_world_nor_data_anything_of_training"
        ],
    ),
    Mutation(
        "an instruction-tuned checkpoint's chat template replaced by the graph's",
        "rlhf_dag/training/pretrain.py",
        [("own = keep_template and has_own_template(tokenizer)", "own = False")],
        [
            PRETRAINED
            + "test_an_instruction_tuned_tokenizer_keeps_its_chat_template_and_eos_and_prompts_are_rendered_in_it[own-template]"
        ],
    ),
    Mutation(
        "prompts formatted in the graph's format whatever the tokenizer's own template",
        "rlhf_dag/data/chat.py",
        [("if tokenizer is not None and has_own_template(tokenizer):", "if False:")],
        [
            PRETRAINED
            + "test_an_instruction_tuned_tokenizer_keeps_its_chat_template_and_eos_and_prompts_are_rendered_in_it[own-template]"
        ],
    ),
    Mutation(
        "the console shows Dagster's bookkeeping events at INFO",
        "rlhf_dag/pipeline/console.py",
        [('return (getattr(record, METADATA, None) or {}).get("dagster_event") is None', "return True")],
        ["tests/test_console.py::test_dagsters_bookkeeping_events_show_only_at_debug_or_when_something_failed"],
    ),
    Mutation(
        "the console writes Dagster's prefixed message",
        "rlhf_dag/pipeline/console.py",
        [('message = meta.get("orig_message") or record.getMessage()', "message = record.getMessage()")],
        ["tests/test_console.py::test_a_steps_line_is_its_time_and_message_without_dagsters_prefix"],
    ),
    Mutation(
        "a step's labeled files not logged as its MLflow input datasets",
        "rlhf_dag/pipeline/publish.py",
        [("        mlflow.log_label_files({name: inputs[name] for name in labels})\n", "")],
        ["tests/test_smoke_graph.py::test_one_mlflow_run_per_materialization_with_lineage_tags"],
    ),
    Mutation(
        "a model's samples generated again under a key already sampled",
        "rlhf_dag/training/generate.py",
        [("    if path.exists():\n        return [Sample(**s)", "    if False:\n        return [Sample(**s)")],
        ["tests/test_sample_cache.py::test_a_reused_key_runs_no_generation_and_gives_the_same_samples"],
    ),
    Mutation(
        "samples keyed without the model they came from",
        "rlhf_dag/training/generate.py",
        [('"model": str(folder),', '"model": "",')],
        ["tests/test_sample_cache.py::test_any_other_model_prompt_or_setting_generates_anew[model]"],
    ),
    Mutation(
        "a LoRA policy samples from its base weights without the adapter",
        "rlhf_dag/training/lora.py",
        [("                merged += layer.get_delta_weight(adapter)", "                pass")],
        [LORA + "test_a_lora_policy_samples_from_a_merged_copy_that_follows_its_adapter"],
    ),
    Mutation(
        "the decoding loop gives each new token the previous one's position",
        "rlhf_dag/training/generate.py",
        [("        position = position + 1\n", "")],
        ["tests/test_ppo_speed_paths.py::test_sampling_pass_log_probs_match_a_fresh_forward"],
    ),
    Mutation(
        "with LoRA the critic still trains every weight",
        "rlhf_dag/training/ppo.py",
        [("    if cfg.lora and cfg.critic_lora:", "    if False:")],
        [LORA + "test_with_lora_the_critic_trains_an_adapter_of_its_own_and_its_score_head_never_its_base_weights"],
    ),
    Mutation(
        "the sampler's clock counts responses, not the tokens written",
        "rlhf_dag/training/generate.py",
        [("CLOCK.new_tokens += int(written_at.sum())", "CLOCK.new_tokens += int(written_at.any(dim=1).sum())")],
        [
            "tests/test_ppo_speed_paths.py::"
            "test_a_step_that_samples_reports_its_generating_time_and_tokens_and_one_that_does_not_reports_none"
        ],
    ),
    Mutation(
        "prompts prefilled after a shared prefix count their positions from 0",
        "rlhf_dag/training/generate.py",
        [
            (
                "position = (mask.long().cumsum(dim=1) - 1).clamp(min=0) + shared",
                "position = (mask.long().cumsum(dim=1) - 1).clamp(min=0)",
            )
        ],
        ["tests/test_ppo_speed_paths.py::test_sampling_pass_log_probs_match_a_fresh_forward[shared-prefix]"],
    ),
    Mutation(
        "a prompt asked twice gets another prompt's cache",
        "rlhf_dag/training/generate.py",
        [("        cache.batch_select_indices(inverse)\n", "        pass\n")],
        [
            "tests/test_ppo_speed_paths.py::"
            "test_rows_that_join_and_leave_a_running_batch_decode_what_generate_decodes_alone[shared-prefix]"
        ],
    ),
    Mutation(
        "rows that join a running batch attend to their left padding",
        "rlhf_dag/training/generate.py",
        [
            (
                "F.pad(joining_mask, (width - joining_mask.shape[1], 0))])",
                "F.pad(torch.ones_like(joining_mask), (width - joining_mask.shape[1], 0))])",
            )
        ],
        [
            "tests/test_ppo_speed_paths.py::"
            "test_rows_that_join_and_leave_a_running_batch_decode_what_generate_decodes_alone[3]"
        ],
    ),
    Mutation(
        "a row goes on writing after its EOS",
        "rlhf_dag/training/generate.py",
        [
            (
                "writing = writing & (token != eos_id) & (written < max_new_tokens)",
                "writing = writing & (written < max_new_tokens)",
            )
        ],
        [
            "tests/test_ppo_speed_paths.py::"
            "test_rows_that_join_and_leave_a_running_batch_decode_what_generate_decodes_alone[5]"
        ],
    ),
    Mutation(
        "the decoding loop forgets the prompt and the tokens drawn so far (no KV cache)",
        "rlhf_dag/training/generate.py",
        [("position_ids=position, cache=cache, use_cache=True", "position_ids=position, cache=None, use_cache=True")],
        ["tests/test_ppo_speed_paths.py::test_greedy_decoding_of_a_left_padded_batch_is_generates"],
    ),
    Mutation(
        "the run's estimate counts the steps it has already done",
        "rlhf_dag/pipeline/console.py",
        [("    left = [a for a in selection if a not in done]", "    left = list(selection)")],
        [
            "tests/test_console.py::test_a_steps_first_line_says_where_the_run_stands_and_how_long_the_rest_took_last_time"
        ],
    ),
    Mutation(
        "a training step writes a line for every logged loss",
        "rlhf_dag/training/monitor.py",
        [
            (
                'if "loss" in logs and self.started is not None and state.global_step and due:',
                'if "loss" in logs and self.started is not None and state.global_step:',
            )
        ],
        ["tests/test_console.py::test_a_training_step_writes_a_line_at_each_fifth_of_its_run_not_at_every_logged_loss"],
    ),
    Mutation(
        "model loads let transformers swap in kernels from the Hub",
        "rlhf_dag/training/models.py",
        [
            (
                'NO_HUB_CODE = {"trust_remote_code": False, "use_kernels": False}',
                'NO_HUB_CODE = {"trust_remote_code": False}',
            )
        ],
        [
            "tests/test_safety.py::test_no_loader_swaps_in_kernels_from_the_hub[load_causal_lm]",
            "tests/test_safety.py::test_no_loader_swaps_in_kernels_from_the_hub[base_model.pretrained]",
        ],
    ),
    Mutation(
        "the sampler ignores its precision (samples at fp32 whatever it is asked)",
        "rlhf_dag/training/generate.py",
        [("    model = at_precision(model, precision).eval()", "    model = model.eval()")],
        [
            "tests/test_ppo_speed_paths.py::"
            "test_bf16_sampling_draws_close_to_the_fp32_distribution_and_leaves_the_model_fp32"
        ],
    ),
    Mutation(
        "bf16 samples are stored under the fp32 samples' key",
        "rlhf_dag/training/generate.py",
        [('        "precision": precision,\n', "")],
        ["tests/test_sample_cache.py::test_any_other_model_prompt_or_setting_generates_anew[precision]"],
    ),
    Mutation(
        "the evaluation's sample_precision never reaches the sampler",
        "rlhf_dag/training/evaluate.py",
        [("        precision=cfg.sample_precision,\n", "")],
        ["tests/test_sample_cache.py::test_the_evaluation_samples_at_its_configured_precision"],
    ),
]


def patched(text: str, mutation: Mutation) -> str:
    """The file's text with the mutation's patches applied. Raises LookupError if a snippet is missing or ambiguous,
    ValueError if the patches change nothing, SyntaxError if the result does not parse."""
    original = text
    for old, new in mutation.patches:
        if text.count(old) != 1:
            raise LookupError(
                f"patch did not apply: {mutation.file} contains {old!r} {text.count(old)} times (expected once)"
            )
        text = text.replace(old, new)
    if text == original:
        raise ValueError(f"patch changes nothing in {mutation.file}")
    compile(text, mutation.file, "exec")  # a patch that breaks the syntax would fail every test for the wrong reason
    return text


def named_test_exists(root: Path, node_id: str) -> bool:
    """`tests/x.py::test_name[param]` names a test function defined in that file (the parameter is not checked)."""
    file, _, name = node_id.partition("::")
    path = root / file
    return (
        path.is_file()
        and re.search(rf"^def {re.escape(name.split('[')[0])}\(", path.read_text(encoding="utf-8"), flags=re.M)
        is not None
    )


def check_patches(root: Path = REPO) -> list[str]:
    """Every problem with the mutation table against the code in `root`: patches that do not apply once, change nothing
    or do not parse; named tests that do not exist; repeated names."""
    problems = []
    names = [m.name for m in MUTATIONS]
    problems += [f"mutation named twice: {n}" for n in sorted({n for n in names if names.count(n) > 1})]
    for mutation in MUTATIONS:
        try:
            patched((root / mutation.file).read_text(encoding="utf-8"), mutation)
        except (OSError, LookupError, ValueError, SyntaxError) as error:
            problems.append(f"{mutation.name}: {error}")
        if not mutation.tests:
            problems.append(f"{mutation.name}: no test named")
        problems += [f"{mutation.name}: no test {t}" for t in mutation.tests if not named_test_exists(root, t)]
    return problems


def scratch_copy() -> Path:
    """The working tree's files (tracked and untracked, not ignored) in a temporary folder, with .venv linked."""
    root = Path(tempfile.mkdtemp(prefix="rlhf_dag_mutants_")) / "repo"
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = REPO / name
        if source.is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / name)
    (root / ".venv").symlink_to(REPO / ".venv")
    return root


def environment(root: Path, failure_log: Path) -> dict:
    # PYTHONPATH first: the venv's editable install would otherwise import the real repo's rlhf_dag.
    return {
        **os.environ,
        "PYTHONPATH": str(root),
        "OMP_NUM_THREADS": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "RLHF_DAG_FAILURE_LOG": str(failure_log),
    }


@dataclass
class Outcome:
    verdict: str  # "caught", "NOT caught", "ERROR"
    detail: str
    seconds: float


def pytest(root: Path, tests: list[str]) -> tuple[int, str, list[dict], float]:
    """(exit code, output, the failure log's records, seconds) of `pytest -x` on `tests` in `root`."""
    log = root.parent / "failures.jsonl"
    log.unlink(missing_ok=True)
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-x", "-q", "-rf", "-p", "no:cacheprovider", *tests],
        cwd=root,
        env=environment(root, log),
        capture_output=True,
        text=True,
    )
    records = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()] if log.exists() else []
    return proc.returncode, proc.stdout + proc.stderr, records, time.perf_counter() - started


def names_one_of(node_id: str, tests: list[str]) -> bool:
    return any(node_id == t or node_id.startswith(t + "[") for t in tests)


def judge(mutation: Mutation, code: int, output: str, records: list[dict], seconds: float) -> Outcome:
    own = [
        r
        for r in records
        if r["when"] == "call" and r["assertion"] and r["in_tests"] and names_one_of(r["nodeid"], mutation.tests)
    ]
    if own:
        return Outcome("caught", f"by {own[0]['nodeid']}: {own[0]['message'][:160]}", seconds)
    if code == 0:
        return Outcome("NOT caught", "every named test passed", seconds)
    if records:
        r = records[0]
        where = (
            "in library code"
            if not r["in_tests"]
            else "outside a named test"
            if not names_one_of(r["nodeid"], mutation.tests)
            else "in the test"
        )
        return Outcome(
            "ERROR",
            f"{r['nodeid']} failed in {r['when']} with {r['exception']} {where}, not on its own assertion: {r['message'][:160]}",
            seconds,
        )
    return Outcome(
        "ERROR",
        f"pytest exited {code} with no test failure: {output.strip().splitlines()[-1] if output.strip() else ''}",
        seconds,
    )


def run_mutation(root: Path, mutation: Mutation) -> Outcome:
    path = root / mutation.file
    original = path.read_text(encoding="utf-8")
    try:
        text = patched(original, mutation)
    except (LookupError, ValueError, SyntaxError) as error:
        return Outcome("ERROR", str(error), 0.0)
    path.write_text(text, encoding="utf-8")
    try:
        return judge(mutation, *pytest(root, mutation.tests))
    finally:
        path.write_text(original, encoding="utf-8")


DOCS = REPO / "docs" / "testing.md"
TABLE_START, TABLE_END = "<!-- mutants: start (written by `tests/mutants.py --docs`) -->", "<!-- mutants: end -->"


def write_docs(results: list[tuple[Mutation, Outcome]], seconds: float, workers: int) -> None:
    caught = sum(o.verdict == "caught" for _, o in results)
    lines = [
        TABLE_START,
        "",
        f"{caught} of {len(results)} caught in {seconds / 60:.1f} min with {workers} workers "
        f"({time.strftime('%Y-%m-%d')}, `make mutants`).",
        "",
        "| mutation | file | verdict | by | seconds |",
        "|---|---|---|---|---|",
    ]
    for mutation, outcome in results:
        by = (
            outcome.detail.split(":")[0].removeprefix("by ")
            if outcome.verdict == "caught"
            else outcome.detail.replace("|", "/")
        )
        lines.append(
            f"| {mutation.name} | `{mutation.file.removeprefix('rlhf_dag/')}` | {outcome.verdict} | `{by}` | {outcome.seconds:.0f} |"
        )
    lines += ["", TABLE_END]
    text = DOCS.read_text(encoding="utf-8")
    start, end = text.index(TABLE_START), text.index(TABLE_END) + len(TABLE_END)
    DOCS.write_text(text[:start] + "\n".join(lines) + text[end:], encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", default="", help="run only the mutations whose name contains this")
    parser.add_argument(
        "-j",
        "--workers",
        type=int,
        default=2,
        help="scratch copies run side by side, one thread each (default 2: this box's cores)",
    )
    parser.add_argument("--docs", action="store_true", help="rewrite the mutation table in docs/testing.md")
    parser.add_argument("--keep", action="store_true", help="keep the scratch copies")
    args = parser.parse_args(argv)
    mutations = [m for m in MUTATIONS if args.k in m.name]
    if not mutations:
        print(f"no mutation's name contains {args.k!r}")
        return 2
    problems = check_patches()
    if problems:
        print("\n".join(problems))
        return 2
    started = time.perf_counter()
    roots = [scratch_copy() for _ in range(max(1, min(args.workers, len(mutations))))]
    print(f"scratch copies: {', '.join(str(r) for r in roots)}", flush=True)
    try:
        imported = subprocess.run(
            [sys.executable, "-c", "import rlhf_dag; print(rlhf_dag.__file__)"],
            cwd=roots[0],
            env=environment(roots[0], roots[0].parent / "unused"),
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        if not imported.startswith(str(roots[0])):
            print(f"the scratch copy imports rlhf_dag from {imported}, not from itself")
            return 2
        # unmutated, every named test passes (split between the workers, each warming its own fixtures)
        selection = list(dict.fromkeys(t for m in mutations for t in m.tests))
        shares = [selection[i :: len(roots)] for i in range(len(roots))]
        with ThreadPoolExecutor(len(roots)) as pool:
            for code, output, _, _seconds in pool.map(pytest, roots, shares):
                if code != 0:
                    print(output[-4000:])
                    print(f"the tests do not pass on the unmutated copy (exit {code}); nothing to compare against")
                    return 2
        print(f"unmutated: {len(selection)} named tests pass ({time.perf_counter() - started:.0f}s)", flush=True)

        free: Queue[Path] = Queue()
        for root in roots:
            free.put(root)

        def one(mutation: Mutation) -> Outcome:
            root = free.get()
            try:
                outcome = run_mutation(root, mutation)
            finally:
                free.put(root)
            print(
                f"{outcome.verdict:<11} {mutation.name} ({mutation.file}) {outcome.detail} ({outcome.seconds:.0f}s)",
                flush=True,
            )
            return outcome

        with ThreadPoolExecutor(len(roots)) as pool:
            results = list(zip(mutations, pool.map(one, mutations)))
        caught = sum(o.verdict == "caught" for _, o in results)
        errors = sum(o.verdict == "ERROR" for _, o in results)
        seconds = time.perf_counter() - started
        print(
            f"caught {caught} of {len(mutations)}" + (f" ({errors} errors)" if errors else "") + f" in {seconds:.0f}s"
        )
        if args.docs and not args.k:
            write_docs(results, seconds, len(roots))
        return 0 if caught == len(mutations) else 1
    finally:
        if not args.keep:
            for root in roots:
                shutil.rmtree(root.parent, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
