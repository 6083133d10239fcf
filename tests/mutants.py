"""`make mutants`: break the code on purpose, one way at a time, and check that a test notices.

Each mutation is a textual patch of one file (exact snippets, so a change to the
code shows up as "patch did not apply", never as a silent pass). The script
copies the working tree (tracked and untracked, not ignored files) to a scratch
folder with the venv linked in, then for each mutation patches the copy, runs
the tests that should catch it (`pytest -x`, in the order listed, fastest
first), prints one line, restores the file, and ends with `caught N of M`. It
exits non-zero if a mutation survives, a patch does not apply, or the tests do
not pass on the unmutated copy. Not part of `make test`; the table of results
is in docs/testing.md.

    .venv/bin/python tests/mutants.py                  # all mutations (what `make mutants` runs)
    .venv/bin/python tests/mutants.py -k gate          # those whose name contains "gate"
    .venv/bin/python tests/mutants.py --tests-from REV # the whole suite as of git REV instead (the "before" column)
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PPO = "tests/test_ppo_train.py::"
GATES = "tests/test_gates.py::"
UNIT_GATE = GATES + "test_each_gate_passes_at_its_threshold_and_refuses_past_it"
FEEDBACK = "tests/test_feedback.py::"
LORA = "tests/test_lora.py::"
PRETRAINED = "tests/test_pretrained_model.py::"


@dataclass
class Mutation:
    name: str
    file: str
    patches: list[tuple[str, str]]  # (snippet that must occur exactly once, its replacement)
    tests: list[str]  # pytest node ids, fastest first


MUTATIONS = [
    Mutation("pretraining: packed documents attend to each other (attention mask kept)", "rlhf_dag/training/pretrain.py",
             [('        del batch["attention_mask"]\n', "")],
             ["tests/test_pretrain.py::test_a_packed_document_never_sees_the_one_before_it", "tests/test_pretrain.py::test_packed_rows_give_each_document_its_own_loss"]),
    Mutation("pretraining: a digit's space is a token of its own (operands not copyable)", "rlhf_dag/training/pretrain.py",
             [('pre_tokenizers.Split(Regex("\\u0120?[0-9]"), behavior="isolated")', 'pre_tokenizers.Digits(individual_digits=True)')],
             ["tests/test_pretrain.py::test_digits_are_the_same_tokens_in_a_request_and_its_answer"]),
    Mutation("confused sums never answer another sum", "rlhf_dag/data/domain.py",
             [("        if rng.random() < 0.5:  # the right sum, a wrong result", "        if True:  # the right sum, a wrong result")],
             ["tests/test_pretrain.py::test_a_confused_sum_either_misstates_the_result_or_answers_another_sum"]),
    Mutation("PPO scoring reads the RM score one token before the response's end", "rlhf_dag/training/ppo.py",
             [("packed.attention_mask)[:, -1]  # rows are left-padded", "packed.attention_mask)[:, -2]  # rows are left-padded")],
             ["tests/test_ppo_speed_paths.py::test_packed_scoring_gives_the_padded_rollouts_reference_log_probs_values_and_scores"]),
    Mutation("the sampler ignores the temperature", "rlhf_dag/training/generate.py",
             [("logp = torch.log_softmax(scores.float() / self.temperature, dim=-1)", "logp = torch.log_softmax(scores.float(), dim=-1)")],
             ["tests/test_ppo_speed_paths.py::test_the_sampler_draws_each_token_with_its_tempered_probability"]),
    Mutation("the sampler takes the token after the drawn one", "rlhf_dag/training/generate.py",
             [("tokens = torch.searchsorted(cdf, u, right=True).clamp(max=cdf.shape[1] - 1)", "tokens = torch.searchsorted(cdf, u, right=True).add(1).clamp(max=cdf.shape[1] - 1)")],
             ["tests/test_ppo_speed_paths.py::test_the_sampler_draws_each_token_with_its_tempered_probability"]),
    Mutation("RM accuracy by kind lumps every kind together", "rlhf_dag/training/reward.py",
             [('right[task.kind if task else "other"].append(ok)', 'right["other"].append(ok)')],
             ["tests/test_reward_loss.py::test_accuracy_by_kind_splits_the_held_out_pairs_by_task_kind"]),
    Mutation("win rate by kind pairs the samples with another prompt's kind", "rlhf_dag/training/evaluate.py",
             [("else None for p in prompts]", "else None for p in reversed(prompts)]")],
             ["tests/test_reward_loss.py::test_win_rate_by_kind_judges_each_kind_on_its_own_pairs"]),
    Mutation("RM trained with chosen and rejected swapped", "rlhf_dag/training/reward.py",
             [('"chosen": list(train["chosen"]), "rejected": list(train["rejected"])', '"chosen": list(train["rejected"]), "rejected": list(train["chosen"])')],
             ["tests/test_smoke_graph.py::test_the_reward_model_beats_chance_and_its_starting_accuracy"]),
    Mutation("KL penalty's sign flipped", "rlhf_dag/training/ppo.py",
             [("rewards = -kl_coef * kl", "rewards = kl_coef * kl")],
             ["tests/test_ppo_math.py::test_kl_penalty_on_every_token_and_score_on_the_last_real_token"]),
    Mutation("advantages not whitened", "rlhf_dag/training/ppo.py",
             [("advantages = masked_whiten(advantages, mask)", "advantages = advantages")],
             [PPO + "test_advantages_are_whitened_over_the_rollout_batch"]),
    Mutation("missing-EOS penalty inverted (given to responses that end)", "rlhf_dag/training/ppo.py",
             [("torch.where(ended, score,", "torch.where(~ended, score,")],
             [PPO + "test_missing_eos_penalty_replaces_the_score_of_unended_responses", PPO + "test_missing_eos_penalty_on_a_mixed_rollout"]),
    Mutation("reference reloaded from the policy every iteration", "rlhf_dag/training/ppo.py",
             [("    for iteration in range(resumed_from + 1, cfg.iterations + 1):\n",
               "    for iteration in range(resumed_from + 1, cfg.iterations + 1):\n        ref_policy.load_state_dict(policy.state_dict())\n")],
             [PPO + "test_reference_and_reward_model_weights_are_untouched_while_policy_and_critic_train"]),
    Mutation("reference in the optimizer and trained through a KL term of the loss", "rlhf_dag/training/ppo.py",
             [("params = [p for p in (*policy.parameters(), *value_model.parameters()) if p.requires_grad]",
               "params = [p for p in (*policy.parameters(), *value_model.parameters(), *ref_policy.requires_grad_(True).parameters()) if p.requires_grad]"),
              ("new_logprobs, entropy, new_values = learner(packed, cfg.temperature, pad)",
               "new_logprobs, entropy, new_values = packed_logprobs_and_values(policy, value_model, packed, cfg.temperature)\n"
               "                ref_new_logprobs = packed_logprobs_and_values(ref_policy, value_model, packed, cfg.temperature)[0]"),
              ("loss = pg_loss + cfg.vf_coef * vf_loss", "loss = pg_loss + cfg.vf_coef * vf_loss + kl_coef * (new_logprobs - ref_new_logprobs).mean()")],
             [PPO + "test_reference_and_reward_model_weights_are_untouched_while_policy_and_critic_train"]),
    Mutation("LoRA: PPO's reference is the adapted policy, not the SFT model", "rlhf_dag/training/ppo.py",
             [("    with policy.disable_adapter():\n        return response_logprobs(policy", "    if True:\n        return response_logprobs(policy")],
             [LORA + "test_the_lora_reference_is_the_sft_model_itself_not_the_adapted_policy", LORA + "test_lora_ppo_is_kl_penalized_against_the_sft_model"]),
    Mutation("LoRA: PPO trains the base weights along with the adapter", "rlhf_dag/training/steps.py",
             [("policy, reference = adapt(policy, cfg.lora), None", "policy, reference = adapt(policy, cfg.lora).requires_grad_(True), None")],
             [LORA + "test_a_lora_step_trains_only_its_adapter_and_saves_it_beside_merged_weights[ppo_policy]"]),
    Mutation("LoRA: the model folder holds the upstream weights, the adapter not merged", "rlhf_dag/training/lora.py",
             [("merged = model.merge_and_unload()", "merged = model.unload()")],
             [LORA + "test_a_lora_step_trains_only_its_adapter_and_saves_it_beside_merged_weights[sft_model]"]),
    Mutation("a user's model: its EOS replaced by ours", "rlhf_dag/training/pretrain.py",
             [('    if tokenizer.eos_token is None:\n        special["eos_token"] = EOS', '    if True:\n        special["eos_token"] = EOS')],
             [PRETRAINED + "test_a_users_tokenizer_keeps_its_eos_and_gets_a_distinct_pad_and_the_chat_tokens"]),
    Mutation("a user's model: its sampling defaults kept in its generation config", "rlhf_dag/training/pretrain.py",
             [("    model.generation_config = GenerationConfig.from_model_config(model.config)\n", "")],
             [PRETRAINED + "test_ppo_on_the_users_model_samples_from_the_distribution_it_optimizes"]),
    Mutation("a user's model: prompts sampled without the BOS its tokenizer adds", "rlhf_dag/training/generate.py",
             [('batch = tokenizer(texts, return_tensors="pt", padding=True)', 'batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)')],
             [PRETRAINED + "test_a_tokenizer_that_opens_with_bos_is_sampled_scored_and_templated_as_trl_trains_it"]),
    Mutation("SFT loss on prompt tokens too", "rlhf_dag/training/sft.py",
             [("completion_only_loss=True", "completion_only_loss=False")],
             ["tests/test_sft.py::test_sft_trains_on_the_response_and_never_on_the_prompt"]),
    Mutation("eval win rate computed PPO vs PPO", "rlhf_dag/training/steps.py",
             [('win_rate(results[a]["gold"], results[b]["gold"])', 'win_rate(results[a]["gold"], results["ppo" if a == "ppo" else b]["gold"])')],
             ["tests/test_steps.py::test_the_evaluation_compares_ppo_with_sft_samples"]),
    Mutation("gate base_model_learned always passes", "rlhf_dag/pipeline/checks.py",
             [('passed = m["final_loss"] < m["initial_loss"] and math.isfinite(m["final_loss"])', "passed = True")],
             [UNIT_GATE + "[base_model_learned]", GATES + "test_a_model_that_learned_nothing_blocks_its_downstream[base_model]"]),
    Mutation("gate sft_beats_base always passes", "rlhf_dag/pipeline/checks.py",
             [('passed = m["validation_loss"] < m["base_validation_loss"]', "passed = True")],
             [UNIT_GATE + "[sft_beats_base]", GATES + "test_a_model_that_learned_nothing_blocks_its_downstream[sft_model]"]),
    Mutation("gate reward_model_accuracy always passes", "rlhf_dag/pipeline/checks.py",
             [("return _gate(accuracy >= floor,", "return _gate(True,")],
             [UNIT_GATE + "[reward_model_accuracy]", GATES + "test_a_reward_model_below_its_accuracy_floor_blocks_ppo"]),
    Mutation("gate ppo_within_kl_budget always passes", "rlhf_dag/pipeline/checks.py",
             [("return _gate(kl <= budget,", "return _gate(True,")],
             [UNIT_GATE + "[ppo_within_kl_budget]", GATES + "test_a_ppo_policy_past_a_gate_blocks_the_evaluation[kl_budget]"]),
    Mutation("gate ppo_emits_eos always passes", "rlhf_dag/pipeline/checks.py",
             [("return _gate(rate >= floor,", "return _gate(True,")],
             [UNIT_GATE + "[ppo_emits_eos]", GATES + "test_a_ppo_policy_past_a_gate_blocks_the_evaluation[eos_rate_floor]"]),
    Mutation("gate ppo_finite always passes", "rlhf_dag/pipeline/checks.py",
             [('passed = finite and metrics["finite"] == 1.0', "passed = True")],
             [UNIT_GATE + "[ppo_finite-inf]", UNIT_GATE + "[ppo_finite-flag]"]),
    Mutation("the champion alias ignores the current champion's lower bound", "rlhf_dag/pipeline/registry.py",
             [("        if not win >= bound:", "        if False:")],
             ["tests/test_methods.py::test_the_champion_rule"]),
    Mutation("a multi-turn prompt's assistant turn loses its EOS", "rlhf_dag/training/chat.py",
             [('ASSISTANT + m["content"] + EOS', 'ASSISTANT + m["content"]')],
             ["tests/test_label_formats.py::test_the_chat_template_renders_a_conversation_as_the_prompt_format"]),
    Mutation("an HH-RLHF comparison keeps the assistant marker in its responses", "rlhf_dag/data/labels.py",
             [("        cut += len(HH_ASSISTANT)\n", "")],
             ["tests/test_label_formats.py::test_each_documented_shape_becomes_the_canonical_record"]),
    Mutation("GRPO/RLOO reward ignores the reward model", "rlhf_dag/training/online.py",
             [("            return scores\n", "            return [0.0 for _ in scores]\n")],
             ["tests/test_methods.py::test_an_online_method_moves_the_policy_with_the_reward_model_as_reward"]),
    Mutation("a failed atomic write leaves its temporary file", "rlhf_dag/artifacts.py",
             [("    finally:\n        if tmp.is_dir():\n            shutil.rmtree(tmp, ignore_errors=True)\n        else:\n            tmp.unlink(missing_ok=True)\n",
               "    finally:\n        pass\n")],
             ["tests/test_datasets.py::test_a_write_failing_halfway_leaves_the_previous_file_and_no_temp_file"]),
    Mutation("a human ranking's pairs in reverse order", "rlhf_dag/data/feedback.py",
             [('"chosen": ranking.responses[i], "rejected": ranking.responses[j]', '"chosen": ranking.responses[j], "rejected": ranking.responses[i]')],
             [FEEDBACK + "test_a_ranking_of_k_gives_its_k_choose_2_pairs_in_rank_order_with_provenance"]),
    Mutation("a ranking already pulled is appended again", "rlhf_dag/data/feedback.py",
             [("new = [r for r in dict.fromkeys(rankings) if r.key not in present]", "new = list(dict.fromkeys(rankings))")],
             [FEEDBACK + "test_appending_is_idempotent_keeps_the_old_bytes_and_the_result_loads"]),
    Mutation("a task whose responses were edited in Label Studio is accepted", "rlhf_dag/data/label_studio.py",
             [('if "responses" in data and data.get("responses_sha256")', 'if False and data.get("responses_sha256")')],
             [FEEDBACK + "test_an_export_is_read_with_skips_ties_edits_and_pairwise_choices"]),
    Mutation("RM loss averages pairs, not rankings (InstructGPT 3.5)", "rlhf_dag/training/reward.py",
             [("return -(F.logsigmoid(chosen - rejected) * pair_weight).sum() / pair_weight.sum()", "return -F.logsigmoid(chosen - rejected).mean()")],
             [FEEDBACK + "test_the_ranking_loss_makes_one_ranking_one_batch_element"]),
    Mutation("RM batches cut through rankings", "rlhf_dag/training/reward.py",
             [("            if current and len(current) + len(self.groups[g]) > self.batch_size:\n                batches.append(current)\n                current = []\n            current = current + self.groups[g]\n",
               "            current = current + self.groups[g]\n            while len(current) >= self.batch_size:\n                batches.append(current[: self.batch_size])\n                current = current[self.batch_size :]\n")],
             [FEEDBACK + "test_ranking_batches_never_split_a_ranking"]),
    Mutation("PPO resumed without its random states", "rlhf_dag/training/ppo.py",
             [('        resume.set_rng_states(resumed["rng"][distributed.rank()])\n', "")],
             ["tests/test_resume.py::test_a_killed_run_resumes_and_ends_with_the_weights_of_an_uninterrupted_run[ppo_policy]"]),
    Mutation("checkpoint key blind to a labeled file's bytes", "rlhf_dag/training/resume.py",
             [("        if path.is_file():", "        if False:")],
             ["tests/test_resume.py::test_the_checkpoint_key_changes_with_every_input_and_training_field_only"]),
]

# The tests of a whole old suite that cannot catch these mutations and take minutes (the UI, kills, concurrent runs).
SLOW_UNRELATED = ["tests/test_webserver.py", "tests/test_kill_mid_training.py", "tests/test_concurrent_runs.py"]


def scratch_copy(tests_from: str | None) -> Path:
    """The working tree's files (tracked and untracked, not ignored) in a temporary folder, with .venv linked."""
    root = Path(tempfile.mkdtemp(prefix="rlhf_dag_mutants_")) / "repo"
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO, capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = REPO / name
        if source.is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / name)
    (root / ".venv").symlink_to(REPO / ".venv")
    if tests_from:
        shutil.rmtree(root / "tests")
        archive = subprocess.run(["git", "archive", tests_from, "tests"], cwd=REPO, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
    return root


def environment(root: Path) -> dict:
    # PYTHONPATH first: the venv's editable install would otherwise import the real repo's rlhf_dag.
    return {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}


def pytest(root: Path, tests: list[str], extra: list[str] = ()) -> tuple[int, str, float]:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-rf", "-p", "no:cacheprovider", *extra, *tests],
                          cwd=root, env=environment(root), capture_output=True, text=True)
    return proc.returncode, proc.stdout + proc.stderr, time.perf_counter() - started


