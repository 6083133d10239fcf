"""The `gpu` profile on one GPU: per-step time, tokens/s, peak GPU memory and an MFU estimate; torchrun:1 vs one process.

    python bench/gpu.py [--profile gpu] [--torchrun-step sft_model]

Runs the graph's own step functions (rlhf_dag/training/steps.py, no Dagster, no
MLflow) on the shipped labels in dependency order, each step in a child process
of its own started from a spec file, as a launcher starts it, so that a step's
peak GPU memory is its own. Then runs one step again under `torchrun
--nproc_per_node 1` from the same spec and inputs: the launcher's cost and the
final loss beside the plain process's.

Tokens/s is the tokens a TRL trainer fed the model (padding excluded, every
epoch) over its own `train_runtime`. MFU is an estimate: 6 N training FLOPs per
token (N parameters; the attention scores, 6 L d T, add under 2% at these widths
and lengths) times tokens/s, over the GPU's dense bf16 peak. Writes
bench/results/gpu.json and .md.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time

from harness import (
    CORE_STEPS,
    SCRATCH,
    bench_parser,
    machine,
    machine_line,
    markdown_table,
    run_child,
    save_results,
    write_report,
)

# Dense bf16 tensor-core peak (no sparsity), from the vendors' data sheets.
PEAK_BF16_FLOPS = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12, "L40S": 362e12}
TRAINERS = ("base_model", "sft_model", "reward_model")


def worker(spec: str, report: str) -> None:
    """Run one step from its spec (as `python -m rlhf_dag.training.steps --spec` does) and report what the GPU saw."""
    import logging

    import torch

    from rlhf_dag.training.steps import run_spec

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(message)s"
    )  # the steps' progress lines, in the child's log

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    output, result = run_spec(spec)
    seconds = time.perf_counter() - started
    if os.environ.get("RANK", "0") != "0":
        return
    model = result.model
    config = getattr(model, "config", None)
    write_report(
        report,
        {
            "seconds": seconds,
            "read_path": str(output / result.main_file) if result.main_file else str(output),
            "metrics": {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))},
            "parameters": sum(p.numel() for p in model.parameters()) if model is not None else None,
            "attention": getattr(config, "_attn_implementation", None),
            "dtype": "bf16 autocast" if result.step in TRAINERS and cuda and torch.cuda.is_bf16_supported() else "fp32",
            "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
            "device": torch.cuda.get_device_name() if cuda else "cpu",
        },
    )


def mfu(report: dict, peak: float | None) -> float | None:
    metrics = report["metrics"]
    if not peak or not report["parameters"] or not metrics.get("train_tokens") or not metrics.get("train_runtime"):
        return None
    return 6 * report["parameters"] * metrics["train_tokens"] / metrics["train_runtime"] / peak


def main() -> int:
    parser = bench_parser(__doc__, default_profile="gpu")
    parser.add_argument("--spec", help=__import__("argparse").SUPPRESS)
    parser.add_argument(
        "--torchrun-step", default="sft_model", help="the step run again under torchrun --nproc_per_node 1 ('' to skip)"
    )
    args = parser.parse_args()
    if args.worker:
        worker(args.spec, args.report)
        return 0

    os.environ["RLHF_DAG_PROFILE"] = args.profile
    from rlhf_dag import graph
    from rlhf_dag.config import labels_dir, resolve
    from rlhf_dag.data.label_files import label_file

    info = machine()
    root = SCRATCH / f"gpu-{args.profile}"
    shutil.rmtree(root, ignore_errors=True)
    env = {**os.environ, "RLHF_DAG_HOME": str(root / "home"), "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    paths = {name: str(label_file(labels_dir(), name)) for name in graph.LABEL_FILES}
    reports: dict[str, dict] = {}

    def launch(step: str, tag: str, launcher: list[str]) -> dict:
        spec = root / "specs" / f"{tag}.json"
        spec.parent.mkdir(parents=True, exist_ok=True)
        spec.write_text(
            json.dumps(
                {
                    "step": step,
                    "inputs": {n: paths[n] for n in graph.step(step).inputs},
                    "config": {},
                    "output": str(root / "out" / tag),
                }
            )
        )
        report = root / "reports" / f"{tag}.json"
        report.parent.mkdir(parents=True, exist_ok=True)
        child = run_child(
            [*launcher, __file__, "--worker", step, "--spec", str(spec), "--report", str(report)],
            env,
            root / "logs" / f"{tag}.log",
            report,
        )
        child.report["wall_seconds"] = child.wall_seconds
        print(f"  {tag}: {child.wall_seconds:.1f} s wall, {child.report['seconds']:.1f} s in the step", flush=True)
        return child.report

    print(f"bench/gpu.py: profile '{args.profile}', one child process per step, run in {root}", flush=True)
    for step in CORE_STEPS:
        reports[step] = launch(step, step, [sys.executable])
        paths[step] = reports[step]["read_path"]
        (root / "partial.json").write_text(json.dumps(reports, indent=1))
    if args.torchrun_step:
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--standalone"]
        reports[f"{args.torchrun_step}@torchrun:1"] = launch(
            args.torchrun_step, f"{args.torchrun_step}-torchrun1", torchrun
        )

    ppo = resolve("ppo_policy")
    device = next((r["device"] for r in reports.values() if r.get("device")), "cpu")
    peak = next((flops for name, flops in PEAK_BF16_FLOPS.items() if name in device), None)
    rows = []
    for name, r in reports.items():
        m = r["metrics"]
        tokens_per_second = (
            m["train_tokens"] / m["train_runtime"] if m.get("train_tokens") and m.get("train_runtime") else None
        )
        utilization = mfu(r, peak) if name.split("@")[0] in TRAINERS else None
        loss = next(
            (
                m[k]
                for k in (
                    "final_loss",
                    "validation_loss",
                    "validation_accuracy",
                    "final_rm_score",
                    "win_rate_ppo_vs_sft",
                )
                if k in m
            ),
            None,
        )
        rows.append(
            [
                name,
                r["wall_seconds"],
                r["seconds"],
                m.get("train_seconds"),
                tokens_per_second,
                r.get("peak_gpu_memory_gib"),
                f"{100 * utilization:.1f}%" if utilization is not None else "—",
                r.get("parameters"),
                loss,
            ]
        )
    lines = [
        f"### bench/gpu.py — the `{args.profile}` profile on {device}",
        "",
        markdown_table(
            [
                "step",
                "wall s",
                "step s",
                "train s",
                "tokens/s",
                "peak GPU GiB",
                "MFU (est.)",
                "parameters",
                "headline figure",
            ],
            rows,
        ),
        "",
        "Headline figure: held-out loss (base, SFT, RM), PPO final RM score, evaluation PPO-vs-SFT gold win rate.",
        f"Precision: TRL trainers {reports['sft_model']['dtype']}, PPO fp32; attention: "
        f"{next((r['attention'] for r in reports.values() if r.get('attention')), '?')}. PPO: {ppo.iterations} iterations of {ppo.rollout_batch_size} rollouts, "
        f"{reports['ppo_policy']['metrics']['train_seconds'] / ppo.iterations:.2f} s per iteration.",
        "",
        f"Machine: {machine_line(info)}",
    ]
    save_results(
        "gpu",
        "default",
        {"profile": args.profile, "machine": info, "device": device, "steps": reports},
        "\n".join(lines),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
