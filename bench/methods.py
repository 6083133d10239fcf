"""Which method when: PPO, DPO, GRPO and RLOO on the same labels, judged by the same gold, and what the registry costs.

    .venv/bin/python bench/methods.py [--profile default] [--reuse]

Runs the graph's own steps (rlhf_dag/training/steps.py `run_chain`) on the shipped
labels: corpus -> base -> SFT, comparisons -> RM once, then each method's policy
and its evaluation vs SFT (policy_evaluation for PPO, <method>_evaluation for the
others) and the method table (method_comparison). Then registers every policy in
a scratch MLflow store as the evaluations do (pipeline/registry.py, the champion
rule included), timing each registration, and times loading `models:/<name>@champion`.
Writes `bench/results/methods.json` and `.md`. `--reuse` keeps the SFT model and
RM of the previous run (bench/results/tmp/methods-<profile>/shared/).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time

from harness import SCRATCH, bench_parser, machine, machine_line, run_steps, save_results, warn_if_busy
from quality import UPSTREAM

from rlhf_dag import graph


def main() -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--reuse", action="store_true", help="reuse the SFT model and RM of the previous run")
    args = parser.parse_args()
    os.environ["RLHF_DAG_PROFILE"] = args.profile
    root = SCRATCH / f"methods-{args.profile}"
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    from rlhf_dag.artifacts import ArtifactHandle
    from rlhf_dag.config import resolve

    info = machine()
    warn_if_busy(info)
    methods = graph.evaluations()  # {"ppo": "policy_evaluation", "dpo": "dpo_evaluation", ...}, in table order
    if args.reuse:
        paths, seconds = json.loads((root / "shared" / "paths.json").read_text()), {}
        shutil.rmtree(root / "methods", ignore_errors=True)
        (root / "mlflow.db").unlink(missing_ok=True)
    else:
        shutil.rmtree(root, ignore_errors=True)
        paths, _, seconds = run_steps(UPSTREAM, root / "shared", echo=True)
        (root / "shared" / "paths.json").write_text(json.dumps(paths))
    paths, results, method_seconds = run_steps(
        [s for m, e in methods.items() for s in (f"{m}_policy", e)], root / "methods", paths=paths, echo=True
    )
    seconds |= method_seconds
    metrics = {step: result.metrics for step, result in results.items()}

    # the registry, as the evaluation assets use it, in a scratch store
    import mlflow

    from rlhf_dag.pipeline.registry import CHAMPION, register_policy

    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    mlflow.set_experiment(
        experiment_id=mlflow.create_experiment("bench-methods", artifact_location=(root / "mlartifacts").as_uri())
    )
    registrations = {}
    for method, evaluation in methods.items():
        with mlflow.start_run(run_name=evaluation):
            decision = register_policy(
                "bench-policy",
                method,
                ArtifactHandle(f"{method}_policy", paths[f"{method}_policy"], ""),
                metrics[evaluation],
                resolve("gates"),
            )
        registrations[method] = decision
        print(f"  registered {method}: {decision['registry.seconds']} s, {decision['registry.why']}", flush=True)
    started = time.perf_counter()
    mlflow.transformers.load_model(f"models:/bench-policy@{CHAMPION}")
    load_seconds = time.perf_counter() - started

    from rlhf_dag.training.evaluate import method_table

    evaluations = {
        method: {
            "metrics": {**metrics[evaluation], f"{method}_train_seconds": metrics[f"{method}_policy"]["train_seconds"]},
            "tags": registrations[method],
        }
        for method, evaluation in methods.items()
    }
    table, rows = method_table(evaluations, reference="ppo")
    register = [float(r["registry.seconds"]) for r in registrations.values()]
    lines = [
        f"### bench/methods.py — PPO, DPO, GRPO, RLOO vs SFT on the same labels ({args.profile})",
        "",
        table,
        "",
        f"Registration (log the policy as an MLflow transformers model, register, decide the champion): "
        f"{min(register):.2f}-{max(register):.2f} s per model. Loading `models:/bench-policy@champion`: {load_seconds:.2f} s.",
        "",
        f"Machine: {machine_line(info)}",
    ]
    payload = {
        "profile": args.profile,
        "machine": info,
        "seconds": seconds,
        "rows": rows,
        "registration_seconds": register,
        "champion_load_seconds": load_seconds,
        "metrics": metrics,
    }
    save_results("methods", args.profile, payload, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
