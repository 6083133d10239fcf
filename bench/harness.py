"""What every benchmark script shares: an isolated run folder, timed child processes, the machine, the results.

Each script runs every measured thing in a child process of its own, so that one
measurement's imports, caches and peak memory never leak into the next: the
child's wall time and peak RSS come from `os.wait4`, what it measured inside
itself from a JSON file it writes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
SCRATCH = RESULTS / "tmp"  # gitignored: isolated RLHF_DAG_HOMEs, kept after a run for inspection and reuse


def __getattr__(name: str):
    """`CORE_STEPS`: the core graph (the PPO path, the `rlhf` group of rlhf_dag/graph.py) in dependency order, what the
    graph benchmarks time. The other methods (DPO, GRPO, RLOO) have their own bench (bench/methods.py);
    labeling_candidates is partitioned, per batch. Read when first asked for, so that importing harness needs
    nothing but the standard library (bench/trl_reference.py imports it in TRL 1.12's venv, without rlhf_dag)."""
    if name == "CORE_STEPS":
        from rlhf_dag import graph

        return tuple(graph.names("rlhf"))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def run_steps(
    steps: list[str],
    root: Path,
    configs: dict[str, dict] | None = None,
    paths: dict[str, str] | None = None,
    echo: bool = False,
) -> tuple[dict[str, str], dict, dict[str, float]]:
    """rlhf_dag.training.steps.run_chain (labels from RLHF_DAG_LABELS_DIR, each step saved to `<root>/<step>/`), called
    one step at a time to time each, its save included, and with `echo` print it. Returns (paths, results, seconds)."""
    from rlhf_dag.config import labels_dir
    from rlhf_dag.training.steps import run_chain

    results, seconds = {}, {}
    for step in steps:
        started = time.perf_counter()
        paths, ran = run_chain([step], labels_dir(), root, configs, paths)
        results[step], seconds[step] = ran[step], time.perf_counter() - started
        if echo:
            print(f"  {step}: {seconds[step]:.1f}s", flush=True)
    return paths, results, seconds


def bench_parser(doc: str, default_profile: str = "default") -> argparse.ArgumentParser:
    """The options every benchmark takes: --profile, and --worker/--report, which it passes to its own child processes."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument(
        "--profile",
        default=default_profile,
        help=f"size profile(s), comma-separated where the script compares several (default: {default_profile})",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--report", help=argparse.SUPPRESS)
    return parser


def isolated_env(name: str, profile: str) -> tuple[Path, dict]:
    """A fresh `bench/results/tmp/<name>-<profile>/` with home/, dagster/ and a copy of the profile's labels in labels/,
    and its environment.

    As in tests/conftest.py and .ci/run: RLHF_DAG_HOME, DAGSTER_HOME and the labels point into the folder,
    so a benchmark never touches the user's `.rlhf_dag/` or `assets/`.
    """
    from rlhf_dag.config import PROFILE_LABELS

    root = SCRATCH / f"{name}-{profile}"
    shutil.rmtree(root, ignore_errors=True)
    # the profile's own labels (assets/smollm2/ at smollm2), else assets/ without the other profiles' folders
    own = [Path(folder).name for folder in PROFILE_LABELS.values()]
    shutil.copytree(REPO / PROFILE_LABELS.get(profile, "assets"), root / "labels", ignore=shutil.ignore_patterns(*own))
    (root / "dagster").mkdir(parents=True)
    # Dagster's defaults, without its warning about a missing file or its telemetry banner (as `rlhf-dag` writes it)
    (root / "dagster" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {
        **os.environ,
        "RLHF_DAG_HOME": str(root / "home"),
        "DAGSTER_HOME": str(root / "dagster"),
        "RLHF_DAG_LABELS_DIR": str(root / "labels"),
        "RLHF_DAG_PROFILE": profile,
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    return root, env


@dataclass
class Child:
    """A finished child process: its wall time, peak resident memory and what it wrote."""

    wall_seconds: float
    peak_rss_mb: float
    returncode: int
    log: Path
    report: dict

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def run_child(cmd: list[str], env: dict, log: Path, report: Path | None = None, check: bool = True) -> Child:
    """Run `cmd` to completion with its output in `log`; wall time, peak RSS (ru_maxrss of this child alone) and its JSON report."""
    log.parent.mkdir(parents=True, exist_ok=True)
    if report is not None:
        report.unlink(missing_ok=True)
    with open(log, "w") as out:
        started = time.perf_counter()
        process = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    child = Child(
        wall,
        usage.ru_maxrss / 1024,
        process.returncode,
        log,
        json.loads(report.read_text()) if report is not None and report.is_file() else {},
    )
    if check and child.returncode != 0:
        raise RuntimeError(
            f"{' '.join(map(str, cmd))} exited with {child.returncode}; last lines of {log}:\n{child.tail()}"
        )
    return child


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def response_stats(responses, eos_id: int, pad_id: int) -> dict:
    """A rollout's responses [B, R]: width, positions decoded, tokens up to and including the first EOS, share that emitted EOS."""
    is_eos = responses == eos_id
    before_eos = (is_eos.cumsum(1) - is_eos.long()) == 0
    return {
        "response_width": responses.shape[1],
        "generated_positions": responses.numel(),
        "response_tokens": int((before_eos & (responses != pad_id)).sum()),
        "eos_rate": float(is_eos.any(1).float().mean()),
    }


def write_report(path: str | Path, report: dict) -> None:
    """What a worker hands back to the script that started it."""
    Path(path).write_text(json.dumps(report, indent=1, default=str))


def machine() -> dict:
    """The machine a figure was measured on, and how busy it was when the script started."""
    import torch

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory_kb = next(
        int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")
    )
    return {
        "cpu": cpu,
        "cores_usable": len(os.sched_getaffinity(0)),
        "memory_gib": round(memory_kb / 2**20, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": os.getloadavg()[0],
        "cpu_busy_share": cpu_busy_share(),
    }


def cpu_busy_share(seconds: float = 1.0) -> float:
    """Share of all cores busy over `seconds` while this script sleeps: other work, now.

    The 1-minute load average also counts the previous benchmark's own processes
    for a minute after they end, so it cannot tell a quiet machine from a busy one
    between scripts.
    """

    def times():
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    total0, idle0 = times()
    time.sleep(seconds)
    total1, idle1 = times()
    return 1.0 - (idle1 - idle0) / max(1, total1 - total0)


def warn_if_busy(info: dict) -> None:
    """Other work on the 2 cores makes every timing here meaningless: say so next to the figures."""
    if info["cpu_busy_share"] > 0.25:
        print(
            f"WARNING: {info['cpu_busy_share']:.0%} of the CPU was busy with other work before the benchmark started, "
            "so these timings are not trustworthy",
            file=sys.stderr,
        )


def results_stem(name: str, profile: str) -> Path:
    """`bench/results/<name>` for the default profile, `<name>-<profile>` for the others (smoke runs never overwrite the reference)."""
    return RESULTS / (name if profile == "default" else f"{name}-{profile}")


def save_results(name: str, profile: str, payload: dict, table: str) -> None:
    """Write `<stem>.json` and `<stem>.md`, and print the table."""
    stem = results_stem(name, profile)
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=1, default=str))
    stem.with_suffix(".md").write_text(table + "\n")
    print(table)
    print(f"\n(written to {stem.relative_to(REPO)}.json and .md)")


def markdown_table(headers: list[str], rows: list[list]) -> str:
    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
        return "" if value is None else str(value)

    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---:" if i else "---" for i in range(len(headers))) + "|",
    ]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_line(info: dict) -> str:
    return (
        f"{info['cpu']}, {info['cores_usable']} cores usable, {info['memory_gib']} GiB; Python {info['python']}, "
        f"torch {info['torch']} ({info['torch_threads']} threads); CPU busy with other work at start {info.get('cpu_busy_share', float('nan')):.0%}"
    )
