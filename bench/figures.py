"""The README's run figures, regenerated: `make figures` runs `rlhf-dag run` (what `make run` calls) in an isolated
home and rewrites the block between the README's `figures:begin` and `figures:end` markers with the machine, the
figures and how much they vary between CPUs. At the `smollm2` profile (`make figures-real`) the block is
docs/smollm2.md's, with each step's seconds.

    python bench/figures.py [--profile default] [--readme README.md]
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from harness import CORE_STEPS, REPO, bench_parser, isolated_env, machine, machine_line, run_child, warn_if_busy

BEGIN = "<!-- figures:begin: written by `make figures` (bench/figures.py); edit that script, not this block -->"
END = "<!-- figures:end -->"
# Other profiles write a block of their own, in their own file.
BLOCKS = {
    "smollm2": (
        "<!-- figures:begin:smollm2: written by `make figures-real` (bench/figures.py); edit that script, not this block -->",
        "<!-- figures:end:smollm2 -->",
        "docs/smollm2.md",
    )
}

# Measured, not guessed: the same commit's default run on two CPUs (issue #14) and on other seeds (bench/quality.py).
VARIATION = """**Which figures vary, and by how much.** On one CPU a run is deterministic: two runs give the
same figures to the last digit. Across CPUs they are not (floating-point kernels differ): the same
commit's default run gave, on an AMD EPYC vs an Intel Xeon, PPO-vs-SFT win rate 0.641 vs 0.675,
PPO's KL to SFT 3.31 vs 1.80, RM accuracy 0.877 vs 0.890, and base_model 7011 vs 9584 tokens/s.
Expect the win rate to move by about ±0.05 between CPUs and seeds (`bench/results/quality.md`),
the RM accuracy by about ±0.02, KL by up to 2x; throughput and seconds follow the CPU. Counts
(parameters, records) never vary."""


def figure_lines(log: str) -> list[str]:
    """The per-asset figure lines `rlhf-dag run` ends with (`<asset>: name value, ...`)."""
    return [
        line
        for line in log.splitlines()
        if line.split(":", 1)[0] in CORE_STEPS
        and ": " in line
        and "step " not in line
        and "saved to" not in line
        and "profile '" not in line
    ]


def seconds_table(log: str) -> list[str]:
    """The table of seconds per asset and check that `rlhf-dag run` prints (`asset / check` ... `total`)."""
    lines = log.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("asset / check")), None)
    if start is None:
        return []
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("total"))
    return lines[start : end + 1]


def block(info: dict, profile: str, commit: str, wall: float, log: str, figures: list[str]) -> str:
    begin, end, _ = BLOCKS.get(profile, (BEGIN, END, None))
    command = "make figures-real" if profile in BLOCKS else "make figures"
    timing = ["", "```", *seconds_table(log), "```"] if profile in BLOCKS else []
    variation = (
        "One seed (0), one CPU: how much these figures vary between seeds and CPUs is not measured yet."
        if profile in BLOCKS
        else VARIATION
    )
    return "\n".join(
        [
            begin,
            f"Measured by `{command}` on {machine_line(info)}; profile `{profile}`, commit `{commit}`:",
            f"`rlhf-dag run` took {wall:.0f} s in all and printed {len(log.splitlines())} lines, ending with",
            "",
            "```",
            *figures,
            "```",
            *timing,
            "",
            variation,
            end,
        ]
    )


REAL_BEGIN, REAL_END = "<!-- real-model:begin -->", "<!-- real-model:end -->"
MODELS = (("base", "SmolLM2-135M-Instruct"), ("sft", "SFT"), ("ppo", "PPO"))


def real_model_block(home: Path, info: dict, commit: str, wall: float) -> str:
    """The README's lead: each of the source's four prompts before (the instruct model) and after RLHF (PPO), one real
    sample each (the evaluation's first, at its temperature), and the figures table, from the run's policy_evaluation
    and reward_model folders in `home`."""
    import json

    from rlhf_dag.data.gold import GoldJudge

    def latest(asset: str) -> Path:
        return max((home / "artifacts" / asset).glob("[!.]*"), key=lambda d: d.stat().st_mtime)

    evaluation = latest("policy_evaluation")
    metrics = json.loads((evaluation / "metrics.json").read_text())
    samples = json.loads((evaluation / "samples.json").read_text())
    reward = json.loads((latest("reward_model") / "step.json").read_text())["metrics"]
    judge, fence = GoldJudge(), "`" * 4  # a fence longer than any a response writes (code answers hold ```)
    lines = [
        REAL_BEGIN,
        "SmolLM2-135M-Instruct as shipped, and after RLHF on this project's labels (LoRA SFT, reward model, PPO), on "
        "the source's four prompts: one real sample of each, the gold labeler's verdict, and how often each model gets "
        "each prompt right.",
        "",
    ]
    for prompt in judge.source_prompts:
        lines += [f"**{prompt}**", ""]
        for name, title in (("base", "Before: SmolLM2-135M-Instruct"), ("ppo", "After: SFT + PPO (LoRA)")):
            s = next(x for x in samples[name] if x["prompt"] == prompt)
            verdict = "right" if judge.is_correct(prompt, s["response"]) else "wrong"
            lines += [f"{title} ({verdict} by the gold labeler):", "", fence + "text", s["response"].strip(), fence, ""]
    kinds = [judge.kind(p) for p in judge.source_prompts]
    rows = [
        "| | " + " | ".join(t for _, t in MODELS) + " |",
        "|---|" + "---:|" * len(MODELS),
        *(
            f"| {kind} prompt right (16 samples, T = 0.7) | "
            + " | ".join(f"{metrics.get(f'{m}_source_pass_{kind}', float('nan')):.2f}" for m, _ in MODELS)
            + " |"
            for kind in kinds
        ),
        "| gold mean on the held-out prompts | "
        + " | ".join(f"{metrics.get(f'{m}_gold_mean', float('nan')):.3f}" for m, _ in MODELS)
        + " |",
        f"| gold win rate vs SFT [95% CI] | | | {metrics['win_rate_ppo_vs_sft']:.3f} "
        f"[{metrics['win_rate_ppo_vs_sft_ci_low']:.3f}, {metrics['win_rate_ppo_vs_sft_ci_high']:.3f}] |",
        f"| gold win rate of SFT vs the instruct model | | {metrics['win_rate_sft_vs_base']:.3f} | |",
        f"| KL to SFT | | | {metrics['ppo_kl_to_sft']:.2f} |",
    ]
    per_kind = ", ".join(
        f"{k.removeprefix('validation_accuracy_')} {v:.3f} ({reward[k.replace('accuracy', 'pairs')]:.0f} pairs)"
        for k, v in reward.items()
        if k.startswith("validation_accuracy_")
    )
    lines += [
        *rows,
        "",
        f"The reward model's held-out accuracy: {reward['validation_accuracy']:.3f}"
        + (f" ({per_kind})" if per_kind else "")
        + ".",
        f"One seed (0), measured by `make figures-real` on {machine_line(info)}; commit `{commit}`; the core graph took "
        f"{wall / 60:.0f} min. The samples are each model's first answer in `policy_evaluation` (T = 1).",
        "",
        REAL_END,
    ]
    return "\n".join(lines)


def replace_block(text: str, new: str, where: str, profile: str = "default") -> str:
    begin, end, _ = BLOCKS.get(profile, (BEGIN, END, None))
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    if len(pattern.findall(text)) != 1:
        raise ValueError(f"{where}: expected one block between {begin!r} and {end!r}")
    return pattern.sub(lambda _: new, text)


def main() -> int:
    parser = bench_parser(__doc__)
    parser.add_argument(
        "--readme",
        default=None,
        help="the file whose figures block is rewritten (default: README.md; docs/smollm2.md at smollm2)",
    )
    args = parser.parse_args()
    info = machine()
    warn_if_busy(info)
    commit = (  # the code that runs: read before the run, which takes minutes (40 at smollm2)
        subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        or "unknown"
    )
    root, env = isolated_env("figures", args.profile)
    child = run_child([sys.executable, "-m", "rlhf_dag.cli", "run"], env, root / "run.log")
    log = child.log.read_text(errors="replace")
    figures = figure_lines(log)
    if not figures:
        raise RuntimeError(f"`rlhf-dag run` printed no figures; see {child.log}")
    new = block(info, args.profile, commit, child.wall_seconds, log, figures)
    readme = args.readme or str(REPO / BLOCKS.get(args.profile, (None, None, "README.md"))[2])
    with open(readme, encoding="utf-8") as f:
        text = f.read()
    with open(readme, "w", encoding="utf-8") as f:
        f.write(replace_block(text, new, readme, args.profile))
    print(new)
    print(f"\n(written to {readme})")
    if args.profile == "smollm2":  # the README leads with what RLHF did to the real model
        lead = real_model_block(root / "home", info, commit, child.wall_seconds)
        text = (REPO / "README.md").read_text(encoding="utf-8")
        pattern = re.compile(re.escape(REAL_BEGIN) + r".*?" + re.escape(REAL_END), re.DOTALL)
        if len(pattern.findall(text)) != 1:
            raise ValueError(f"README.md: expected one block between {REAL_BEGIN!r} and {REAL_END!r}")
        (REPO / "README.md").write_text(pattern.sub(lambda _: lead, text), encoding="utf-8")
        print(f"(and README.md's {REAL_BEGIN} block)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
