"""The RLHF steps, each declared once: its inputs, config, step function, group and gates.

Everything else derives from this table: the Dagster assets and their checks
(pipeline/assets.py, pipeline/checks.py), the config classes a run config or a
profile may set (config.py), the spec runner that runs a step without Dagster
(training/steps.py), `rlhf-dag status`, bench/ and the tests' expectations.
It imports nothing (no dagster, torch or pandas): the config class and the step
function are named by dotted path and imported when first used.

Adding a method is one module (its config class, its training and its step
function: `inputs: dict[str, str], cfg -> StepResult`) plus one row here.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass

# The labeled files in RLHF_DAG_LABELS_DIR (`<name>.jsonl` or `.parquet`) that steps read: observable source assets.
LABEL_FILES = ("demonstrations", "comparisons", "prompts", "eval_prompts")


@dataclass(frozen=True)
class Step:
    name: str
    inputs: tuple[str, ...]  # upstream steps and labeled files (LABEL_FILES), by name: the graph's edges
    config: str  # "module:Class", a config.StepConfig subclass
    function: str  # "module:function", the step function
    description: str
    group: str = "rlhf"  # rlhf: the core graph (`rlhf-dag run`); alternatives: beside PPO; labeling: one batch per run
    kind: str = "pytorch"  # what the Dagster UI shows on the node
    automation: str = "model"  # dataset: follows its labels eagerly; model: retrains on the cron when stale; alternative: the same, once built
    launched: bool = False  # trains: runs through the launcher resource (in-process, torchrun:N, accelerate, k8s)
    gates: tuple[str, ...] = ()  # blocking checks on its output (pipeline/checks.py GATES)
    method: str | None = (
        None  # a policy's method (its gates' and figures' prefix), or the method an evaluation registers
    )


def _policy(
    method: str, inputs: tuple[str, ...], function: str, config: str, description: str, group: str = "alternatives"
) -> Step:
    return Step(
        f"{method}_policy",
        inputs,
        config,
        function,
        description,
        group=group,
        automation="model" if group == "rlhf" else "alternative",
        launched=True,
        gates=("within_kl_budget", "emits_eos", "finite"),
        method=method,
    )


def _evaluation(method: str, name: str, inputs: tuple[str, ...], description: str, group: str = "alternatives") -> Step:
    return Step(
        name,
        inputs,
        "rlhf_dag.config:EvalConfig",
        f"rlhf_dag.training.evaluate:{name}",
        description,
        group=group,
        automation="model" if group == "rlhf" else "alternative",
        method=method,
    )


# In dependency order: a step's inputs come before it.
STEPS: tuple[Step, ...] = (
    Step(
        "pretraining_corpus",
        (),
        "rlhf_dag.config:CorpusConfig",
        "rlhf_dag.training.dataset_steps:pretraining_corpus",
        "Internet-like documents the base model is pretrained on, with held-out documents for its loss gate.",
        kind="parquet",
        automation="dataset",
    ),
    Step(
        "base_model",
        ("pretraining_corpus",),
        "rlhf_dag.config:PretrainConfig",
        "rlhf_dag.training.pretrain:base_model",
        "Tokenizer + causal LM that only continues text (RLHF step 1).",
        launched=True,
        gates=("base_model_learned",),
    ),
    Step(
        "sft_dataset",
        ("demonstrations",),
        "rlhf_dag.config:DatasetConfig",
        "rlhf_dag.training.dataset_steps:sft_dataset",
        "Validated, de-duplicated demonstrations with a fixed train/validation split.",
        kind="parquet",
        automation="dataset",
    ),
    Step(
        "sft_model",
        ("base_model", "sft_dataset"),
        "rlhf_dag.config:SFTConfig",
        "rlhf_dag.training.sft:sft_model",
        "The base model fine-tuned on demonstrations with TRL SFTTrainer (RLHF step 2).",
        launched=True,
        gates=("sft_beats_base",),
    ),
    Step(
        "comparison_dataset",
        ("comparisons",),
        "rlhf_dag.config:ComparisonDatasetConfig",
        "rlhf_dag.training.dataset_steps:comparison_dataset",
        "Validated (prompt, chosen, rejected) comparisons with a fixed held-out split.",
        kind="parquet",
        automation="dataset",
    ),
    Step(
        "reward_model",
        ("sft_model", "comparison_dataset"),
        "rlhf_dag.config:RewardConfig",
        "rlhf_dag.training.reward:reward_model",
        "Scores <prompt, response>; trained with TRL RewardTrainer from the SFT model (RLHF step 3).",
        launched=True,
        gates=("reward_model_accuracy",),
    ),
    _policy(
        "ppo",
        ("sft_model", "reward_model", "prompts"),
        "rlhf_dag.training.ppo:ppo_policy",
        "rlhf_dag.config:PPOConfig",
        "The SFT model optimized with PPO against the reward model, KL-penalized to the SFT model (RLHF step 4).",
        group="rlhf",
    ),
    _evaluation(
        "ppo",
        "policy_evaluation",
        ("base_model", "sft_model", "reward_model", "ppo_policy", "eval_prompts"),
        "Base vs SFT vs PPO on held-out prompts, scored by the RM PPO was trained against: gold win rates, RM and gold scores, KL, length, EOS rate.",
        group="rlhf",
    ),
    _policy(
        "dpo",
        ("sft_model", "comparison_dataset"),
        "rlhf_dag.training.dpo:dpo_policy",
        "rlhf_dag.config:DPOConfig",
        "The SFT model optimized with TRL DPOTrainer on the comparisons (no reward model, no sampling).",
    ),
    _policy(
        "grpo",
        ("sft_model", "reward_model", "prompts"),
        "rlhf_dag.training.online:grpo_policy",
        "rlhf_dag.config:GRPOConfig",
        "The SFT model optimized with TRL GRPOTrainer against the reward model (group-standardized rewards, no critic), KL to SFT.",
    ),
    _policy(
        "rloo",
        ("sft_model", "reward_model", "prompts"),
        "rlhf_dag.training.online:rloo_policy",
        "rlhf_dag.config:RLOOConfig",
        "The SFT model optimized with TRL RLOOTrainer against the reward model (leave-one-out baseline, no critic), KL to SFT.",
    ),
    _evaluation(
        "dpo",
        "dpo_evaluation",
        ("sft_model", "reward_model", "dpo_policy", "eval_prompts"),
        "DPO vs SFT on held-out prompts (gold win rate, RM and gold means, KL, length, EOS rate); registers the policy.",
    ),
    _evaluation(
        "grpo",
        "grpo_evaluation",
        ("sft_model", "reward_model", "grpo_policy", "eval_prompts"),
        "GRPO vs SFT on held-out prompts, and its RM-vs-gold curve; registers the policy.",
    ),
    _evaluation(
        "rloo",
        "rloo_evaluation",
        ("sft_model", "reward_model", "rloo_policy", "eval_prompts"),
        "RLOO vs SFT on held-out prompts, and its RM-vs-gold curve; registers the policy.",
    ),
    Step(
        "method_comparison",
        ("policy_evaluation", "dpo_evaluation", "grpo_evaluation", "rloo_evaluation"),
        "rlhf_dag.config:StepConfig",
        "rlhf_dag.training.evaluate:method_comparison",
        "Every policy vs SFT in one table: gold win rate [95% CI], gold and RM means, KL to SFT, length, EOS rate, train time, registry version and champion.",
        group="alternatives",
        kind="table",
        automation="alternative",
    ),
    # both policies are inputs; its config says which one writes the responses. The batch (a partition) is an input too.
    Step(
        "labeling_candidates",
        ("sft_model", "ppo_policy", "prompts"),
        "rlhf_dag.config:LabelingConfig",
        "rlhf_dag.training.candidates:labeling_candidates",
        "One labeling batch (a partition): K responses per prompt from a policy (sft_model unless configured), pushed to Label Studio for people to rank.",
        group="labeling",
        kind="labelstudio",
        automation="none",
    ),
)


def by_name() -> dict[str, Step]:
    return {s.name: s for s in STEPS}


def step(name: str) -> Step:
    steps = by_name()
    if name not in steps:
        raise ValueError(f"unknown step {name!r}; the steps are {', '.join(steps)}")
    return steps[name]


def names(group: str | None = None) -> list[str]:
    """The steps (of one group), in dependency order."""
    return [s.name for s in STEPS if group is None or s.group == group]


def upstream_steps(name: str) -> list[str]:
    """The steps `name` reads, directly or through others, nearest first."""
    steps, out = by_name(), []
    for i in steps[name].inputs:
        if i in steps:
            out += [i, *upstream_steps(i)]
    return list(dict.fromkeys(out))


def upstream_labels(name: str) -> list[str]:
    """The labeled files whose edit changes `name`: those it reads and those any upstream step reads."""
    steps = by_name()
    return sorted({i for s in (name, *upstream_steps(name)) for i in steps[s].inputs if i not in steps})


def evaluations() -> dict[str, str]:
    """Each method beside SFT and the evaluation that judges it, in table order: {"ppo": "policy_evaluation", ...}."""
    return {s.method: s.name for s in STEPS if s.method is not None and s.name != f"{s.method}_policy"}


@functools.cache
def load(dotted: str):
    """The object a "module:attribute" path names."""
    module, _, attribute = dotted.partition(":")
    return getattr(importlib.import_module(module), attribute)
