"""What a step function returns, and how it is written to (and read back from) its output folder.

A step (training/steps.py) computes; it does not decide where its output goes
or how it is tracked. The caller saves the result into a folder: the Dagster
publisher into `<artifacts>/<asset>/<run_id>/` atomically, a launched child
process into the folder its spec names. `step.json` in that folder carries
everything but the weights (metrics, curves, texts, lineage), so a result saved
by another process is read back whole with `StepResult.load`.
"""

from __future__ import annotations

import functools
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

RESULT_FILE = "step.json"


@dataclass
class ModelCard:
    """The README.md saved beside a model's weights."""

    title: str
    description: str


@dataclass
class StepResult:
    """One step's output: the trained objects, the figures to log, the files to keep."""

    step: str
    metrics: dict[str, float]
    headline: list[str]  # the metric keys shown on the asset's page
    inputs: dict[str, str] = field(
        default_factory=dict
    )  # upstream name -> the exact path this result was computed from
    tags: dict[str, str] = field(default_factory=dict)  # string facts (a labeled file's sha256), MLflow tags
    main_file: str = ""  # what downstream reads, relative to the folder ("" = the folder itself, a model)
    model: object | None = None
    tokenizer: object | None = None
    card: ModelCard | None = None
    submodels: dict[str, object] = field(
        default_factory=dict
    )  # subfolder -> model saved beside the main one (the critic)
    frames: dict[str, object] = field(default_factory=dict)  # file name -> pandas DataFrame, saved as Parquet
    texts: dict[str, str] = field(
        default_factory=dict
    )  # file name -> Markdown/text, shown in the UI and logged to MLflow
    records: dict[str, object] = field(default_factory=dict)  # file name -> JSON-able object (history, samples)
    figures: dict[str, object] = field(default_factory=dict)  # file name -> matplotlib figure, saved as PNG
    curves: dict[str, list[tuple[int, float]]] = field(
        default_factory=dict
    )  # metric -> (step, value), for loops without a tracker integration

    def save(self, folder: Path | str, lineage: dict[str, str] | None = None) -> None:
        """Write everything into `folder` (which exists and is empty); `lineage` adds to the model card (e.g. the MLflow run).

        A LoRA model is saved as its adapter and its merged weights (training/lora.py); saving merges it in place,
        and `self.model` becomes the plain merged model."""
        from .lora import save_pretrained

        folder = Path(folder)
        if self.model is not None:
            self.model = save_pretrained(self.model, folder)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(folder)
        for sub, model in self.submodels.items():
            self.submodels[sub] = save_pretrained(model, folder / sub)
        for name, frame in self.frames.items():
            frame.to_parquet(folder / name, index=False)
        for name, text in self.texts.items():
            (folder / name).write_text(text, encoding="utf-8")
        for name, obj in self.records.items():
            (folder / name).write_text(json.dumps(obj, indent=1, default=str), encoding="utf-8")
        for name, figure in self.figures.items():
            figure.savefig(folder / name, dpi=100)
        if self.card is not None:
            write_model_card(folder, self.card, {**self.inputs, **(lineage or {})}, self.metrics)
        summary = {
            "step": self.step,
            "metrics": self.metrics,
            "headline": self.headline,
            "inputs": self.inputs,
            "tags": self.tags,
            "main_file": self.main_file,
            "texts": sorted(self.texts),
            "figures": sorted(self.figures),
            "records": sorted(self.records),
            "curves": self.curves,
        }
        (folder / RESULT_FILE).write_text(json.dumps(summary, indent=1), encoding="utf-8")

    @classmethod
    def load(cls, folder: Path | str) -> StepResult:
        """The result another process saved in `folder`: everything but the in-memory models and figures."""
        folder = Path(folder)
        summary = json.loads((folder / RESULT_FILE).read_text(encoding="utf-8"))
        return cls(
            step=summary["step"],
            metrics=summary["metrics"],
            headline=summary["headline"],
            inputs=summary["inputs"],
            tags=summary["tags"],
            main_file=summary["main_file"],
            texts={name: (folder / name).read_text(encoding="utf-8") for name in summary["texts"]},
            records={name: json.loads((folder / name).read_text(encoding="utf-8")) for name in summary["records"]},
            curves={k: [tuple(p) for p in v] for k, v in summary["curves"].items()},
        )


def read_inputs(folder: Path | str) -> dict[str, str]:
    """The upstream paths a saved result was computed from (what a downstream step checks its lineage against)."""
    return json.loads((Path(folder) / RESULT_FILE).read_text(encoding="utf-8"))["inputs"]


def write_model_card(path: Path, card: ModelCard, lineage: dict, metrics: dict) -> None:
    """A short README.md beside the weights: what the model is, where it came from, how it scored."""
    lines = [f"# {card.title}", "", card.description, "", "## Lineage", ""]
    lines += [f"- **{k}**: `{v}`" for k, v in lineage.items()]
    lines += ["", "## Metrics", ""]
    lines += [f"- {k}: {v:.4g}" if isinstance(v, float) else f"- {k}: {v}" for k, v in metrics.items()]
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from transformers import AutoTokenizer, AutoModelForCausalLM",
        "tok = AutoTokenizer.from_pretrained(path)",
        "model = AutoModelForCausalLM.from_pretrained(path)",
        'ids = tok.apply_chat_template([{"role": "user", "content": "What is 2 + 2?"}], add_generation_prompt=True, return_tensors="pt")',
        "```",
        "",
    ]
    (Path(path) / "README.md").write_text("\n".join(lines), encoding="utf-8")


# What a step that samples reports of it: seconds in `generate.decode`, their share of the step, new tokens/s.
GENERATION_FIGURES = ("generate_seconds", "generate_share", "generate_tokens_per_s")


def step(function):
    """A step function: before it runs, datasets' and transformers' progress bars and load reports are turned off
    (the steps log their own progress: TrainingMonitor, PPO's iteration lines); RLHF_DAG_VERBOSE=1 keeps them.
    Done at the first call, not at import, so that `rlhf-dag status` never imports transformers. A step that samples
    (through `generate.decode`) gets GENERATION_FIGURES among its metrics and headline (`rlhf-dag run`'s table)."""

    @functools.wraps(function)
    def run(inputs: dict[str, str], cfg):
        if not os.environ.get("RLHF_DAG_VERBOSE"):
            import datasets
            import transformers

            datasets.disable_progress_bars()
            transformers.utils.logging.disable_progress_bar()
            transformers.utils.logging.set_verbosity_error()
        from .generate import CLOCK

        started, generating, generated = time.perf_counter(), CLOCK.seconds, CLOCK.new_tokens
        result = function(inputs, cfg)
        generated = CLOCK.new_tokens - generated
        if generated and isinstance(result, StepResult):  # the step sampled through `generate.decode`
            generating = CLOCK.seconds - generating
            figures = (generating, generating / (time.perf_counter() - started), generated / generating)
            result.metrics |= dict(zip(GENERATION_FIGURES, figures))
            result.headline += [k for k in GENERATION_FIGURES if k not in result.headline]
        return result

    return run


@dataclass
class TrainResult:
    """What a training function hands back to its step: the trained objects and final figures
    (the curves went to MLflow through the trainer's own integration)."""

    model: object
    tokenizer: object
    metrics: dict


def markdown_cell(text: str) -> str:
    """Text as one Markdown table cell: pipes escaped, line breaks kept as <br>."""
    return text.replace("|", "\\|").replace("\n", "<br>") or "(empty)"
