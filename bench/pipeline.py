"""The whole graph, one asset per process: wall time, peak RSS and training throughput of every step.

    .venv/bin/python bench/pipeline.py [--profile default]

Each asset is materialized in dependency order in a fresh process, the way
`rlhf-dag run --select <asset>` does it (observe the label files, then run the
asset and its checks) against one persistent, isolated Dagster instance, so the
peak RSS of a process is that asset's (plus the imports every process pays).
Tokens/s is the tokens the trainer fed the model (padding excluded, every
epoch) over the trainer's own `train_runtime`.

Writes bench/results/pipeline.json and .md (pipeline-<profile>.* for other
profiles) and keeps the run in bench/results/tmp/pipeline-<profile>/, whose
models bench/ppo.py reuses.
"""

from __future__ import annotations

import sys
import time

from harness import (
    CORE_STEPS,
    bench_parser,
    current_rss_mb,
    isolated_env,
    machine,
    machine_line,
    markdown_table,
    peak_rss_mb,
    run_child,
    save_results,
    warn_if_busy,
    write_report,
)

THROUGHPUT_ASSETS = ("base_model", "sft_model", "reward_model")


def worker(asset: str, report: str) -> None:
    """Materialize one asset (and its checks) into the persistent instance; report what Dagster timed."""
    started = time.perf_counter()
    import dagster as dg

    from rlhf_dag.definitions import defs

    imports = time.perf_counter() - started
    rss_after_imports = current_rss_mb()
    instance = dg.DagsterInstance.get()
    run_started = time.perf_counter()
    defs.resolve_job_def("observe_labels").execute_in_process(instance=instance)
    result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance, asset_selection=[dg.AssetKey(asset)], raise_on_error=False
    )
    run_seconds = time.perf_counter() - run_started
    steps = {e.step_key: e.event_specific_data.duration_ms / 1000 for e in result.get_step_success_events()}
    handle = result.output_for_node(asset) if result.success else None
    write_report(
        report,
        {
            "success": result.success,
            "imports_seconds": imports,
            "run_seconds": run_seconds,
            "steps": steps,
            "metrics": {k: v for k, v in (handle.metrics if handle else {}).items() if isinstance(v, (int, float))},
            "rss_after_imports_mb": rss_after_imports,
            "peak_rss_mb": peak_rss_mb(),
        },
    )


def main() -> int:
    args = bench_parser(__doc__).parse_args()
    if args.worker:
        worker(args.worker, args.report)
        return 0

    info = machine()
    warn_if_busy(info)
    root, env = isolated_env("pipeline", args.profile)
    print(f"bench/pipeline.py: profile '{args.profile}', one process per asset, run in {root}", flush=True)
    rows, assets = [], {}
    for asset in CORE_STEPS:
        child = run_child(
            [sys.executable, __file__, "--worker", asset, "--report", str(root / f"{asset}.json")],
            env,
            root / "logs" / f"{asset}.log",
            root / f"{asset}.json",
        )
        report = child.report
        if not report.get("success"):
            raise RuntimeError(f"{asset} failed; last lines of {child.log}:\n{child.tail()}")
        metrics = report["metrics"]
        tokens = metrics.get("train_tokens")
        tokens_per_second = tokens / metrics["train_runtime"] if tokens and metrics.get("train_runtime") else None
        checks = sum(s for k, s in report["steps"].items() if k != asset)
        assets[asset] = {
            "step_seconds": report["steps"].get(asset),
            "check_seconds": checks,
            "run_seconds": report["run_seconds"],
            "process_wall_seconds": child.wall_seconds,
            "imports_seconds": report["imports_seconds"],
            "peak_rss_mb": child.peak_rss_mb,
            "rss_after_imports_mb": report["rss_after_imports_mb"],
            "train_tokens": tokens,
            "train_runtime_seconds": metrics.get("train_runtime"),
            "tokens_per_second": tokens_per_second,
            "train_seconds": metrics.get("train_seconds"),
        }
        a = assets[asset]
        rows.append(
            [
                asset,
                a["step_seconds"],
                checks,
                a["process_wall_seconds"],
                a["imports_seconds"],
                a["peak_rss_mb"],
                a["peak_rss_mb"] - a["rss_after_imports_mb"],
                tokens,
                tokens_per_second,
            ]
        )
        print(
            f"  {asset}: {a['step_seconds']:.1f}s in its step, {child.wall_seconds:.1f}s in its process, peak RSS {child.peak_rss_mb:.0f} MB",
            flush=True,
        )
    total_steps = sum(a["step_seconds"] + a["check_seconds"] for a in assets.values())
    total_wall = sum(a["process_wall_seconds"] for a in assets.values())
    rows.append(
        [
            "**total**",
            sum(a["step_seconds"] for a in assets.values()),
            sum(a["check_seconds"] for a in assets.values()),
            total_wall,
            sum(a["imports_seconds"] for a in assets.values()),
            max(a["peak_rss_mb"] for a in assets.values()),
            None,
            None,
            None,
        ]
    )
    table = "\n".join(
        [
            f"### bench/pipeline.py — profile `{args.profile}`",
            "",
            markdown_table(
                [
                    "asset",
                    "step s",
                    "checks s",
                    "process wall s",
                    "imports s",
                    "peak RSS MB",
                    "RSS over imports MB",
                    "train tokens",
                    "train tokens/s",
                ],
                rows,
            ),
            "",
            f"Steps and checks: {total_steps:.1f} s; one process per asset adds {total_wall - total_steps:.1f} s of imports, label observation and start-up.",
            f"Machine: {machine_line(info)}",
        ]
    )
    save_results(
        "pipeline",
        args.profile,
        {
            "profile": args.profile,
            "machine": info,
            "assets": assets,
            "total_step_and_check_seconds": total_steps,
            "total_process_wall_seconds": total_wall,
        },
        table,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
