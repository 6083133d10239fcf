"""LoRA vs full fine-tune on the same model: trainable parameters, peak RSS and time of SFT, the reward model and PPO.

    .venv/bin/python bench/lora.py [--hidden-size 512 --layers 8]

The model is a Llama of the `gpu` profile's shape (about 29M parameters at the
defaults), brought as `base_model.pretrained`: its weights are untrained, which
changes no parameter count or memory figure. Each step runs twice, full and
with `lora` (r 8, alpha 16, every linear layer), each in a child process of its
own (`python -m rlhf_dag.training.steps --spec`, what a launcher runs), from the
same upstream models: the reward models and both PPO runs start from the full
SFT model (and PPO from the full reward model). Steps are cut short (a fraction
of an epoch, two PPO iterations, small validation splits): memory peaks in the
first optimizer steps. Peak RSS is the child's whole process, imports (about
0.5 GB) included.

Each child runs twice: with glibc's malloc as it comes, and with its mmap
threshold fixed (`MALLOC_MMAP_THRESHOLD_=131072`). By default glibc raises that
threshold as large blocks are freed, and then keeps freed activations in its
heap: peak RSS follows how many large temporaries a forward pass makes (LoRA's
`base(x) + B(A(x))` makes more), not only what autograd holds. With the threshold
fixed, freed blocks go back to the system and peak RSS tracks the memory in use.

Writes bench/results/lora.json and .md; keeps the run in bench/results/tmp/lora-<profile>/.
"""

from __future__ import annotations

import json
import sys
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
)

from rlhf_dag import graph

LORA = {"r": 8, "alpha": 16.0, "target_modules": ["all-linear"]}
ALLOCATORS = {"glibc": {}, "fixed_mmap_threshold": {"MALLOC_MMAP_THRESHOLD_": "131072"}}
# Short runs: the same number of optimizer steps for both variants, past the first one (where Adam allocates its state).
STEP_CONFIG = {
    "sft_model": {"epochs": 0.1, "gold_sample_prompts": 8, "sample_max_new_tokens": 16},
    "reward_model": {"epochs": 0.05},
    "ppo_policy": {
        "iterations": 2,
        "rollout_batch_size": 16,
        "minibatch_size": 8,
        "ppo_epochs": 1,
        "max_new_tokens": 16,
        "sample_max_new_tokens": 16,
    },
}


def launch(root: Path, env: dict, step: str, paths: dict, config: dict, name: str):
    """One step in a child process from a spec file, its inputs (graph.py) from `paths`; returns the child (wall,
    peak RSS), the step's metrics and the path downstream steps read."""
    spec = root / "specs" / f"{name}.json"
    spec.parent.mkdir(parents=True, exist_ok=True)
    output = root / "out" / name
    inputs = {n: paths[n] for n in graph.step(step).inputs}
    spec.write_text(json.dumps({"step": step, "inputs": inputs, "config": config, "output": str(output)}))
    child = run_child(
        [sys.executable, "-m", "rlhf_dag.training.steps", "--spec", str(spec)], env, root / "logs" / f"{name}.log"
    )
    summary = json.loads((output / "step.json").read_text())
    return child, summary["metrics"], str(output / summary["main_file"]) if summary["main_file"] else str(output)


