"""The RLHF steps as software-defined assets.

Each body only names its inputs: the step function (training/steps.py) does the
work and the publisher (publish.py) owns the MLflow run, the atomic save, the
handle and the metadata. The labeled files a step reads (training/steps.py,
STEP_INPUTS) reach it by path; every `labels/<name>` source upstream of an asset
is declared as its dependency.

Group `rlhf` is the core graph (`rlhf-dag run`, `make run`); group
`alternatives` holds DPO, GRPO and RLOO beside PPO, their evaluations and the
one table that compares every method (`rlhf-dag run --select '*'`, or the
`alternatives` job). Each evaluation registers its policy in the MLflow model
registry (pipeline/registry.py).
"""

from pathlib import Path

import dagster as dg

from ..artifacts import ArtifactHandle
from ..training.result import StepResult
from .automation import alternative_automation, dataset_automation, model_automation
from .publish import asset_config_class, profile_version, publish, upstream_labels
from .launch import StepLauncher
from .labeling import LABELING_BATCHES
from .registry import PolicyRegistry
from .resources import LabelStudio, MlflowTracking, QualityGates

PretrainingCorpusConfig = asset_config_class("pretraining_corpus")
BaseModelConfig = asset_config_class("base_model")
SftDatasetConfig = asset_config_class("sft_dataset")
SftModelConfig = asset_config_class("sft_model")
ComparisonDatasetConfig = asset_config_class("comparison_dataset")
RewardModelConfig = asset_config_class("reward_model")
PpoPolicyConfig = asset_config_class("ppo_policy")
PolicyEvaluationConfig = asset_config_class("policy_evaluation")
LabelingCandidatesConfig = asset_config_class("labeling_candidates")
DpoPolicyConfig = asset_config_class("dpo_policy")
GrpoPolicyConfig = asset_config_class("grpo_policy")
RlooPolicyConfig = asset_config_class("rloo_policy")
DpoEvaluationConfig = asset_config_class("dpo_evaluation")
GrpoEvaluationConfig = asset_config_class("grpo_evaluation")
RlooEvaluationConfig = asset_config_class("rloo_evaluation")
MethodComparisonConfig = asset_config_class("method_comparison")


def _labels(*names: str) -> list[dg.AssetKey]:
    return [dg.AssetKey(["labels", name]) for name in names]


def _asset(description: str, automation, kind: str, group: str = "rlhf"):
    """An asset of the graph. Besides its inputs it depends on every labeled file upstream of it, so that Dagster's
    stale status (the UI's "Unsynced") marks it as soon as such a file is edited, as `rlhf-dag status` does."""

    def decorate(fn):
        return dg.asset(name=fn.__name__, code_version=profile_version(fn.__name__), automation_condition=automation, group_name=group,
                        kinds={kind}, deps=_labels(*upstream_labels(fn.__name__)), description=description)(fn)

    return decorate


@_asset("Internet-like documents the base model is pretrained on, with held-out documents for its loss gate.", dataset_automation, "parquet")
def pretraining_corpus(context: dg.AssetExecutionContext, config: PretrainingCorpusConfig, mlflow: MlflowTracking) -> dg.Output[ArtifactHandle]:
    return publish(context, config, mlflow)


@_asset("Tokenizer + causal LM that only continues text (RLHF step 1).", model_automation, "pytorch")
def base_model(context: dg.AssetExecutionContext, config: BaseModelConfig, mlflow: MlflowTracking, launcher: StepLauncher,
               pretraining_corpus: ArtifactHandle) -> dg.Output[ArtifactHandle]:
    return publish(context, config, mlflow, launcher, pretraining_corpus=pretraining_corpus)


@_asset("Validated, de-duplicated demonstrations with a fixed train/validation split.", dataset_automation, "parquet")
def sft_dataset(context: dg.AssetExecutionContext, config: SftDatasetConfig, mlflow: MlflowTracking) -> dg.Output[ArtifactHandle]:
    return publish(context, config, mlflow)


