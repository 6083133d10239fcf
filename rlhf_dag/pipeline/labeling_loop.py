"""Human feedback in the loop: labeling batches out to Label Studio, rankings back into the comparisons file.

`labeling_candidates` pushes a batch (one partition per batch; it is served by a code location of its own,
rlhf_dag/labeling_definitions.py, so that the training graph's has none); `pull_labels` (the `label_studio_pull` sensor and
`rlhf-dag pull-labels`) appends every completed ranking of every batch, and every Label Studio JSON
export dropped into `<labels dir>/label_studio/`, to `comparisons.jsonl`. The file's new sha256 makes
exactly the assets downstream of `labels/comparisons` stale; the sensor then observes it at once.
"""

# no `from __future__ import annotations`: Dagster reads the asset's config class from its real annotation
import os
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from ..artifacts import ArtifactHandle
from ..config import labels_dir
from ..data.feedback import append_rankings
from ..data.label_studio import PulledRankings, read_export
from ..training.result import StepResult
from .publish import asset_config_class, profile_version, publish, upstream_labels
from .resources import LabelStudio, MlflowTracking

# One partition of labeling_candidates per labeling batch, added by `rlhf-dag label-batch` or in the UI.
LABELING_BATCHES = dg.DynamicPartitionsDefinition(name="labeling_batches")

LabelingCandidatesConfig = asset_config_class("labeling_candidates")

EXPORTS_FOLDER = "label_studio"  # inside the labels dir: Label Studio JSON exports to read as comparisons


@dg.asset(
    partitions_def=LABELING_BATCHES,
    code_version=profile_version("labeling_candidates"),
    group_name="labeling",
    kinds={"labelstudio"},
    deps=[dg.AssetKey(["labels", name]) for name in upstream_labels("labeling_candidates")],
    description="One labeling batch (a partition): K responses per prompt from a policy (sft_model unless configured), pushed to Label Studio for people to rank.",
)
def labeling_candidates(
    context: dg.AssetExecutionContext,
    config: LabelingCandidatesConfig,
    mlflow: MlflowTracking,
    label_studio: LabelStudio,
    sft_model: ArtifactHandle,
    ppo_policy: ArtifactHandle,
) -> dg.Output[ArtifactHandle]:
    output = publish(context, config, mlflow, sft_model=sft_model, ppo_policy=ppo_policy)
    policy = {"sft_model": sft_model, "ppo_policy": ppo_policy}[output.value.tags["policy"]]
    candidates = StepResult.load(Path(output.value.path).parent).records["candidates.json"]
    pushed = label_studio.push_batch(
        context.partition_key, candidates, output.value.tags["policy"], policy.mlflow_run_id or ""
    )
    return dg.Output(output.value, metadata={**output.metadata, "policy_run_id": policy.mlflow_run_id or "", **pushed})


@dataclass
class PullReport:
    rankings_added: int = 0
    pairs_added: int = 0
    rankings_seen: int = 0
    skipped: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)

    def lines(self, comparisons: Path) -> list[str]:
        already = self.rankings_seen - self.rankings_added
        out = [
            f"{comparisons}: +{self.pairs_added} pairs from {self.rankings_added} new ranking(s)"
            + (f"; {already} ranking(s) already there" if already else "")
        ]
        out += [f"skipped: {m}" for m in self.skipped] + [f"REJECTED: {m}" for m in self.rejected]
        return out


def pull_labels(label_studio: LabelStudio | None, batches: list[str], labels: Path | None = None) -> PullReport:
    """Append the completed rankings of `batches` (from Label Studio) and of the dropped-in exports to comparisons.jsonl.

    Everything is read before anything is written: Label Studio down, or an unreadable export, raises with
    the file untouched. Unusable annotations (ties, edited tasks) are reported in `rejected` and left out.
    """
    labels = labels or labels_dir()
    pulled = [label_studio.client().pull(batch) for batch in batches] if batches and label_studio is not None else []
    pulled += [read_export(path) for path in sorted((labels / EXPORTS_FOLDER).glob("*.json"))]
    merged = PulledRankings()
    for p in pulled:
        merged.rankings += p.rankings
        merged.skipped += p.skipped
        merged.rejected += p.rejected
    added, pairs = append_rankings(labels / "comparisons.jsonl", merged.rankings)
    return PullReport(added, pairs, len(merged.rankings), merged.skipped, merged.rejected)


@dg.sensor(
    job_name="observe_labels",
    minimum_interval_seconds=int(os.environ.get("RLHF_DAG_PULL_SECONDS", "60")),
    default_status=dg.DefaultSensorStatus.RUNNING
    if os.environ.get("LABEL_STUDIO_API_KEY")
    else dg.DefaultSensorStatus.STOPPED,
    description="Pulls completed rankings from Label Studio into comparisons.jsonl, then observes the file (on when LABEL_STUDIO_API_KEY is set).",
)
def label_studio_pull(context: dg.SensorEvaluationContext, label_studio: LabelStudio):
    batches = context.instance.get_dynamic_partitions(LABELING_BATCHES.name)
    report = pull_labels(label_studio, batches)
    comparisons = labels_dir() / "comparisons.jsonl"
    for line in report.lines(comparisons):
        context.log.info(line)
    if not report.pairs_added:
        return dg.SkipReason(report.lines(comparisons)[0])
    from ..data.label_files import file_sha256

    return dg.RunRequest(run_key=f"comparisons-{file_sha256(comparisons)}")
