"""The reference PPO: TRL 1.12's `trl.experimental.ppo.PPOTrainer`, timed phase by phase. bench/ppo.py runs this.

It runs inside bench/.venv-trl112 (TRL 1.12 is the last release with a PPO
trainer; the project itself uses TRL 1.16), so it imports nothing from
rlhf_dag (only bench/harness.py, which needs nothing but the standard library):
bench/ppo.py hands it the model directories, the chat-formatted prompts and the
matched settings as a JSON file.

Phases of one iteration, marked without changing TRL's code: rollout
generation is the time inside its `batch_generation`; scoring is from there to
the first forward pass with gradients (reference log-probs, values, rewards,
advantages); optimization is from there to the trainer's step end.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from harness import current_rss_mb, peak_rss_mb, response_stats, write_report


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--settings", required=True, help="JSON written by bench/ppo.py")
    parser.add_argument("--report", required=True)
    args = parser.parse_args()
    s = json.loads(Path(args.settings).read_text())

    started = time.perf_counter()
    import torch
    import trl
    import trl.experimental.ppo.ppo_trainer as ppo_trainer
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    imports = time.perf_counter() - started
    torch.manual_seed(s["seed"])
    tokenizer = AutoTokenizer.from_pretrained(s["sft_model"])
    tokenizer.padding_side = "left"  # TRL's PPO generates from left-padded queries
    policy = AutoModelForCausalLM.from_pretrained(s["sft_model"])
    peft_config = None
    if s.get("lora"):  # the profile's LoRA; TRL's reference is then the policy with its adapter disabled, as ours
        from peft import LoraConfig

        lora = s["lora"]
        modules = "all-linear" if lora["target_modules"] == ["all-linear"] else lora["target_modules"]
        peft_config = LoraConfig(
            r=lora["r"],
            lora_alpha=lora["alpha"],
            lora_dropout=lora["dropout"],
            target_modules=modules,
            task_type="CAUSAL_LM",
        )
        reference = None
    else:
        reference = AutoModelForCausalLM.from_pretrained(s["sft_model"])
    reward_model = AutoModelForSequenceClassification.from_pretrained(s["reward_model"], num_labels=1)
    value_model = AutoModelForSequenceClassification.from_pretrained(s["reward_model"], num_labels=1)
    prompts = s["prompt_texts"]
    dataset = Dataset.from_dict({"input_ids": [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]})
    rss_after_load = current_rss_mb()

    iterations: list[dict] = []
    current: dict = {}

    def timed_generation(*a, **k):
        t = time.perf_counter()
        query_responses, logits = original_generation(*a, **k)
        current["generate_seconds"] = current.get("generate_seconds", 0.0) + time.perf_counter() - t
        queries = a[1] if len(a) > 1 else k["queries"]
        current.update(
            response_stats(query_responses[:, queries.shape[1] :], tokenizer.eos_token_id, tokenizer.pad_token_id)
        )
        current["generate_end"] = time.perf_counter()
        return query_responses, logits

    def marked_forward(model, query_responses, pad_token_id):
        if torch.is_grad_enabled() and "optimize_start" not in current:
            current["optimize_start"] = time.perf_counter()
        return original_forward(model, query_responses, pad_token_id)

    original_generation, original_forward = ppo_trainer.batch_generation, ppo_trainer.forward
    ppo_trainer.batch_generation, ppo_trainer.forward = timed_generation, marked_forward

    class IterationClock(TrainerCallback):
        def on_train_begin(self, *_, **__):
            current["start"] = time.perf_counter()

        def on_step_end(self, *_, **__):
            end = time.perf_counter()
            iterations.append(
                {
                    "seconds": end - current["start"],
                    "generate_seconds": current["generate_seconds"],
                    "score_seconds": current["optimize_start"] - current["generate_end"],
                    "optimize_seconds": end - current["optimize_start"],
                    **{k: current[k] for k in ("response_width", "generated_positions", "response_tokens", "eos_rate")},
                }
            )
            current.clear()
            current["start"] = end

    with tempfile.TemporaryDirectory() as out:
        config = PPOConfig(
            output_dir=out,
            per_device_train_batch_size=s[
                "rollout_batch_size"
            ],  # one rollout batch per iteration, generated in one call
            gradient_accumulation_steps=1,  # so every minibatch is one optimizer step, as in ours
            num_mini_batches=s["rollout_batch_size"] // s["minibatch_size"],
            local_rollout_forward_batch_size=s["rollout_batch_size"],
            num_ppo_epochs=s["ppo_epochs"],
            total_episodes=s["iterations"] * s["rollout_batch_size"],
            response_length=s["max_new_tokens"],
            temperature=s["temperature"],
            stop_token="eos",
            missing_eos_penalty=s["missing_eos_penalty"],
            kl_coef=s["kl_coef"],
            cliprange=s["clip_range"],
            cliprange_value=s["clip_range_value"],
            vf_coef=s["vf_coef"],
            gamma=s["gamma"],
            lam=s["lam"],
            learning_rate=s["learning_rate"],
            seed=s["seed"],
            bf16=False,
            fp16=False,
            gradient_checkpointing=False,  # TRL's default is on; ours never checkpoints
            use_cpu=not torch.cuda.is_available(),
            num_sample_generations=0,
            save_strategy="no",
            report_to="none",
            logging_steps=1,
            disable_tqdm=True,
            dataloader_num_workers=0,
        )
        trainer = PPOTrainer(
            args=config,
            processing_class=tokenizer,
            model=policy,
            ref_model=reference,
            reward_model=reward_model,
            value_model=value_model,
            train_dataset=dataset,
            peft_config=peft_config,
            callbacks=[IterationClock()],
        )
        train_started = time.perf_counter()
        trainer.train()
        train_seconds = time.perf_counter() - train_started

    write_report(
        args.report,
        {
            "implementation": f"TRL {trl.__version__} experimental.ppo",
            "imports_seconds": imports,
            "train_seconds": train_seconds,
            "iterations": iterations,
            "rss_after_load_mb": rss_after_load,
            "peak_rss_mb": peak_rss_mb(),
            "torch_threads": torch.get_num_threads(),
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
