"""Resume after SIGKILL: how far a resumed run's model is from an uninterrupted one's, for every trained step.

    .venv/bin/python bench/resume.py [--profile default] [--steps base_model,sft_model,reward_model,ppo_policy]

Each trained step runs three times from its spec (`python -m rlhf_dag.training.steps`,
as a launcher starts it), on the same upstream folders, at the profile's own
`checkpoint_every`: uninterrupted; killed with SIGKILL at the first checkpoint
past half of its training; and again, which resumes from that checkpoint. The
uninterrupted run's folder is the upstream of the next step. Reported: the
largest weight difference between the resumed and the uninterrupted model, the
difference of their final losses, where the resumed run picked up and what the
resume saved in wall time.

Writes bench/results/resume.json and .md (resume-<profile>.* for other profiles).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from harness import (
    REPO,
    bench_parser,
    isolated_env,
    machine,
    machine_line,
    markdown_table,
    run_child,
    save_results,
    warn_if_busy,
)

from rlhf_dag import graph

TRAINED = tuple(
    s for s in graph.names("rlhf") if graph.step(s).launched
)  # base_model, sft_model, reward_model, ppo_policy
# the figures compared, per step: the final losses (PPO: its reward and KL)
FINAL = {
    "base_model": ("final_loss", "training_loss"),
    "sft_model": ("validation_loss", "training_loss"),
    "reward_model": ("validation_loss", "training_loss"),
    "ppo_policy": ("final_rm_score", "final_kl"),
}


def spec(root: Path, step: str, inputs: dict, config: dict, name: str) -> tuple[list[str], Path]:
    out = root / "runs" / f"{step}-{name}"
    path = out.with_suffix(".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"step": step, "inputs": inputs, "config": config, "output": str(out)}))
    return [sys.executable, "-m", "rlhf_dag.training.steps", "--spec", str(path)], out


def saved(folder: Path) -> list[int]:
    """The complete checkpoints in `folder`: PPO's `iteration-<n>.pt`, the trainers' `checkpoint-<n>` with their state written."""
    return sorted(
        [int(p.stem.split("-")[1]) for p in folder.glob("iteration-*.pt")]
        + [int(p.parent.name.split("-")[1]) for p in folder.glob("checkpoint-*/trainer_state.json")]
    )


def kill_past_half(cmd: list[str], env: dict, log: Path, folder: Path) -> tuple[int, float]:
    """Start `cmd`, SIGKILL it at its first checkpoint past half of training; (that checkpoint, seconds it had run)."""
    with open(log, "w") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        while True:
            total = re.findall(r"(?:step|iteration) \d+/(\d+)", log.read_text(errors="replace"))
            past = [k for k in saved(folder) if total and k >= int(total[-1]) / 2]
            if past:
                break
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd} ended before a checkpoint past half of training; see {log}")
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return saved(folder)[-1], time.perf_counter() - started


def max_weight_difference(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    worst = 0.0
    for weights in sorted(a.rglob("*.safetensors")):
        ours, theirs = load_file(weights), load_file(b / weights.relative_to(a))
        worst = max([worst, *((ours[k].float() - theirs[k].float()).abs().max().item() for k in ours)])
    return worst


def main() -> int:
    parser = bench_parser(__doc__)
    parser.add_argument(
        "--steps",
        default=",".join(TRAINED),
        help="the trained steps to kill and resume, comma-separated (their upstream steps run once)",
    )
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        help="every trained step's checkpoint_every (default: the profile's; smoke runs too few steps for it)",
    )
    args = parser.parse_args()
    steps = args.steps.split(",")
    config = {"checkpoint_every": args.checkpoint_every} if args.checkpoint_every else {}
    info = machine()
    warn_if_busy(info)
    root, env = isolated_env("resume", args.profile)
    os.environ.update({k: env[k] for k in ("RLHF_DAG_HOME", "RLHF_DAG_LABELS_DIR", "RLHF_DAG_PROFILE")})
    from rlhf_dag.config import checkpoints_dir, resolve
    from rlhf_dag.data.label_files import label_file
    from rlhf_dag.training.result import StepResult
    from rlhf_dag.training.resume import checkpoint_key

    print(f"bench/resume.py: profile '{args.profile}', steps {', '.join(steps)}, run in {root}", flush=True)
    upstream, results, rows = {}, {}, []
    # the steps asked for and those they read, in dependency order
    for step in [s for s in graph.names() if s in steps or any(s in graph.upstream_steps(t) for t in steps)]:
        inputs = {
            name: upstream.get(name) or str(label_file(root / "labels", name)) for name in graph.step(step).inputs
        }
        cmd, out = spec(root, step, inputs, config if step in steps else {}, "uninterrupted")
        full = run_child(cmd, env, out.with_suffix(".log"))
        saved_result = StepResult.load(out)
        upstream[step] = str(out / saved_result.main_file) if saved_result.main_file else str(out)
        if step not in steps:
            continue
        folder = checkpoints_dir() / step / checkpoint_key(step, inputs, resolve(step, config))
        cmd, killed_out = spec(root, step, inputs, config, "killed")
        k, killed_after = kill_past_half(cmd, env, killed_out.with_suffix(".log"), folder)
        cmd, resumed_out = spec(root, step, inputs, config, "resumed")
        resumed = run_child(cmd, env, resumed_out.with_suffix(".log"))
        resumed_result = StepResult.load(resumed_out)
        figures = {name: (saved_result.metrics[name], resumed_result.metrics[name]) for name in FINAL[step]}
        results[step] = {
            "checkpoint_every": resolve(step, config).checkpoint_every,
            "killed_after_seconds": killed_after,
            "resumed_from": k,
            "resumed_from_reported": resumed_result.metrics.get(
                "resumed_from_iteration", resumed_result.metrics.get("resumed_from_step")
            ),
            "uninterrupted_wall_seconds": full.wall_seconds,
            "resumed_wall_seconds": resumed.wall_seconds,
            "max_weight_difference": max_weight_difference(out, resumed_out),
            "figures": figures,
            "checkpoints_left": folder.exists(),
        }
        r = results[step]
        rows.append(
            [
                step,
                r["checkpoint_every"],
                k,
                r["killed_after_seconds"],
                r["uninterrupted_wall_seconds"],
                r["resumed_wall_seconds"],
                f"{r['max_weight_difference']:.3g}",
                *(f"{name} {a:.6g} vs {b:.6g} (Δ {abs(a - b):.3g})" for name, (a, b) in figures.items()),
            ]
        )
        print(f"  {step}: resumed from {k}, max weight difference {r['max_weight_difference']:.3g}", flush=True)
    table = "\n".join(
        [
            f"### bench/resume.py — profile `{args.profile}`",
            "",
            markdown_table(
                [
                    "step",
                    "checkpoint every",
                    "resumed from",
                    "killed after s",
                    "uninterrupted wall s",
                    "resumed wall s",
                    "max weight Δ",
                    "final figure",
                    "second figure",
                ],
                rows,
            ),
            "",
            "Each run is one process (imports included). Killed at the first checkpoint past half of training; resumed from it.",
            f"Machine: {machine_line(info)}",
        ]
    )
    save_results(
        "resume", args.profile, {"profile": args.profile, "config": config, "machine": info, "steps": results}, table
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
