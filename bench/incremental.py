"""Retrain only what changed: a full run, a re-run after editing comparisons.jsonl, and a re-run with nothing changed.

    .venv/bin/python bench/incremental.py [--profile default]

One isolated instance, three `rlhf-dag retrain`s in a row, each in a fresh
process as a user would type them: on an empty instance (everything is
missing, so everything is built), after appending one ranked pair to the
labels' comparisons.jsonl (exactly comparison_dataset, reward_model,
ppo_policy and policy_evaluation must be rebuilt), and with nothing changed
(nothing must be built, in seconds). The last is also timed as the literal
`rlhf-dag retrain` command.

Targets: the edit re-run takes at most 1.10 x the time those four assets (and
their checks) took in the full run; the no-op run materializes nothing.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from harness import (
    bench_parser,
    isolated_env,
    machine,
    machine_line,
    markdown_table,
    run_child,
    save_results,
    warn_if_busy,
    write_report,
)

from rlhf_dag import graph

# what an edit of comparisons.jsonl makes stale in the core graph: comparison_dataset, reward_model, ppo_policy, policy_evaluation
EDITED = {step for step in graph.names("rlhf") if "comparisons" in graph.upstream_labels(step)}
NEW_PAIR = {
    "id": "bench-incremental-pair",
    "prompt": "What is 1 + 1?",
    "chosen": "1 + 1 = 2.",
    "rejected": "1 + 1 = 3.",
}


def worker(report: str) -> None:
    """`rlhf-dag retrain` in-process, reporting the plan, what was materialized and each step's time."""
    started = time.perf_counter()
    import dagster as dg

    from rlhf_dag.definitions import defs
    from rlhf_dag.pipeline.lineage import retrain

    imports = time.perf_counter() - started
    t = time.perf_counter()
    plan, result = retrain(defs, dg.DagsterInstance.get())
    seconds = time.perf_counter() - t
    steps = (
        {e.step_key: e.event_specific_data.duration_ms / 1000 for e in result.get_step_success_events()}
        if result
        else {}
    )
    materialized = (
        sorted(
            e.event_specific_data.materialization.asset_key.to_user_string()
            for e in result.get_asset_materialization_events()
        )
        if result
        else []
    )
    write_report(
        report,
        {
            "success": result is None or result.success,
            "imports_seconds": imports,
            "retrain_seconds": seconds,
            "plan": plan,
            "materialized": materialized,
            "steps": steps,
        },
    )


def main() -> int:
    args = bench_parser(__doc__).parse_args()
    if args.worker:
        worker(args.report)
        return 0

    info = machine()
    warn_if_busy(info)
    root, env = isolated_env("incremental", args.profile)
    print(f"bench/incremental.py: profile '{args.profile}', instance in {root}", flush=True)
    runs = {}

    def retrain(name: str) -> dict:
        report = root / f"{len(runs)}.json"
        child = run_child(
            [sys.executable, __file__, "--worker", "retrain", "--report", str(report)],
            env,
            root / f"{len(runs)}.log",
            report,
        )
        if not child.report.get("success"):
            raise RuntimeError(f"{name}: the retrain failed; last lines of {child.log}:\n{child.tail()}")
        runs[name] = {"process_wall_seconds": child.wall_seconds, "peak_rss_mb": child.peak_rss_mb, **child.report}
        print(
            f"  {name}: materialized {len(child.report['materialized'])} assets in {child.wall_seconds:.1f}s",
            flush=True,
        )
        return runs[name]

    full = retrain("full run (empty instance)")
    comparisons = Path(env["RLHF_DAG_LABELS_DIR"]) / "comparisons.jsonl"
    comparisons.write_bytes(comparisons.read_bytes() + (json.dumps(NEW_PAIR) + "\n").encode())
    edit = retrain("after editing comparisons.jsonl")
    noop = retrain("nothing changed")
    cli = run_child([str(Path(sys.executable).parent / "rlhf-dag"), "retrain"], env, root / "cli-noop.log")
    runs["nothing changed, `rlhf-dag retrain` command"] = {
        "process_wall_seconds": cli.wall_seconds,
        "peak_rss_mb": cli.peak_rss_mb,
        "materialized": [],
        "output": cli.tail(3),
    }

    # the four assets' own time in the full run, their checks included
    own = sum(s for k, s in full["steps"].items() if any(k == a or k.startswith(a + "_") for a in EDITED))
    summary = {
        "edit_materialized_exactly_downstream": set(edit["materialized"]) == EDITED,
        "edit_retrain_seconds": edit["retrain_seconds"],
        "edited_assets_own_seconds_in_full_run": own,
        "ratio_edit_over_own": edit["retrain_seconds"] / own,
        "noop_materialized": noop["materialized"],
        "noop_process_wall_seconds": noop["process_wall_seconds"],
        "cli_noop_says": cli.tail(1),
    }
    rows = [
        [
            name,
            len(r["materialized"]),
            ", ".join(r["materialized"])
            if 0 < len(r["materialized"]) < 8
            else ("all" if r["materialized"] else "nothing"),
            r.get("retrain_seconds"),
            sum(r.get("steps", {}).values()) or None,
            r["process_wall_seconds"],
            r["peak_rss_mb"],
        ]
        for name, r in runs.items()
    ]
    lines = [
        f"### bench/incremental.py — profile `{args.profile}`",
        "",
        markdown_table(
            ["run", "assets", "which", "retrain s (after imports)", "steps s", "process wall s", "peak RSS MB"], rows
        ),
        "",
        f"- Edit re-run rebuilt exactly the four downstream assets: **{'yes' if summary['edit_materialized_exactly_downstream'] else 'NO: ' + ', '.join(edit['materialized'])}**",
        f"- Edit re-run / those assets' own time in the full run: {edit['retrain_seconds']:.1f} s / {own:.1f} s = **{summary['ratio_edit_over_own']:.2f}** (target ≤ 1.10)",
        f"- No-op run materialized {'nothing' if not noop['materialized'] else ', '.join(noop['materialized'])}, "
        f'in {noop["process_wall_seconds"]:.1f} s for the whole process ({noop["retrain_seconds"]:.1f} s after imports); the CLI said: "{summary["cli_noop_says"]}"',
        f"Machine: {machine_line(info)}",
    ]
    save_results(
        "incremental",
        args.profile,
        {"profile": args.profile, "machine": info, "runs": runs, "summary": summary},
        "\n".join(lines),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
