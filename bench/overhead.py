"""What Dagster costs: the graph's step functions called directly vs through Dagster, in-process and by the CLI.

    .venv/bin/python bench/overhead.py [--profile smoke,default]

Three ways to run the same work, each in a fresh process with its own isolated
home, per profile:

- direct: the step functions the assets run, by rlhf_dag/training/steps.py's
  `run_chain` in graph order with no Dagster and no MLflow, each result saved to
  a folder and handed on by path as the publisher hands it on;
- materialize: `observe_labels`, then `dagster.materialize(...)` of every asset
  and check, in-process (what `rlhf-dag run` and the tests do);
- cli: `dagster asset materialize -m rlhf_dag.definitions --select 'group:rlhf or group:alternatives'` (what CI runs).

The ratio orchestrated/direct is given after imports (the work) and for whole
processes (what a user waits for). The materialize run is instrumented to say
what the difference consists of: imports, label observation, event-log writes
(`DagsterInstance.handle_new_event`), MLflow calls (the import of mlflow
included), the IO manager (JSON handles), and the rest (run and step
orchestration).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import inspect
import sys
import time
from collections import defaultdict
from pathlib import Path

from harness import (
    bench_parser,
    isolated_env,
    machine,
    machine_line,
    markdown_table,
    run_child,
    run_steps,
    save_results,
    warn_if_busy,
    write_report,
)


class Timers:
    """Seconds and calls spent in wrapped functions, by label."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def wrap(self, owner, attr: str, label: str) -> None:
        original = inspect.getattr_static(owner, attr)
        func = original.__func__ if isinstance(original, staticmethod) else original

        @functools.wraps(func)
        def timed(*args, **kwargs):
            with self.clock(label):
                return func(*args, **kwargs)

        setattr(owner, attr, staticmethod(timed) if isinstance(original, staticmethod) else timed)

    def wrap_context(self, owner, attr: str, label: str) -> None:
        """Time a context manager's enter and exit (the body in between is someone else's)."""
        original = getattr(owner, attr)
        timers = self

        class Timed:
            def __init__(self, manager):
                self.manager = manager

            def __enter__(self):
                with timers.clock(label):
                    return self.manager.__enter__()

            def __exit__(self, *exc):
                with timers.clock(label):
                    return self.manager.__exit__(*exc)

        setattr(owner, attr, functools.wraps(original)(lambda *args, **kwargs: Timed(original(*args, **kwargs))))

    @contextlib.contextmanager
    def clock(self, label: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[label] += time.perf_counter() - started
            self.calls[label] += 1

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()


def direct_worker(report: str, work: Path) -> None:
    started = time.perf_counter()
    import rlhf_dag.training.steps  # noqa: F401  (how bench runs the steps the assets run, without dagster)

    imports = time.perf_counter() - started
    run_started = time.perf_counter()
    steps = direct_graph(work)
    write_report(report, {"imports_seconds": imports, "run_seconds": time.perf_counter() - run_started, "steps": steps})


def direct_graph(work: Path) -> dict[str, float]:
    """The graph's steps run in order by rlhf_dag.training.steps.run_chain, each result saved to a folder as the publisher
    saves it and handed on by path; seconds per step. The same functions the assets run, on the same inputs, minus
    Dagster and MLflow: every step of a training run (a labeling batch is made on purpose, never by one)."""
    from rlhf_dag import graph

    return run_steps([s for s in graph.names() if graph.step(s).group != "labeling"], work)[2]


def _timed(timers: Timers, function, label: str):
    @functools.wraps(function)
    def timed(*args, **kwargs):
        with timers.clock(label):
            return function(*args, **kwargs)

    return timed


def materialize_worker(report: str) -> None:
    started = time.perf_counter()
    import dagster as dg

    dagster_import = time.perf_counter() - started
    from rlhf_dag.definitions import TRAINING_GRAPH, defs
    from rlhf_dag.pipeline.handles import HandleIOManager

    imports = time.perf_counter() - started
    import rlhf_dag.training.steps as steps

    timers = Timers()
    timers.wrap(dg.DagsterInstance, "handle_new_event", "event log")
    timers.wrap(HandleIOManager, "handle_output", "IO manager")
    timers.wrap(HandleIOManager, "load_input", "IO manager")
    # the resource's run context: the mlflow import (first time), experiment lookup, params, end of run
    timers.wrap_context(type(defs.resources["mlflow"]), "start_run", "MLflow")
    for name in ("log_metrics", "log_result", "end_orphaned_runs"):
        timers.wrap(type(defs.resources["mlflow"]), name, "MLflow")
    # publish.py runs `steps.step_function(asset)(inputs, cfg)`: the functions it gets are timed
    step_function = steps.step_function
    steps.step_function = lambda name: _timed(timers, step_function(name), "step functions")

    instance = dg.DagsterInstance.get()
    t = time.perf_counter()
    defs.resolve_job_def("observe_labels").execute_in_process(instance=instance)
    observe = time.perf_counter() - t
    timers.reset()
    t = time.perf_counter()
    result = dg.materialize(
        [*defs.assets, *defs.asset_checks], instance=instance, resources=defs.resources, selection=TRAINING_GRAPH
    )
    run = time.perf_counter() - t
    steps = {e.step_key: e.event_specific_data.duration_ms / 1000 for e in result.get_step_success_events()}
    write_report(
        report,
        {
            "success": result.success,
            "imports_seconds": imports,
            "dagster_import_seconds": dagster_import,
            "observe_seconds": observe,
            "run_seconds": run,
            "steps": steps,
            "components": dict(timers.seconds),
            "calls": dict(timers.calls),
            "events": len(instance.get_records_for_run(result.run_id, limit=100000).records),
        },
    )


def cli_stats_worker(report: str) -> None:
    """The CLI's run as its instance recorded it: run start to end, so that the rest of its process time is start-up."""
    import dagster as dg

    instance = dg.DagsterInstance.get()
    run = instance.get_runs(limit=1)[0]
    stats = instance.get_run_stats(run.run_id)
    write_report(
        report,
        {
            "run_seconds": stats.end_time - stats.start_time,
            "status": str(run.status),
            "steps_succeeded": stats.steps_succeeded,
        },
    )


def measure(profile: str) -> dict:
    out: dict = {}
    for mode in ("direct", "materialize", "cli"):
        root, env = isolated_env(f"overhead-{mode}", profile)
        report = root / "report.json"
        if mode == "cli":
            dagster = str(Path(sys.executable).parent / "dagster")
            child = run_child(
                [
                    dagster,
                    "asset",
                    "materialize",
                    "-m",
                    "rlhf_dag.definitions",
                    "--select",
                    "group:rlhf or group:alternatives",
                ],
                env,
                root / "run.log",
            )
            stats = run_child(
                [sys.executable, __file__, "--worker", "cli-stats", "--report", str(report)],
                env,
                root / "stats.log",
                report,
            )
            out[mode] = {"process_wall_seconds": child.wall_seconds, "peak_rss_mb": child.peak_rss_mb, **stats.report}
        else:
            cmd = [sys.executable, __file__, "--worker", mode, "--report", str(report), "--work", str(root / "direct")]
            child = run_child(cmd, env, root / "run.log", report)
            out[mode] = {"process_wall_seconds": child.wall_seconds, "peak_rss_mb": child.peak_rss_mb, **child.report}
        print(f"  {profile} {mode}: {child.wall_seconds:.1f}s", flush=True)
    direct, mat, cli = out["direct"], out["materialize"], out["cli"]
    work_direct = direct["run_seconds"]
    work_orchestrated = mat["observe_seconds"] + mat["run_seconds"]
    parts = {
        "imports (dagster + definitions over the training modules)": mat["imports_seconds"] - direct["imports_seconds"],
        "label observation (observe_labels job)": mat["observe_seconds"],
        f"event log ({mat['calls'].get('event log', 0)} events written)": mat["components"].get("event log", 0.0),
        "MLflow (import, runs, params, metrics, artifacts)": mat["components"].get("MLflow", 0.0),
        "IO manager (JSON handles)": mat["components"].get("IO manager", 0.0),
    }
    measured = sum(parts.values()) - parts["imports (dagster + definitions over the training modules)"]
    parts["rest (run and step orchestration, checks, asset-body extras; difference of two runs)"] = (
        work_orchestrated - work_direct - measured
    )
    out["summary"] = {
        "direct_seconds": work_direct,
        "materialize_seconds": work_orchestrated,
        "ratio_materialize_over_direct": work_orchestrated / work_direct,
        "ratio_materialize_process_over_direct_process": mat["process_wall_seconds"] / direct["process_wall_seconds"],
        "ratio_cli_process_over_direct_process": cli["process_wall_seconds"] / direct["process_wall_seconds"],
        "step_functions_inside_dagster_seconds": mat["components"].get("step functions", 0.0),
        "overhead_parts_seconds": parts,
    }
    return out


def main() -> int:
    parser = bench_parser(__doc__, default_profile="smoke,default")
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        Path(args.work or ".").mkdir(parents=True, exist_ok=True)
        {
            "direct": lambda: direct_worker(args.report, Path(args.work)),
            "materialize": lambda: materialize_worker(args.report),
            "cli-stats": lambda: cli_stats_worker(args.report),
        }[args.worker]()
        return 0

    profiles = list(dict.fromkeys(args.profile.split(",")))  # `make bench` asks for smoke,$(BENCH_PROFILE)
    info = machine()
    warn_if_busy(info)
    print(
        f"bench/overhead.py: profiles {', '.join(profiles)}; direct, in-process materialize and CLI, one process each",
        flush=True,
    )
    results = {p: measure(p) for p in profiles}
    rows, parts_rows = [], []
    for p, r in results.items():
        s = r["summary"]
        rows.append(
            [
                p,
                "direct (step functions)",
                r["direct"]["imports_seconds"],
                s["direct_seconds"],
                r["direct"]["process_wall_seconds"],
                r["direct"]["peak_rss_mb"],
                1.0,
                1.0,
            ]
        )
        rows.append(
            [
                p,
                "dg.materialize in-process",
                r["materialize"]["imports_seconds"],
                s["materialize_seconds"],
                r["materialize"]["process_wall_seconds"],
                r["materialize"]["peak_rss_mb"],
                s["ratio_materialize_over_direct"],
                s["ratio_materialize_process_over_direct_process"],
            ]
        )
        rows.append(
            [
                p,
                "dagster asset materialize (CLI)",
                None,
                r["cli"]["run_seconds"],
                r["cli"]["process_wall_seconds"],
                r["cli"]["peak_rss_mb"],
                None,
                s["ratio_cli_process_over_direct_process"],
            ]
        )
        parts_rows += [
            [p, part, seconds, seconds / s["direct_seconds"]] for part, seconds in s["overhead_parts_seconds"].items()
        ]
    lines = [
        "### bench/overhead.py — Dagster orchestration vs calling the step functions directly",
        "",
        markdown_table(
            [
                "profile",
                "how",
                "imports s",
                "work s (after imports)",
                "process wall s",
                "peak RSS MB",
                "ratio (work)",
                "ratio (process)",
            ],
            rows,
        ),
        "",
        "Target: ratio (work) ≤ 1.10 at `default`. The CLI's work is its run as the instance recorded it (run start to end).",
        "",
        "#### What the difference consists of (materialize run, instrumented)",
        "",
        markdown_table(["profile", "part", "seconds", "share of direct work"], parts_rows),
        "",
        f"Machine: {machine_line(info)}",
    ]
    stem_profile = "default" if "default" in profiles else profiles[0]
    save_results(
        "overhead", stem_profile, {"profiles": profiles, "machine": info, "results": results}, "\n".join(lines)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
