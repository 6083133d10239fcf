"""Quality across seeds: one SFT model and reward model, then PPO + evaluation for several PPO seeds.

    .venv/bin/python bench/quality.py [--profile default] [--seeds 0,1,2] [--reuse]

Runs the graph's own steps (rlhf_dag/training/steps.py `run_chain`) on the shipped
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

from harness import SCRATCH, bench_parser, machine, machine_line, markdown_table, run_steps, save_results, warn_if_busy

from rlhf_dag import graph

# the steps PPO trains from, run once for every seed: corpus -> base -> SFT, comparisons -> RM
UPSTREAM = [step for step in graph.names() if step in graph.upstream_steps("ppo_policy")]
PPO = ("ppo_policy", "policy_evaluation")  # then, per seed: PPOConfig.seed and EvalConfig.seed


def main() -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--seeds", default="0,1,2", help="PPO and evaluation seeds (comma-separated)")
    parser.add_argument("--reuse", action="store_true", help="reuse the SFT model and RM of the previous run")
    args = parser.parse_args()
    os.environ["RLHF_DAG_PROFILE"] = args.profile
    from rlhf_dag.config import resolve

    info = machine()
    warn_if_busy(info)
    root = SCRATCH / f"quality-{args.profile}"
    if args.reuse:
        paths = json.loads((root / "shared" / "paths.json").read_text())
        upstream_metrics = json.loads((root / "shared" / "metrics.json").read_text())
        seconds = {}
    else:
        shutil.rmtree(root, ignore_errors=True)
        paths, results, seconds = run_steps(UPSTREAM, root / "shared", echo=True)
        upstream_metrics = {step: result.metrics for step, result in results.items()}
        (root / "shared" / "metrics.json").write_text(json.dumps(upstream_metrics))
        (root / "shared" / "paths.json").write_text(json.dumps(paths))

    per_seed = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        work = root / f"seed-{seed}"
        shutil.rmtree(work, ignore_errors=True)
        _, results, secs = run_steps(PPO, work, dict.fromkeys(PPO, {"seed": seed}), paths)
        ppo, ev = results["ppo_policy"].metrics, results["policy_evaluation"].metrics
        ppo_seconds, eval_seconds = secs["ppo_policy"], secs["policy_evaluation"]
        per_seed.append(
            {"seed": seed, "ppo": ppo, "evaluation": ev, "ppo_seconds": ppo_seconds, "evaluation_seconds": eval_seconds}
        )
        print(
            f"  seed {seed}: PPO vs SFT {ev['win_rate_ppo_vs_sft']:.3f} [{ev['win_rate_ppo_vs_sft_ci_low']:.3f}, {ev['win_rate_ppo_vs_sft_ci_high']:.3f}] "
            f"({ppo_seconds:.0f}s PPO)",
            flush=True,
        )

    win_rates = [s["evaluation"]["win_rate_ppo_vs_sft"] for s in per_seed]
    mean = sum(win_rates) / len(win_rates)
    gates = resolve("gates")
    rows = [
        [
            s["seed"],
            s["evaluation"]["win_rate_ppo_vs_sft"],
            f"[{s['evaluation']['win_rate_ppo_vs_sft_ci_low']:.3f}, {s['evaluation']['win_rate_ppo_vs_sft_ci_high']:.3f}]",
            s["evaluation"]["sft_gold_mean"],
            s["evaluation"]["ppo_gold_mean"],
            s["ppo"]["final_kl"],
            s["evaluation"]["ppo_eos_rate"],
            " / ".join(f"{s['evaluation'][f'ppo_source_pass_{k}']:.2f}" for k in ("story", "email", "math", "code")),
            " / ".join(
                f"{s['evaluation'].get(f'win_rate_ppo_vs_sft_{k}', float('nan')):.2f}"
                for k in ("story", "email", "math", "code")
            ),
            s["ppo_seconds"],
        ]
        for s in per_seed
    ]
    sft_pass = " / ".join(
        f"{per_seed[0]['evaluation'][f'{m}_source_pass_{k}']:.2f}"
        for m in ("base", "sft")
        for k in ("story", "email", "math", "code")
    )
    rm_accuracy = upstream_metrics["reward_model"]["validation_accuracy"]
    rm_by_kind = ", ".join(
        f"{k} {upstream_metrics['reward_model'][f'validation_accuracy_{k}']:.3f} ({upstream_metrics['reward_model'][f'validation_pairs_{k}']} pairs)"
        for k in ("story", "email", "math", "code", "other")
        if f"validation_accuracy_{k}" in upstream_metrics["reward_model"]
    )
    lines = [
        f"### bench/quality.py — PPO vs SFT across seeds ({args.profile})",
        "",
        markdown_table(
            [
                "seed",
                "PPO vs SFT win rate",
                "95% interval",
                "SFT gold",
                "PPO gold",
                "KL to SFT",
                "EOS rate",
                "PPO pass story/email/math/code",
                "win rate by kind story/email/math/code",
                "PPO s",
            ],
            rows,
        ),
        "",
        f"Mean win rate {mean:.3f} (target ≥ 0.70, each ≥ 0.65). RM held-out accuracy {rm_accuracy:.3f} (target ≥ 0.85). "
        f"KL budget {gates.kl_budget}, EOS floor {gates.eos_rate_floor}.",
        f"RM held-out accuracy by task kind: {rm_by_kind or 'not recorded'}.",
        f"Source prompts' pass rates (16 samples at T=0.7): base then SFT, story/email/math/code: {sft_pass}.",
        "",
        f"Machine: {machine_line(info)}",
    ]
    payload = {
        "profile": args.profile,
        "machine": info,
        "win_rates": win_rates,
        "mean": mean,
        "reward_model_accuracy": rm_accuracy,
        "upstream_seconds": seconds,
        "upstream_metrics": upstream_metrics,
        "seeds": per_seed,
    }
    save_results("quality", args.profile, payload, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