@_asset("The base model fine-tuned on demonstrations with TRL SFTTrainer (RLHF step 2).", model_automation, "pytorch")
def sft_model(context: dg.AssetExecutionContext, config: SftModelConfig, mlflow: MlflowTracking, launcher: StepLauncher, base_model: ArtifactHandle,
              sft_dataset: ArtifactHandle) -> dg.Output[ArtifactHandle]:
    return publish(context, config, mlflow, launcher, base_model=base_model, sft_dataset=sft_dataset)


@_asset("Validated (prompt, chosen, rejected) comparisons with a fixed held-out split.", dataset_automation, "parquet")
def comparison_dataset(context: dg.AssetExecutionContext, config: ComparisonDatasetConfig, mlflow: MlflowTracking) -> dg.Output[ArtifactHandle]:
    return publish(context, config, mlflow)


@_asset("Scores <prompt, response>; trained with TRL RewardTrainer from the SFT model (RLHF step 3).", model_automation, "pytorch")
def reward_model(context: dg.AssetExecutionContext, config: RewardModelConfig, mlflow: MlflowTracking, launcher: StepLauncher, sft_model: ArtifactHandle,
                 comparison_dataset: ArtifactHandle) -> dg.Output[ArtifactHandle]:
    return publish(context, config, mlflow, launcher, sft_model=sft_model, comparison_dataset=comparison_dataset)


@_asset("The SFT model optimized with PPO against the reward model, KL-penalized to the SFT model (RLHF step 4).", model_automation, "pytorch")
def ppo_policy(context: dg.AssetExecutionContext, config: PpoPolicyConfig, mlflow: MlflowTracking, launcher: StepLauncher, sft_model: ArtifactHandle,
               reward_model: ArtifactHandle) -> dg.Output[ArtifactHandle]:
    return publish(context, config, mlflow, launcher, sft_model=sft_model, reward_model=reward_model)


@_asset("Base vs SFT vs PPO on held-out prompts, scored by the RM PPO was trained against: gold win rates, RM and gold scores, KL, length, EOS rate.",
        model_automation, "pytorch")
def policy_evaluation(context: dg.AssetExecutionContext, config: PolicyEvaluationConfig, mlflow: MlflowTracking, registry: PolicyRegistry, gates: QualityGates,
                      base_model: ArtifactHandle, sft_model: ArtifactHandle, reward_model: ArtifactHandle, ppo_policy: ArtifactHandle) -> dg.Output[ArtifactHandle]:
    return publish(context, config, mlflow, register=registry.registration("ppo", gates), base_model=base_model, sft_model=sft_model, reward_model=reward_model,
                   ppo_policy=ppo_policy)


@_asset("The SFT model optimized with TRL DPOTrainer on the comparisons (no reward model, no sampling).", alternative_automation, "pytorch", "alternatives")
def dpo_policy(context: dg.AssetExecutionContext, config: DpoPolicyConfig, mlflow: MlflowTracking, launcher: StepLauncher, sft_model: ArtifactHandle,
               comparison_dataset: ArtifactHandle) -> dg.Output[ArtifactHandle]:
    return publish(context, config, mlflow, launcher, sft_model=sft_model, comparison_dataset=comparison_dataset)


@_asset("The SFT model optimized with TRL GRPOTrainer against the reward model (group-standardized rewards, no critic), KL to SFT.",
        alternative_automation, "pytorch", "alternatives")
def grpo_policy(context: dg.AssetExecutionContext, config: GrpoPolicyConfig, mlflow: MlflowTracking, launcher: StepLauncher, sft_model: ArtifactHandle,
                reward_model: ArtifactHandle) -> dg.Output[ArtifactHandle]:
    return publish(context, config, mlflow, launcher, sft_model=sft_model, reward_model=reward_model)


@_asset("The SFT model optimized with TRL RLOOTrainer against the reward model (leave-one-out baseline, no critic), KL to SFT.",
        alternative_automation, "pytorch", "alternatives")
def rloo_policy(context: dg.AssetExecutionContext, config: RlooPolicyConfig, mlflow: MlflowTracking, launcher: StepLauncher, sft_model: ArtifactHandle,
                reward_model: ArtifactHandle) -> dg.Output[ArtifactHandle]:
    return publish(context, config, mlflow, launcher, sft_model=sft_model, reward_model=reward_model)


