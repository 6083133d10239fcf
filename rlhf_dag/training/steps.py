"""The one way to run a step outside Dagster: by name, or from a spec file.

Every step is a function (its row in graph.py names it): upstream paths + config
in, a `StepResult` out, no Dagster and no MLflow calls. `pipeline/publish.py`
runs it inside the asset's MLflow run; a launcher (Pipes, torchrun, accelerate,
a k8s pod) runs it in a child process from a spec file; bench/ and `rlhf-dag
step` run it here too:

    python -m rlhf_dag.training.steps --spec spec.json

with `spec.json` = `{"step": "sft_model", "inputs": {"base_model": "<dir>", "sft_dataset": "<file>"},
"config": {...fields of the step's config class...}, "output": "<folder to create>"}`.
Inputs are exactly the step's edges in the graph (model folders, Parquet files,
labeled files); a step reads nothing else.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .. import graph
from ..artifacts import atomic_dir
from ..config import resolve
from .result import StepResult

logger = logging.getLogger(__name__)


def step_function(name: str):
    """The step function of `name`, imported from the module its row names."""
    return graph.load(graph.step(name).function)


def run_step(step: str, inputs: dict[str, str], config: dict | None = None) -> StepResult:
    """Run a step with `config` over the active profile (RLHF_DAG_PROFILE), as an asset resolves its run config.
    `inputs` maps each of the step's inputs (graph.py) to a path."""
    missing = [name for name in graph.step(step).inputs if name not in inputs]
    if missing:
        raise ValueError(
            f"{step}: no path given for its input(s) {', '.join(missing)}; its inputs are {', '.join(graph.step(step).inputs)}"
        )
    return step_function(step)(inputs, resolve(step, config))


def run_and_save(
    step: str, inputs: dict[str, str], output: Path | str, config: dict | None = None, lineage: dict | None = None
) -> tuple[Path, StepResult]:
    """Run a step and save its result to `output` (a folder written atomically): where a downstream step reads it.
    Returns (the path downstream steps take as this step's input, the result)."""
    result = run_step(step, inputs, config)
    output = Path(output)
    with atomic_dir(output) as tmp:
        result.save(tmp, lineage=lineage)
    return output / result.main_file if result.main_file else output, result


def run_chain(
    steps: list[str],
    labels: Path | str,
    root: Path | str,
    configs: dict[str, dict] | None = None,
    paths: dict[str, str] | None = None,
) -> tuple[dict[str, str], dict[str, StepResult]]:
    """Run `steps` in order, each saved to `<root>/<step>/`, each reading its upstream from `paths` (given, or made by
    an earlier step here) and its labeled files from `labels`: the graph without Dagster, as bench/ runs it."""
    from ..data.label_files import label_file

    paths = dict(paths or {}) | {name: str(label_file(labels, name)) for name in graph.LABEL_FILES}
    results = {}
    for step in steps:
        inputs = {name: paths[name] for name in graph.step(step).inputs}
        path, results[step] = run_and_save(step, inputs, Path(root) / step, (configs or {}).get(step))
        paths[step] = str(path)
    return paths, results


def run_spec(spec_path: str | Path) -> tuple[Path, StepResult]:
    """Run the step a spec file describes and save its result to the spec's output folder (atomically).

    Started as one rank of a multi-process job (torchrun, accelerate launch), every rank trains its
    replica; rank 0 alone saves, after checking that all ranks ended with the same weights. An optional
    `lineage` field of the spec (the MLflow run) goes into the model card.
    """
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    missing = {"step", "inputs", "config", "output"} - set(spec)
    if missing:
        raise ValueError(f"{spec_path}: missing field(s) {', '.join(sorted(missing))}")
    from . import distributed

    distributed.init()
    result = run_step(spec["step"], spec["inputs"], spec["config"])
    if result.model is not None:
        _record_replicas(result)
    output = Path(spec["output"])
    if distributed.rank() == 0:
        with atomic_dir(output) as tmp:
            result.save(tmp, lineage=spec.get("lineage"))
    distributed.barrier()
    return output, result


def _record_replicas(result: StepResult) -> None:
    """World size, the distributed type accelerate set up for the trainers, and each rank's weight checksum;
    ranks that ended with different weights trained apart (e.g. each alone on all the data) and fail the step."""
    import torch
    from accelerate import PartialState

    from . import distributed

    checksums = distributed.all_gather(distributed.checksum(result))
    result.metrics["world_size"] = distributed.world_size()
    result.tags["distributed_type"] = str(PartialState(cpu=not torch.cuda.is_available()).distributed_type).rsplit(
        ".", 1
    )[-1]
    result.tags["rank_checksums"] = ",".join(checksums)
    if len(set(checksums)) > 1:
        raise RuntimeError(
            f"{result.step}: the ranks ended with different weights (checksums {checksums}); their gradients were not all-reduced"
        )


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.errors import record

    # a failing rank writes its traceback where torchrun (and the launcher that started it) finds it
    return record(_run_from_command_line)(argv)


def _run_from_command_line(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rlhf_dag.training.steps", description="Run one RLHF step from a spec file, without Dagster."
    )
    parser.add_argument("--spec", required=True, help="JSON file: step, inputs, config, output (optional: lineage)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    output, _ = run_spec(args.spec)
    print(output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
