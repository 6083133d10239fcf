"""One step started by a launcher (pipeline/launch.py): the spec runner, with rank 0 talking to Dagster through Pipes.

    torchrun --standalone --nproc_per_node 2 -m rlhf_dag.pipes_step --spec spec.json

Every rank runs the step (training/steps.py `run_spec`); rank 0 alone opens Pipes
(`dagster_pipes`, not dagster: the child never imports the orchestrator), forwards
the step's progress lines to the Dagster run log and reports the replicas' facts
(world size, distributed type, weight checksums) as the materialization's metadata.
Other ranks wait at the spec runner's barrier. Started without a Pipes context
(by hand), it is the plain spec runner.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys


class _ToPipesLog(logging.Handler):
    def __init__(self, pipes):
        super().__init__(logging.INFO)
        self.pipes = pipes

    def emit(self, record):
        self.pipes.log.log(record.levelno, record.getMessage())


def run(spec: str) -> int:
    from dagster_pipes import PipesEnvVarParamsLoader, open_dagster_pipes

    from .training.steps import run_spec

    if os.environ.get("RANK", "0") != "0" or not PipesEnvVarParamsLoader().is_dagster_pipes_process():
        run_spec(spec)
        return 0
    with open_dagster_pipes() as pipes:
        logger = logging.getLogger("rlhf_dag")
        logger.addHandler(_ToPipesLog(pipes))
        logger.setLevel(logging.INFO)
        output, result = run_spec(spec)
        facts = {"world_size": int(result.metrics.get("world_size", 1))}
        facts |= {key: result.tags[key] for key in ("distributed_type", "rank_checksums") if key in result.tags}
        pipes.report_asset_materialization(metadata={**facts, "output": str(output)})
    return 0


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.errors import record

    parser = argparse.ArgumentParser(
        prog="python -m rlhf_dag.pipes_step",
        description="Run one RLHF step from a spec file as a launched (Pipes) process.",
    )
    parser.add_argument("--spec", required=True, help="JSON file: step, inputs, config, output, lineage")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # a failing rank writes its traceback where torchrun finds it, and the launcher shows it in the run log
    return record(run)(args.spec)


if __name__ == "__main__":
    sys.exit(main())
