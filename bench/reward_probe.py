"""What a reward model can tell apart: its accuracy per kind of pair, on fresh pairs for the held-out prompts.

    .venv/bin/python bench/reward_probe.py [--profile default] [--reward-model DIR ...] [--per-style 3]

The RM's held-out accuracy is one mean over whatever pairs the comparisons file
happens to hold in its validation split. This probe asks narrower questions.
For each held-out evaluation prompt (`eval_prompts.jsonl`, never in any training
file) it writes `--per-style` fresh pairs of every synthetic pair style of
`data/synthetic_labels.py` (ideal vs mediocre, ideal vs confused, ...), ranks each
pair with the gold labeler as the shipped comparisons were ranked, and reports
the share the RM ranks the same way, per pair style and, for
`ideal vs confused` (a fluent answer about the wrong hero, relative, sum or
condition), per task kind.

With no `--reward-model` it probes the RM of the last `bench/quality.py` run
(bench/results/tmp/quality-<profile>/shared). Writes bench/results/reward_probe.json and .md.
"""

from __future__ import annotations

import collections
import json
import os
import random
import sys
from pathlib import Path

from harness import REPO, SCRATCH, bench_parser, machine, machine_line, markdown_table, save_results


def probe_pairs(prompts: list[str], per_style: int, seed: int = 5) -> list[tuple[str, str, str, str, str]]:
    """(kind, style, prompt, chosen, rejected) for every pair style and prompt, ranked by the gold labeler; ties dropped."""
    from rlhf_dag.data.domain import RESPONSE_STYLES, parse_task
    from rlhf_dag.data.synthetic_labels import PAIR_STYLES, gold_ranked

    rng, pairs = random.Random(seed), []
    for prompt in prompts:
        task = parse_task(prompt)
        for (better, worse), _ in PAIR_STYLES:
            for _ in range(per_style):
                ranked = gold_ranked(prompt, RESPONSE_STYLES[better](task, rng), RESPONSE_STYLES[worse](task, rng))
                if ranked:
                    pairs.append((task.kind, f"{better} vs {worse}", prompt, *ranked))
    return pairs


def main() -> int:
    parser = bench_parser(__doc__)
    parser.add_argument(
        "--reward-model", nargs="*", help="reward model dirs (default: the last bench/quality.py run's)"
    )
    parser.add_argument("--per-style", type=int, default=3, help="pairs of each style per held-out prompt")
    args = parser.parse_args()
    os.environ["RLHF_DAG_PROFILE"] = args.profile
    from rlhf_dag.config import labels_dir
    from rlhf_dag.data.domain import KINDS, parse_task
    from rlhf_dag.data.label_files import label_file, load_labels
    from rlhf_dag.training.models import load_reward_model
    from rlhf_dag.training.reward import score_texts

    models = args.reward_model or [
        json.loads((SCRATCH / f"quality-{args.profile}" / "shared" / "paths.json").read_text())["reward_model"]
    ]
    prompts = [
        r["prompt"]
        for r in load_labels(str(label_file(labels_dir(), "eval_prompts")), "eval_prompts").records
        if parse_task(r["prompt"])
    ]
    pairs = probe_pairs(prompts, args.per_style)
    styles = list(dict.fromkeys(p[1] for p in pairs))
    results, rows = {}, []
    for path in models:
        model, tokenizer = load_reward_model(path)
        chosen = score_texts(model, tokenizer, [p[2] for p in pairs], [p[3] for p in pairs])
        rejected = score_texts(model, tokenizer, [p[2] for p in pairs], [p[4] for p in pairs])
        right = collections.defaultdict(list)
        for (kind, style, *_), c, r in zip(pairs, chosen, rejected, strict=True):
            for key in ("all", style, f"{style}|{kind}"):
                right[key].append(c > r)
        accuracy = {key: sum(v) / len(v) for key, v in right.items()}
        name = (
            os.path.relpath(path, REPO)
            if Path(path).resolve().is_relative_to(REPO)
            else "/".join(Path(path).parts[-2:])
        )  # no machine paths in results
        results[name] = accuracy
        rows.append(
            [
                name,
                accuracy["all"],
                *(accuracy[s] for s in styles),
                " / ".join(f"{accuracy.get(f'ideal vs confused|{k}', float('nan')):.2f}" for k in KINDS),
            ]
        )
        print(f"  {name}: all {accuracy['all']:.3f}", flush=True)
    lines = [
        f"### bench/reward_probe.py — RM accuracy by pair style on fresh pairs for the {len(prompts)} held-out prompts ({args.profile})",
        "",
        markdown_table(["reward model", "all", *styles, "ideal vs confused by kind " + "/".join(KINDS)], rows),
        "",
        f"{len(pairs)} pairs ({args.per_style} per style and prompt, gold-ranked, ties dropped). Machine: {machine_line(machine())}",
    ]
    save_results(
        "reward_probe",
        args.profile,
        {"profile": args.profile, "pairs": len(pairs), "accuracy": results},
        "\n".join(lines),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
