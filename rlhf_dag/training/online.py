"""GRPO and RLOO: online, critic-free RL against the reward model, with TRL's trainers.

Both sample `num_generations` responses per prompt and take the baseline from the
group instead of a learned critic: GRPO standardizes each reward within its
group (Shao et al. 2024), RLOO subtracts the mean of the group's other rewards
(Ahmadian et al. 2024). The policy and the KL reference both start from the SFT
model's directory: with `beta > 0` TRL builds the reference from the policy's
path, so the policy is given as that path, not as a model object.

The reward is our reward model's score read at the EOS that closes prompt +
response, as it was trained and as PPO reads it ([PPO-5]: a response that never
emits EOS gets `missing_eos_penalty` instead). TRL would accept the
sequence-classification model itself in `reward_funcs`, but it scores the decoded
text without its EOS, a position this reward model was never trained to score.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable

from datasets import Dataset

from ..config import GRPOConfig, OnlineConfig, RLOOConfig
from ..data.chat import format_prompt
from .monitor import monitored
from .result import ModelCard, StepResult, step
from .reward import score_texts
from .trainer_args import trainer_kwargs

logger = logging.getLogger(__name__)


class RewardModelReward:
    """A TRL reward function: the RM's score of each (prompt, response + EOS), or the missing-EOS penalty.

    It also keeps, per generation batch, the mean RM score and (with a `monitor`, e.g. the gold labeler,
    which only observes) the monitor's mean: the RM-vs-gold curve that shows reward hacking.
    """

    __name__ = "reward_model"  # TRL names the reward's logged metrics after it

    def __init__(self, reward_model, tokenizer, missing_eos_penalty: float | None, monitor: Callable | None = None):
        self.reward_model, self.tokenizer, self.penalty, self.monitor = (
            reward_model,
            tokenizer,
            missing_eos_penalty,
            monitor,
        )
        self.history: list[dict] = []

    def __call__(self, prompts, completions, completion_ids, request, trainer_state=None, **kwargs) -> list[float]:
        ended = [bool(ids) and ids[-1] == self.tokenizer.eos_token_id for ids in completion_ids]
        scores = score_texts(self.reward_model, self.tokenizer, list(request), list(completions))
        row = {
            "iteration": len(self.history) + 1,
            "rm_score": sum(scores) / len(scores),
            "eos_rate": sum(ended) / len(ended),
        }
        if self.monitor is not None:
            row["gold_score"] = self.monitor(list(request), list(completions), ended)
        self.history.append(row)
        if self.penalty is None:
            return scores
        return [s if e else self.penalty for s, e in zip(scores, ended)]


def train_online(
    method: str, sft_path: str, tokenizer, reward: RewardModelReward, prompts: list[str], cfg: OnlineConfig
):
    """(policy, metrics): `method` 'grpo' or 'rloo' on `prompts` (plain requests or multi-turn prompt strings)."""
    import trl

    trainer_cls, config_cls = {"grpo": (trl.GRPOTrainer, trl.GRPOConfig), "rloo": (trl.RLOOTrainer, trl.RLOOConfig)}[
        method
    ]
    start = time.perf_counter()
    completions_per_step = cfg.prompts_per_step * cfg.num_generations
    # `request` is the plain prompt: TRL passes every extra column to the reward function
    dataset = Dataset.from_dict({"prompt": [format_prompt(p, tokenizer) for p in prompts], "request": list(prompts)})
    with tempfile.TemporaryDirectory() as out:
        args = config_cls(
            **trainer_kwargs(
                out,
                1.0,
                completions_per_step,
                cfg.learning_rate,
                cfg.seed,
                cfg.steps * completions_per_step,
                evaluations=0,
            ),
            max_steps=cfg.steps,
            num_generations=cfg.num_generations,
            max_completion_length=cfg.max_new_tokens,
            temperature=cfg.temperature,
            beta=cfg.beta,
        )
        trainer = monitored(
            trainer_cls(
                model=sft_path, reward_funcs=[reward], args=args, train_dataset=dataset, processing_class=tokenizer
            ),
            f"{method}_policy",
        )
        result = trainer.train()
    # the last fifth of training, less noisy than one batch (as PPO's final figures)
    logs = [row for row in trainer.state.log_history if "loss" in row]
    window, last = logs[-max(1, len(logs) // 5) :], reward.history[-max(1, len(reward.history) // 5) :]
    metrics = {
        "training_loss": result.training_loss,
        "initial_rm_score": reward.history[0]["rm_score"],
        "train_final_rm_score": sum(r["rm_score"] for r in last) / len(last),
        "train_final_kl": sum(r.get("kl", 0.0) for r in window) / len(window),
        "completions": cfg.steps * completions_per_step,
        "train_runtime": result.metrics["train_runtime"],
        "train_seconds": time.perf_counter() - start,
    }
    return trainer.model, metrics


def _online_policy(method: str, inputs: dict[str, str], cfg: OnlineConfig) -> StepResult:
    from transformers import AutoTokenizer

    from ..data.label_files import load_labels
    from .evaluate import judge_monitor, policy_checks, source_prompt_texts
    from .judge import load_judge
    from .models import load_causal_lm, load_reward_model

    labels = load_labels(inputs["prompts"], "prompts")
    prompts = [r["prompt"] for r in labels.records]
    tokenizer = AutoTokenizer.from_pretrained(inputs["sft_model"])
    scorer, _ = load_reward_model(inputs["reward_model"])
    reward = RewardModelReward(scorer, tokenizer, cfg.missing_eos_penalty, monitor=judge_monitor(load_judge(cfg.judge)))
    policy, metrics = train_online(method, inputs["sft_model"], tokenizer, reward, prompts, cfg)
    reference, _ = load_causal_lm(inputs["sft_model"])
    metrics |= policy_checks(policy, reference, tokenizer, prompts, cfg, cfg.seed, scorer) | {"prompts": len(prompts)}
    name = method.upper()
    return StepResult(
        f"{method}_policy",
        metrics,
        ["initial_rm_score", "final_rm_score", "final_kl", "final_eos_rate", "train_seconds"],
        inputs=inputs,
        tags={"labels.prompts.sha256": labels.sha256},
        model=policy,
        tokenizer=tokenizer,
        card=ModelCard(
            f"rlhf-dag {name} policy",
            f"The SFT model optimized with {name} (TRL {name}Trainer) against the reward model, KL-penalized to the SFT model.",
        ),
        records={f"{method}_history.json": reward.history},
        curves={
            f"{method}/{k}": [(row["iteration"], row[k]) for row in reward.history]
            for k in reward.history[0]
            if k != "iteration"
        },
        texts=source_prompt_texts(policy, tokenizer, True, cfg, cfg.seed, f"answer ({name} policy)"),
    )


@step
def grpo_policy(inputs: dict[str, str], cfg: GRPOConfig) -> StepResult:
    return _online_policy("grpo", inputs, cfg)


@step
def rloo_policy(inputs: dict[str, str], cfg: RLOOConfig) -> StepResult:
    return _online_policy("rloo", inputs, cfg)