def apply(root: Path, mutation: Mutation) -> str:
    """Patch the scratch copy; return the original text. Raises if a snippet is missing or ambiguous."""
    path = root / mutation.file
    original = text = path.read_text(encoding="utf-8")
    for old, new in mutation.patches:
        if text.count(old) != 1:
            raise LookupError(f"patch did not apply: {mutation.file} contains {old!r} {text.count(old)} times (expected once)")
        text = text.replace(old, new)
    compile(text, str(path), "exec")  # a patch that breaks the syntax would fail every test for the wrong reason
    path.write_text(text, encoding="utf-8")
    return original


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", default="", help="run only the mutations whose name contains this")
    parser.add_argument("--tests-from", metavar="REV", help=f"run the whole suite as of this git revision (less {', '.join(SLOW_UNRELATED)})")
    parser.add_argument("--keep", action="store_true", help="keep the scratch copy")
    parser.add_argument("-v", "--verbose", action="store_true", help="show the first lines of each failed assertion")
    args = parser.parse_args(argv)
    mutations = [m for m in MUTATIONS if args.k in m.name]
    root = scratch_copy(args.tests_from)
    print(f"scratch copy: {root}", flush=True)
    try:
        imported = subprocess.run([sys.executable, "-c", "import rlhf_dag; print(rlhf_dag.__file__)"], cwd=root, env=environment(root),
                                  capture_output=True, text=True, check=True).stdout.strip()
        if not imported.startswith(str(root)):
            print(f"the scratch copy imports rlhf_dag from {imported}, not from itself")
            return 2
        if args.tests_from:
            selection, extra = ["tests"], [arg for path in SLOW_UNRELATED for arg in ("--ignore", path)]
        else:
            selection, extra = list(dict.fromkeys(t for m in mutations for t in m.tests)), []
        code, output, seconds = pytest(root, selection, extra)
        if code != 0:
            print(output[-4000:])
            print(f"the tests do not pass on the unmutated copy (exit {code}); nothing to compare against")
            return 2
        print(f"unmutated: {len(selection)} test selections pass ({seconds:.0f}s)", flush=True)
        caught, errors = 0, 0
        for mutation in mutations:
            try:
                original = apply(root, mutation)
            except (LookupError, SyntaxError) as error:
                print(f"ERROR       {mutation.name}: {error}", flush=True)
                errors += 1
                continue
            try:
                code, output, seconds = pytest(root, mutation.tests if not args.tests_from else selection, extra)
            finally:
                (root / mutation.file).write_text(original, encoding="utf-8")
            failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", output, flags=re.M)
            if code == 1 and failed and not re.search(r"AssertionError|^E\s+Failed: ", output, flags=re.M):
                print(output[-3000:])
                print(f"ERROR       {mutation.name}: the tests crashed instead of failing an assertion; fix the patch", flush=True)
                errors += 1
            elif code == 1 and failed:
                caught += 1
                print(f"caught      {mutation.name} ({mutation.file}) by {failed[0]} ({seconds:.0f}s)", flush=True)
                if args.verbose:
                    print("".join(f"              {line[:200]}\n" for line in re.findall(r"^E .*$", output, flags=re.M)[:3]), end="")
            elif code == 0:
                print(f"NOT caught  {mutation.name} ({mutation.file}) ({seconds:.0f}s)", flush=True)
            else:
                print(output[-3000:])
                print(f"ERROR       {mutation.name}: pytest exited {code} (not a test failure)", flush=True)
                errors += 1
        print(f"caught {caught} of {len(mutations)}" + (f" ({errors} could not run)" if errors else ""))
        return 0 if caught == len(mutations) else 1
    finally:
        if not args.keep:
            shutil.rmtree(root.parent, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
