"""The dataset steps: the pretraining corpus, and the labeled files validated into Parquet with a fixed split."""

from __future__ import annotations

import logging

from ..config import CorpusConfig, DatasetConfig
from ..data.corpus import load_corpus
from ..data.datasets import assign_splits, build_dataset
from ..data.label_files import load_labels
from .result import StepResult, step

logger = logging.getLogger(__name__)


@step
def pretraining_corpus(inputs: dict[str, str], cfg: CorpusConfig) -> StepResult:
    documents = load_corpus(cfg.source, cfg.n_documents, cfg.seed)
    import pandas as pd

    frame = pd.DataFrame(
        {"text": documents, "split": assign_splits(documents, cfg.validation_fraction, "pretraining_corpus")}
    )
    held_out = int((frame["split"] == "validation").sum())
    metrics = {"documents": len(documents), "held_out_documents": held_out, "characters": sum(map(len, documents))}
    preview = "\n\n---\n\n".join(documents[:5])
    return StepResult(
        "pretraining_corpus",
        metrics,
        ["documents", "held_out_documents"],
        main_file="corpus.parquet",
        frames={"corpus.parquet": frame},
        texts={"preview.md": f"```\n{preview}\n```"},
    )


def _dataset(step: str, labels, inputs: dict[str, str], cfg: DatasetConfig, group_of=None) -> StepResult:
    frame = build_dataset(labels, cfg.validation_fraction, cfg.split_salt, group_of)
    n_val = int((frame["split"] == "validation").sum())
    metrics = {
        "train_records": len(frame) - n_val,
        "validation_records": n_val,
        "duplicates_dropped": labels.duplicates_dropped,
    }
    logger.info("%s: %d valid records, sha256 %s", labels.path, len(labels.records), labels.sha256[:12])
    return StepResult(
        step,
        metrics,
        list(metrics),
        inputs=inputs,
        tags={"labels.sha256": labels.sha256},
        main_file=f"{step}.parquet",
        frames={f"{step}.parquet": frame},
        texts={"preview.md": frame.head(5).to_markdown(index=False)},
    )


@step
def sft_dataset(inputs: dict[str, str], cfg: DatasetConfig) -> StepResult:
    return _dataset("sft_dataset", load_labels(inputs["demonstrations"], "demonstrations"), inputs, cfg)


@step
def comparison_dataset(inputs: dict[str, str], cfg: DatasetConfig) -> StepResult:
    """Validated pairs with a fixed split; where people ranked (data/feedback.py), their agreement with each other and
    with the gold labeler, per batch and per labeler, and the labelers far below the others."""
    from ..data.feedback import agreement
    from .judge import load_judge

    labels = load_labels(inputs["comparisons"], "comparisons")
    judge = load_judge(cfg.judge)
    # every kind the judge knows gets held-out pairs, so the reward model's accuracy is measured on each
    result = _dataset("comparison_dataset", labels, inputs, cfg, judge.kind if judge else None)
    human = [r for r in labels.records if r.get("labeler")]
    if human:
        figures = agreement(human, judge.score if judge else None)
        result.metrics.update(
            {"human_pairs": len(human), "human_rankings": len({r["ranking"] for r in human}), **figures["metrics"]}
        )
        result.headline += [
            k
            for k in ("human_pairs", "human_rankings", "agreement_inter_labeler", "agreement_gold")
            if k in result.metrics
        ]
        result.tags["flagged_labelers"] = ", ".join(figures["flagged"]) or "none"
        result.texts["agreement.md"] = figures["table"]
        if figures["flagged"]:
            logger.warning(
                "comparison_dataset: labeler(s) far below the others' agreement: %s (agreement.md)",
                ", ".join(figures["flagged"]),
            )
    return result
