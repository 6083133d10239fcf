"""Quality across seeds: one SFT model and reward model, then PPO + evaluation for several PPO seeds.

    .venv/bin/python bench/quality.py [--profile default] [--seeds 0,1,2] [--reuse]

Runs the graph's own step functions (rlhf_dag/training/steps.py) on the shipped
labels: corpus -> base -> SFT, comparisons -> RM once, then for each seed
ppo_policy (PPOConfig.seed) and policy_evaluation (EvalConfig.seed, so the
held-out prompts are sampled afresh too). Prints each seed's PPO-vs-SFT gold
win rate with its 95% interval, the mean, RM accuracy, KL, EOS rate and the
source prompts' pass rates, and writes `bench/results/quality.json` with a
`win_rates` list (one per seed) and `mean`. `--reuse` keeps the SFT model and
RM of the previous run (bench/results/tmp/quality-<profile>/) and reruns the seeds.

Targets at `default` (DESIGN.md, issue 13): mean >= 0.70, every seed >= 0.65,
RM held-out accuracy >= 0.85, KL within budget, EOS rate >= 0.9.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

from harness import SCRATCH, bench_parser, machine, machine_line, markdown_table, save_results, warn_if_busy

UPSTREAM = ("pretraining_corpus", "base_model", "sft_dataset", "sft_model", "comparison_dataset", "reward_model")


def run(step: str, inputs: dict[str, str], work: Path, overrides: dict | None = None) -> tuple[str, dict, float]:
    """Run one step function, save its result under `work/<step>`; return (path downstream reads, metrics, seconds)."""
    from rlhf_dag.config import resolve
    from rlhf_dag.training.steps import STEPS

    started = time.perf_counter()
    result = STEPS[step](inputs, resolve(step, overrides))
    folder = work / step
    folder.mkdir(parents=True)
    result.save(folder)
    path = str(folder / result.main_file) if result.main_file else str(folder)
    (work / f"{step}.path").write_text(path)
    return path, result.metrics, time.perf_counter() - started


def main() -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--seeds", default="0,1,2", help="PPO and evaluation seeds (comma-separated)")
    parser.add_argument("--reuse", action="store_true", help="reuse the SFT model and RM of the previous run")
    args = parser.parse_args()
    os.environ["RLHF_DAG_PROFILE"] = args.profile
    from rlhf_dag.config import labels_dir, resolve
    from rlhf_dag.data.labels import LABEL_FILES, label_file
    from rlhf_dag.training.steps import STEP_INPUTS

    info = machine()
    warn_if_busy(info)
    root = SCRATCH / f"quality-{args.profile}"
    labels = {name: str(label_file(labels_dir(), name)) for name in LABEL_FILES}
    paths, upstream_metrics, seconds = dict(labels), {}, {}
    if args.reuse:
        paths.update({step: (root / "shared" / f"{step}.path").read_text() for step in UPSTREAM})
        upstream_metrics = json.loads((root / "shared" / "metrics.json").read_text())
    else:
        shutil.rmtree(root, ignore_errors=True)
        for step in UPSTREAM:
            paths[step], upstream_metrics[step], seconds[step] = run(step, {n: paths[n] for n in STEP_INPUTS[step]}, root / "shared")
            print(f"  {step}: {seconds[step]:.1f}s", flush=True)
        (root / "shared" / "metrics.json").write_text(json.dumps(upstream_metrics))

    per_seed = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        work = root / f"seed-{seed}"
        shutil.rmtree(work, ignore_errors=True)
        paths["ppo_policy"], ppo, ppo_seconds = run("ppo_policy", {n: paths[n] for n in STEP_INPUTS["ppo_policy"]}, work, {"seed": seed})
        _, ev, eval_seconds = run("policy_evaluation", {n: paths[n] for n in STEP_INPUTS["policy_evaluation"]}, work, {"seed": seed})
        per_seed.append({"seed": seed, "ppo": ppo, "evaluation": ev, "ppo_seconds": ppo_seconds, "evaluation_seconds": eval_seconds})
        print(f"  seed {seed}: PPO vs SFT {ev['win_rate_ppo_vs_sft']:.3f} [{ev['win_rate_ppo_vs_sft_ci_low']:.3f}, {ev['win_rate_ppo_vs_sft_ci_high']:.3f}] "
              f"({ppo_seconds:.0f}s PPO)", flush=True)

    win_rates = [s["evaluation"]["win_rate_ppo_vs_sft"] for s in per_seed]
    mean = sum(win_rates) / len(win_rates)
    gates = resolve("gates")
    rows = [[s["seed"], s["evaluation"]["win_rate_ppo_vs_sft"], f"[{s['evaluation']['win_rate_ppo_vs_sft_ci_low']:.3f}, {s['evaluation']['win_rate_ppo_vs_sft_ci_high']:.3f}]",
             s["evaluation"]["sft_gold_mean"], s["evaluation"]["ppo_gold_mean"], s["ppo"]["final_kl"], s["evaluation"]["ppo_eos_rate"],
             " / ".join(f"{s['evaluation'][f'ppo_source_pass_{k}']:.2f}" for k in ("story", "email", "math", "code")),
             " / ".join(f"{s['evaluation'].get(f'win_rate_ppo_vs_sft_{k}', float('nan')):.2f}" for k in ("story", "email", "math", "code")), s["ppo_seconds"]] for s in per_seed]
    sft_pass = " / ".join(f"{per_seed[0]['evaluation'][f'{m}_source_pass_{k}']:.2f}" for m in ("base", "sft") for k in ("story", "email", "math", "code"))
    rm_accuracy = upstream_metrics["reward_model"]["validation_accuracy"]
    rm_by_kind = ", ".join(f"{k} {upstream_metrics['reward_model'][f'validation_accuracy_{k}']:.3f} ({upstream_metrics['reward_model'][f'validation_pairs_{k}']} pairs)"
                           for k in ("story", "email", "math", "code", "other") if f"validation_accuracy_{k}" in upstream_metrics["reward_model"])
    lines = [
        f"### bench/quality.py — PPO vs SFT across seeds ({args.profile})",
        "",
        markdown_table(["seed", "PPO vs SFT win rate", "95% interval", "SFT gold", "PPO gold", "KL to SFT", "EOS rate", "PPO pass story/email/math/code", "win rate by kind story/email/math/code", "PPO s"], rows),
        "",
        f"Mean win rate {mean:.3f} (target ≥ 0.70, each ≥ 0.65). RM held-out accuracy {rm_accuracy:.3f} (target ≥ 0.85). "
        f"KL budget {gates.kl_budget}, EOS floor {gates.eos_rate_floor}.",
        f"RM held-out accuracy by task kind: {rm_by_kind or 'not recorded'}.",
        f"Source prompts' pass rates (16 samples at T=0.7): base then SFT, story/email/math/code: {sft_pass}.",
        "",
        f"Machine: {machine_line(info)}",
    ]
    payload = {"profile": args.profile, "machine": info, "win_rates": win_rates, "mean": mean, "reward_model_accuracy": rm_accuracy,
               "upstream_seconds": seconds, "upstream_metrics": upstream_metrics, "seeds": per_seed}
    save_results("quality", args.profile, payload, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