@_asset("DPO vs SFT on held-out prompts (gold win rate, RM and gold means, KL, length, EOS rate); registers the policy.", alternative_automation, "pytorch", "alternatives")
def dpo_evaluation(context: dg.AssetExecutionContext, config: DpoEvaluationConfig, mlflow: MlflowTracking, registry: PolicyRegistry, gates: QualityGates,
                   sft_model: ArtifactHandle, reward_model: ArtifactHandle, dpo_policy: ArtifactHandle) -> dg.Output[ArtifactHandle]:
    return publish(context, config, mlflow, register=registry.registration("dpo", gates), sft_model=sft_model, reward_model=reward_model, dpo_policy=dpo_policy)


@_asset("GRPO vs SFT on held-out prompts, and its RM-vs-gold curve; registers the policy.", alternative_automation, "pytorch", "alternatives")
def grpo_evaluation(context: dg.AssetExecutionContext, config: GrpoEvaluationConfig, mlflow: MlflowTracking, registry: PolicyRegistry, gates: QualityGates,
                    sft_model: ArtifactHandle, reward_model: ArtifactHandle, grpo_policy: ArtifactHandle) -> dg.Output[ArtifactHandle]:
    return publish(context, config, mlflow, register=registry.registration("grpo", gates), sft_model=sft_model, reward_model=reward_model, grpo_policy=grpo_policy)


@_asset("RLOO vs SFT on held-out prompts, and its RM-vs-gold curve; registers the policy.", alternative_automation, "pytorch", "alternatives")
def rloo_evaluation(context: dg.AssetExecutionContext, config: RlooEvaluationConfig, mlflow: MlflowTracking, registry: PolicyRegistry, gates: QualityGates,
                    sft_model: ArtifactHandle, reward_model: ArtifactHandle, rloo_policy: ArtifactHandle) -> dg.Output[ArtifactHandle]:
    return publish(context, config, mlflow, register=registry.registration("rloo", gates), sft_model=sft_model, reward_model=reward_model, rloo_policy=rloo_policy)


@_asset("Every policy vs SFT in one table: gold win rate [95% CI], gold and RM means, KL to SFT, length, EOS rate, train time, registry version and champion.",
        alternative_automation, "table", "alternatives")
def method_comparison(context: dg.AssetExecutionContext, config: MethodComparisonConfig, mlflow: MlflowTracking, policy_evaluation: ArtifactHandle,
                      dpo_evaluation: ArtifactHandle, grpo_evaluation: ArtifactHandle, rloo_evaluation: ArtifactHandle) -> dg.Output[ArtifactHandle]:
    return publish(context, config, mlflow, policy_evaluation=policy_evaluation, dpo_evaluation=dpo_evaluation, grpo_evaluation=grpo_evaluation,
                   rloo_evaluation=rloo_evaluation)


@dg.asset(partitions_def=LABELING_BATCHES, code_version=profile_version("labeling_candidates"), group_name="labeling", kinds={"labelstudio"},
          deps=_labels(*upstream_labels("labeling_candidates")),
          description="One labeling batch (a partition): K responses per prompt from a policy (sft_model unless configured), pushed to Label Studio for people to rank.")
def labeling_candidates(context: dg.AssetExecutionContext, config: LabelingCandidatesConfig, mlflow: MlflowTracking, label_studio: LabelStudio,
                        sft_model: ArtifactHandle, ppo_policy: ArtifactHandle) -> dg.Output[ArtifactHandle]:
    output = publish(context, config, mlflow, sft_model=sft_model, ppo_policy=ppo_policy)
    policy = {"sft_model": sft_model, "ppo_policy": ppo_policy}[output.value.tags["policy"]]
    candidates = StepResult.load(Path(output.value.path).parent).records["candidates.json"]
    pushed = label_studio.push_batch(context.partition_key, candidates, output.value.tags["policy"], policy.mlflow_run_id or "")
    return dg.Output(output.value, metadata={**output.metadata, "policy_run_id": policy.mlflow_run_id or "", **pushed})