def untrained_model(folder: Path, corpus: str, hidden_size: int, layers: int) -> str:
    """A Llama of the asked shape with a BPE tokenizer trained on the corpus, saved as a user's checkpoint."""
    import pandas as pd

    from rlhf_dag.config import resolve
    from rlhf_dag.training.pretrain import build_model, train_tokenizer

    cfg = resolve(
        "base_model",
        {
            "hidden_size": hidden_size,
            "num_layers": layers,
            "num_heads": max(1, hidden_size // 64),
            "intermediate_size": 3 * hidden_size,
            "vocab_size": 4096,
            "max_length": 160,
        },
        profile="default",
    )
    tokenizer = train_tokenizer(list(pd.read_parquet(corpus)["text"]), cfg.vocab_size)
    build_model(cfg, tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def main() -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--hidden-size", type=int, default=512, help="model width (default: the gpu profile's 512)")
    parser.add_argument("--layers", type=int, default=8, help="transformer blocks (default: the gpu profile's 8)")
    args = parser.parse_args()
    info = machine()
    warn_if_busy(info)
    root, env = isolated_env("lora", args.profile)
    from rlhf_dag.data.label_files import label_file

    paths = {name: str(label_file(env["RLHF_DAG_LABELS_DIR"], name)) for name in graph.LABEL_FILES}
    small_validation = {"validation_fraction": 0.03}  # each step evaluates its validation split several times
    for step, config in (
        ("pretraining_corpus", {"n_documents": 2000}),
        ("sft_dataset", small_validation),
        ("comparison_dataset", small_validation),
    ):
        paths[step] = launch(root, env, step, paths, config, step)[2]
    checkpoint = untrained_model(root / "checkpoint", paths["pretraining_corpus"], args.hidden_size, args.layers)
    paths["base_model"] = launch(root, env, "base_model", paths, {"pretrained": checkpoint}, "base_model")[2]

    rows, figures = [], {}
    for step in STEP_CONFIG:  # sft_model, reward_model, ppo_policy: each from the full fine-tune of the step before
        for variant, extra in (("full", {}), ("lora", {"lora": LORA})):
            f = figures[f"{step}/{variant}"] = {}
            for allocator, allocator_env in ALLOCATORS.items():
                child, metrics, path = launch(
                    root,
                    {**env, **allocator_env},
                    step,
                    paths,
                    {**STEP_CONFIG[step], **extra},
                    f"{step}-{variant}-{allocator}",
                )
                if variant == "full" and allocator == "glibc":
                    paths[step] = path
                f.update(trainable_parameters=metrics["trainable_parameters"], parameters=metrics["parameters"])
                f[f"peak_rss_mb_{allocator}"], f[f"wall_seconds_{allocator}"] = child.peak_rss_mb, child.wall_seconds
            print(f"{step} {variant}: {f}", flush=True)
        full, lora = figures[f"{step}/full"], figures[f"{step}/lora"]
        for variant, f in (("full", full), ("lora", lora)):
            rows.append(
                [
                    step,
                    variant,
                    f"{f['trainable_parameters']:,}",
                    f"{f['parameters']:,}",
                    f"{f['trainable_parameters'] / f['parameters']:.1%}",
                    *(round(f[f"peak_rss_mb_{a}"]) for a in ALLOCATORS),
                    f["wall_seconds_glibc"],
                ]
            )
        rows.append(
            [
                step,
                "lora / full",
                "",
                "",
                f"{lora['trainable_parameters'] / full['trainable_parameters']:.3f}",
                *(f"{lora[f'peak_rss_mb_{a}'] / full[f'peak_rss_mb_{a}']:.2f}" for a in ALLOCATORS),
                f"{lora['wall_seconds_glibc'] / full['wall_seconds_glibc']:.2f}",
            ]
        )
    table = "\n".join(
        [
            f"LoRA (r {LORA['r']}, alpha {LORA['alpha']:g}, all linear layers) vs full fine-tune on a {args.layers}-layer, {args.hidden_size}-wide Llama "
            f"brought as `base_model.pretrained`; one child process per row. {machine_line(info)}.",
            "",
            markdown_table(
                [
                    "step",
                    "variant",
                    "trainable parameters",
                    "parameters",
                    "trainable share",
                    "peak RSS (MB), glibc as it comes",
                    "peak RSS (MB), MALLOC_MMAP_THRESHOLD_=131072",
                    "wall (s)",
                ],
                rows,
            ),
            "",
            "PPO's parameters are the policy's and the critic's (which trains whole); with LoRA there is no reference copy of the policy.",
        ]
    )
    save_results(
        "lora",
        args.profile,
        {"machine": info, "lora": LORA, "hidden_size": args.hidden_size, "layers": args.layers, "figures": figures},
        table,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
