"""The test suite's own figures: how many tests each loop runs, how long each loop takes, and the mutation table.

Runs, one after the other on a quiet machine: the fast loop (`make test`: every test not marked slow), the whole
suite in a random order (what `.ci/run` runs), and `make mutants`, then rewrites the figures block and the
mutation table of docs/testing.md and writes bench/results/testing.json. About 40 minutes on the 2-core box.

    .venv/bin/python bench/testing.py
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

from harness import REPO, RESULTS, machine, machine_line

DOCS = REPO / "docs" / "testing.md"
START, END = "<!-- figures: start (written by `bench/testing.py`) -->", "<!-- figures: end -->"


def collected(*marker: str) -> int:
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", *marker], cwd=REPO, capture_output=True, text=True
    ).stdout
    return int(re.search(r"(\d+)(?:/\d+)? tests? (?:collected|selected)", out)[1])


def timed(command: list[str], env: dict | None = None) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env={**os.environ, **(env or {})})
    seconds = time.perf_counter() - started
    tail = (done.stdout + done.stderr).strip().splitlines()
    if done.returncode != 0:
        print("\n".join(tail[-40:]))
        sys.exit(f"{' '.join(command)} exited {done.returncode}")
    return seconds, tail[-1] if tail else ""


def main() -> int:
    total, fast = collected(), collected("-m", "not slow")
    print(f"tests: {total} ({fast} in the fast loop, {total - fast} marked slow)", flush=True)
    fast_seconds, fast_summary = timed(["make", "--no-print-directory", "test"])
    print(f"make test: {fast_seconds:.0f} s ({fast_summary})", flush=True)
    seed = 4242
    all_seconds, all_summary = timed(
        [
            "make",
            "--no-print-directory",
            "test-all",
            f"PYTEST_ARGS=--random-order-bucket=global --random-order-seed={seed}",
        ],
        {"CI": "true"},
    )
    print(f"make test-all: {all_seconds:.0f} s ({all_summary})", flush=True)
    mutants_seconds, mutants_summary = timed(["make", "--no-print-directory", "mutants", "MUTANTS_ARGS=--docs"])
    print(f"make mutants: {mutants_seconds:.0f} s ({mutants_summary})", flush=True)

    figures = {
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "tests": total,
        "fast_loop_tests": fast,
        "slow_tests": total - fast,
        "make_test_seconds": round(fast_seconds),
        "make_test_all_seconds": round(all_seconds),
        "random_order_seed": seed,
        "make_mutants_seconds": round(mutants_seconds),
        "mutants": mutants_summary,
    }
    (RESULTS / "testing.json").write_text(json.dumps(figures, indent=2) + "\n")
    block = "\n".join(
        [
            START,
            "",
            f"Measured by `.venv/bin/python bench/testing.py` on {figures['date']} ({machine_line(figures['machine'])}).",
            "",
            "| loop | command | tests | wall time |",
            "|---|---|---|---|",
            f"| fast | `make test` | {fast} (not marked slow) | {fast_seconds / 60:.1f} min |",
            f"| everything, random order (seed {seed}) | `make test-all` (CI) | {total} | {all_seconds / 60:.1f} min |",
            f"| deliberate breakages | `make mutants` (CI) | {mutants_summary} | {mutants_seconds / 60:.1f} min |",
            "",
            END,
        ]
    )
    text = DOCS.read_text(encoding="utf-8")
    DOCS.write_text(text[: text.index(START)] + block + text[text.index(END) + len(END) :], encoding="utf-8")
    print(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
