"""Our PPO against TRL 1.12's PPOTrainer at matched settings, and our sampling against plain `model.generate`.

    .venv/bin/python bench/ppo.py [--profile default] [--iterations 5] [--rounds 3] [--skip-sampling] [--ablation]

Both implementations start from the same SFT model (policy and reference) and
the same reward model (reward and critic), with the profile's rollout batch,
minibatch, PPO epochs, response length and temperature, for the same number of
iterations, each in a process of its own, in `--rounds` rounds (default 3) that
alternate which one runs first: each figure is the median over rounds, the
ratio the median of the rounds' ratios (the shared host's speed drifts). The models come from
bench/results/tmp/pipeline-<profile>/ when bench/pipeline.py left them there,
else this script trains them first (`rlhf-dag run --select '*reward_model'`).

The reference runs in bench/.venv-trl112, which this script creates on first
use: torch 2.13.0 (the CPU wheel) first, then trl 1.12.* with the same
transformers, accelerate and datasets as .venv, so that both run the same Llama
and the same `generate`. If it cannot be installed or fails, the script says
why and still prints our figures.

Per iteration: rollout generation, scoring (log-probs of policy and reference,
values, reward, advantages), optimization (ppo_epochs passes over minibatches),
their wall times, rollout tokens/s (response tokens up to and including EOS over
generation time), optimizer samples/s (rollout_batch_size x ppo_epochs over
optimization time) and peak RSS. The first iteration is reported apart (warm-up).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from harness import (
    BENCH,
    REPO,
    SCRATCH,
    bench_parser,
    current_rss_mb,
    isolated_env,
    machine,
    machine_line,
    markdown_table,
    peak_rss_mb,
    response_stats,
    run_child,
    save_results,
    warn_if_busy,
    write_report,
)

REFERENCE_VENV = BENCH / ".venv-trl112"
REFERENCE_TRL = "trl==1.12.*"


def reference_requirements() -> list[str]:
    """TRL 1.12 on the same transformers/accelerate/datasets as ours: the comparison is of the PPO loops, not of two Llamas."""
    return [REFERENCE_TRL] + [f"{p}=={metadata.version(p)}" for p in ("transformers", "accelerate", "datasets", "peft")]


def reference_python() -> tuple[Path | None, str]:
    """bench/.venv-trl112/bin/python, created on first use; (None, why) when it cannot be made."""
    python = REFERENCE_VENV / "bin" / "python"
    stamp = REFERENCE_VENV / ".installed"
    wanted = " ".join(["torch==2.13.0", *reference_requirements()])
    if stamp.is_file() and stamp.read_text() == wanted:
        return python, "ready"
    print(
        f"bench/ppo.py: creating {REFERENCE_VENV.relative_to(BENCH.parent)} ({wanted}); this takes a few minutes once",
        flush=True,
    )
    log = SCRATCH / "venv-trl112.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    steps = [
        [sys._base_executable, "-m", "venv", "--clear", str(REFERENCE_VENV)],
        [str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip"],
        # the CPU wheel first, so nothing below pulls a multi-GB CUDA build of torch
        [str(python), "-m", "pip", "install", "--quiet", "torch==2.13.0"],
        [str(python), "-m", "pip", "install", "--quiet", *reference_requirements()],
    ]
    with open(log, "w") as out:
        for cmd in steps:
            if subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT).returncode != 0:
                return (
                    None,
                    f"`{' '.join(cmd[2:] if cmd[1] == '-m' else cmd)}` failed (see {log.relative_to(BENCH.parent)})",
                )
    stamp.write_text(wanted)
    return python, "created"


def find_models(profile: str) -> tuple[Path, Path]:
    """(sft_model dir, reward_model dir): bench/pipeline.py's, else trained here into bench/results/tmp/ppo-<profile>/."""
    for home in (SCRATCH / f"{name}-{profile}" / "home" for name in ("pipeline", "figures", "ppo")):
        found = [
            sorted(d for d in (home / "artifacts" / a).glob("*") if not d.name.startswith("."))
            if (home / "artifacts" / a).is_dir()
            else []
            for a in ("sft_model", "reward_model")
        ]
        if all(len(dirs) == 1 for dirs in found):
            return found[0][0], found[1][0]
    root, env = isolated_env("ppo", profile)
    print(
        f"bench/ppo.py: no models from bench/pipeline.py for profile '{profile}'; training SFT and reward models in {root}",
        flush=True,
    )
    run_child(
        [str(Path(sys.executable).parent / "rlhf-dag"), "run", "--select", "*reward_model"], env, root / "train.log"
    )
    return find_models(profile)


def ours_worker(settings: dict, report: str) -> None:
    """ppo_train exactly as the ppo_policy asset calls it (no gold monitor), timed by phase from outside the loop."""
    started = time.perf_counter()
    import torch

    from rlhf_dag.config import resolve
    from rlhf_dag.training import ppo
    from rlhf_dag.training.generate import generate_tokens

    imports = time.perf_counter() - started
    cfg = resolve("ppo_policy", {"iterations": settings["iterations"]}, settings["profile"])
    policy, reference, scorer, critic, tokenizer = ppo.ppo_models(settings["sft_model"], settings["reward_model"], cfg)
    rss_after_load = current_rss_mb()

    marks: list[dict] = []

    def timed_generation(model, tok, texts, max_new_tokens, temperature, generator_seed=None, return_logprobs=False):
        mark = {"start": time.perf_counter()}
        out = generate_tokens(model, tok, texts, max_new_tokens, temperature, generator_seed, return_logprobs)
        mark["generate_end"] = time.perf_counter()
        mark.update(response_stats(out[1], tok.eos_token_id, tok.pad_token_id))
        marks.append(mark)
        return out

    def marked_minibatch(*a, **k):  # scoring calls it too, without gradients ([PPO-15])
        if torch.is_grad_enabled() and "optimize_start" not in marks[-1]:
            marks[-1]["optimize_start"] = time.perf_counter()
        return original_minibatch(*a, **k)

    original_minibatch, original_pack = ppo.packed_logprobs_and_values, ppo.pack_minibatch
    ppo.generate_tokens, ppo.packed_logprobs_and_values = timed_generation, marked_minibatch
    if not settings.get("share_prefix", True):  # --ablation: [PPO-20] off, every packed row runs its whole query
        ppo.pack_minibatch = functools.partial(original_pack, share_prefix=False)
    prompts = settings["prompts"]
    train_started = time.perf_counter()
    ppo.ppo_train(policy, reference, scorer, critic, tokenizer, prompts, cfg)
    end = time.perf_counter()
    iterations = []
    for i, mark in enumerate(marks):
        stop = marks[i + 1]["start"] if i + 1 < len(marks) else end
        iterations.append(
            {
                "seconds": stop - mark["start"],
                "generate_seconds": mark["generate_end"] - mark["start"],
                "score_seconds": mark["optimize_start"] - mark["generate_end"],
                "optimize_seconds": stop - mark["optimize_start"],
                **{k: mark[k] for k in ("response_width", "generated_positions", "response_tokens", "eos_rate")},
            }
        )
    ppo.generate_tokens, ppo.packed_logprobs_and_values = generate_tokens, original_minibatch
    ppo.pack_minibatch = original_pack
    peak_after_training = peak_rss_mb()  # before the sampling comparison below allocates anything
    write_report(
        report,
        {
            "implementation": "ours (rlhf_dag/training/ppo.py)"
            + ("" if settings.get("share_prefix", True) else " without [PPO-20] (every row its whole query)"),
            "imports_seconds": imports,
            "train_seconds": end - train_started,
            "iterations": iterations,
            "rss_after_load_mb": rss_after_load,
            "peak_rss_mb": peak_after_training,
            "torch_threads": torch.get_num_threads(),
            "sampling": sampling_comparison(
                policy,
                tokenizer,
                settings["prompt_texts"][: cfg.rollout_batch_size],
                cfg.max_new_tokens,
                cfg.temperature,
            )
            if settings["sampling"]
            else [],
        },
    )


def sampling_comparison(
    model, tokenizer, texts: list[str], max_new_tokens: int, temperature: float, repeats: int = 3
) -> list[dict]:
    """Our `generate_tokens` ([PPO-17] sampler) against `model.generate` with and without the KV cache, and as TRL's rollout calls it (scores kept)."""
    import torch

    from rlhf_dag.training.generate import generate_tokens

    model.eval()
    tokenizer.padding_side = "left"
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    tokenizer.padding_side = "right"
    common = dict(
        max_new_tokens=max_new_tokens,
        do_sample=True,
        temperature=temperature,
        top_k=0,
        top_p=1.0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    width = batch["input_ids"].shape[1]

    def hf(**extra):
        with torch.no_grad():
            out = model.generate(**batch, **common, **extra)
        return (out.sequences if hasattr(out, "sequences") else out).shape[1] - width

    variants = {
        "ours: generate_tokens (tokenize + generate, KV cache, inverse-CDF sampler, log-probs kept)": lambda: (
            generate_tokens(model, tokenizer, texts, max_new_tokens, temperature, return_logprobs=True)[1].shape[1]
        ),
        "model.generate(use_cache=True)": lambda: hf(use_cache=True),
        "model.generate(use_cache=False)": lambda: hf(use_cache=False),
        "model.generate(use_cache=True, output_scores=True) as TRL's rollout": lambda: hf(
            use_cache=True, output_scores=True, return_dict_in_generate=True
        ),
    }
    rows = []
    for name, call in variants.items():
        times, steps = [], []
        for r in range(repeats):
            torch.manual_seed(
                r
            )  # the same seeds for every variant (ours draws with its own sampler: other samples, as many steps in practice)
            t = time.perf_counter()
            steps.append(call())
            times.append(time.perf_counter() - t)
        seconds = statistics.median(times)
        rows.append(
            {
                "variant": name,
                "seconds": seconds,
                "steps": statistics.median(steps),
                "batch": len(texts),
                "tokens_per_second": len(texts) * statistics.median(steps) / seconds,
            }
        )
    return rows


def summarize(report: dict, rollout_batch_size: int, ppo_epochs: int) -> dict:
    iterations = report["iterations"]
    steady = iterations[1:] or iterations  # the first iteration pays one-time costs (allocator, lazy init)

    def median(key):
        return statistics.median(i[key] for i in steady)

    return {
        "implementation": report["implementation"],
        "first_iteration_seconds": iterations[0]["seconds"],
        "iteration_seconds": median("seconds"),
        "generate_seconds": median("generate_seconds"),
        "score_seconds": median("score_seconds"),
        "optimize_seconds": median("optimize_seconds"),
        "rollout_tokens_per_second": statistics.median(i["response_tokens"] / i["generate_seconds"] for i in steady),
        "rollout_positions_per_second": statistics.median(
            i["generated_positions"] / i["generate_seconds"] for i in steady
        ),
        "optimizer_samples_per_second": rollout_batch_size * ppo_epochs / median("optimize_seconds"),
        "response_width": median("response_width"),
        "response_tokens": median("response_tokens"),
        "eos_rate": median("eos_rate"),
        "peak_rss_mb": report["peak_rss_mb"],
        "rss_after_load_mb": report["rss_after_load_mb"],
        "imports_seconds": report["imports_seconds"],
    }


def median_over_rounds(summaries: list[dict]) -> dict:
    return {
        k: (statistics.median(s[k] for s in summaries) if isinstance(v, (int, float)) else v)
        for k, v in summaries[0].items()
    }


def main() -> int:
    parser = bench_parser(__doc__)
    parser.add_argument(
        "--iterations", type=int, default=5, help="PPO iterations per implementation (the first is reported apart)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds of both implementations, alternating which runs first; figures are medians over rounds",
    )
    parser.add_argument("--skip-reference", action="store_true", help="only our figures (no TRL venv)")
    parser.add_argument(
        "--ablation",
        action="store_true",
        help="also ours with [PPO-20] off (every packed row runs its whole query) in each round: what the shared opening saves",
    )
    parser.add_argument(
        "--skip-sampling",
        action="store_true",
        help="no sampling comparison (at 135M its generate(use_cache=False) alone takes over ten minutes on 2 cores)",
    )
    parser.add_argument("--settings", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        ours_worker(json.loads(Path(args.settings).read_text()), args.report)
        return 0

    os.environ["RLHF_DAG_PROFILE"] = args.profile  # labels_dir(): the profile's own labels (assets/smollm2/ there)
    from transformers import AutoTokenizer

    from rlhf_dag.config import labels_dir, resolve
    from rlhf_dag.data.chat import format_prompt
    from rlhf_dag.data.label_files import load_labels

    info = machine()
    warn_if_busy(info)
    cfg = resolve("ppo_policy", {"iterations": args.iterations}, args.profile)
    sft_model, reward_model = find_models(args.profile)
    root, env = isolated_env("ppo-run", args.profile)
    prompts = [r["prompt"] for r in load_labels(labels_dir() / "prompts.jsonl", "prompts").records]
    tokenizer = AutoTokenizer.from_pretrained(sft_model)  # the prompts as PPO formats them: the model's own template
    settings = {
        # repo-relative (the workers run in the repo root), so that results JSON names no machine path
        "profile": args.profile,
        "sft_model": str(sft_model.relative_to(REPO)),
        "reward_model": str(reward_model.relative_to(REPO)),
        "prompts": prompts,
        "prompt_texts": [format_prompt(p, tokenizer) for p in prompts],
        # the profile's LoRA (TRL: peft_config, its reference the adapter disabled), None for a full fine-tune
        "lora": cfg.lora.model_dump() if cfg.lora else None,
        "iterations": args.iterations,
        "sampling": not args.skip_sampling,
        **{
            k: getattr(cfg, k)
            for k in (
                "rollout_batch_size",
                "minibatch_size",
                "ppo_epochs",
                "max_new_tokens",
                "temperature",
                "kl_coef",
                "clip_range",
                "clip_range_value",
                "vf_coef",
                "gamma",
                "lam",
                "learning_rate",
                "seed",
            )
        },
        # ours replaces a missing-EOS response's score by this value; TRL subtracts a positive penalty instead
        "missing_eos_penalty": abs(cfg.missing_eos_penalty) if cfg.missing_eos_penalty is not None else None,
    }
    (root / "settings.json").write_text(json.dumps(settings))
    (root / "settings-whole.json").write_text(json.dumps({**settings, "share_prefix": False}))
    print(
        f"bench/ppo.py: profile '{args.profile}', {args.iterations} iterations of rollout {cfg.rollout_batch_size}, minibatch {cfg.minibatch_size}, "
        f"{cfg.ppo_epochs} epochs, {cfg.max_new_tokens} new tokens; models {sft_model.parent.parent.name}/…/{sft_model.name}",
        flush=True,
    )

    # Rounds alternate which implementation runs first, so that a host whose speed drifts during the run
    # (these machines are shared) does not always favour the same one; the figures are medians over rounds.
    python, why = (None, "skipped (--skip-reference)") if args.skip_reference else reference_python()
    reference_note = (
        why
        if python is not None or args.skip_reference
        else f"not measured: could not create {REFERENCE_VENV.relative_to(BENCH.parent)}: {why}"
    )
    rounds = []
    for n in range(args.rounds):
        this_round = {}
        order = ("ours", "ours-whole", "trl") if args.ablation else ("ours", "trl")
        for implementation in order if n % 2 == 0 else order[::-1]:
            if implementation in ("ours", "ours-whole"):
                suffix = "" if implementation == "ours" else "-whole"
                child = run_child(
                    [
                        sys.executable,
                        __file__,
                        "--worker",
                        "ours",
                        "--settings",
                        str(root / f"settings{suffix}.json"),
                        "--report",
                        str(root / f"ours{suffix}.json"),
                    ],
                    env,
                    root / f"ours{suffix}.log",
                    root / f"ours{suffix}.json",
                )
                this_round[implementation] = summarize(child.report, cfg.rollout_batch_size, cfg.ppo_epochs)
                if implementation == "ours":
                    ours = child
            elif python is not None:
                ref = run_child(
                    [
                        str(python),
                        str(BENCH / "trl_reference.py"),
                        "--settings",
                        str(root / "settings.json"),
                        "--report",
                        str(root / "trl.json"),
                    ],
                    env,
                    root / "trl.log",
                    root / "trl.json",
                    check=False,
                )
                if ref.returncode == 0 and ref.report:
                    this_round["trl"] = summarize(ref.report, cfg.rollout_batch_size, cfg.ppo_epochs)
                    reference_note = f"measured ({', '.join(reference_requirements())})"
                else:
                    reference_note = f"not measured: TRL 1.12 reference exited with {ref.returncode}; last lines of {ref.log}:\n{ref.tail(15)}"
                    python = None
        rounds.append(this_round)
        if "trl" in this_round:
            print(
                f"bench/ppo.py: round {n + 1}/{args.rounds}: ours {this_round['ours']['iteration_seconds']:.3f} s, TRL {this_round['trl']['iteration_seconds']:.3f} s, "
                f"ratio {this_round['ours']['iteration_seconds'] / this_round['trl']['iteration_seconds']:.2f}",
                flush=True,
            )
        if "ours-whole" in this_round:
            print(
                f"bench/ppo.py: round {n + 1}/{args.rounds}: ours without [PPO-20] {this_round['ours-whole']['iteration_seconds']:.3f} s, "
                f"with / without {this_round['ours']['iteration_seconds'] / this_round['ours-whole']['iteration_seconds']:.2f}",
                flush=True,
            )
    results = {
        name: median_over_rounds([r[name] for r in rounds if name in r])
        for name in ("ours", "ours-whole", "trl")
        if all(name in r for r in rounds)
    }
    if "trl" not in results:
        print(f"bench/ppo.py: reference {reference_note}", file=sys.stderr)

    rows = [
        [
            r["implementation"],
            r["iteration_seconds"],
            r["first_iteration_seconds"],
            r["generate_seconds"],
            r["score_seconds"],
            r["optimize_seconds"],
            r["rollout_tokens_per_second"],
            r["optimizer_samples_per_second"],
            r["response_width"],
            r["eos_rate"],
            r["peak_rss_mb"],
            r["peak_rss_mb"] - r["rss_after_load_mb"],
        ]
        for r in results.values()
    ]
    sampling = ours.report["sampling"]  # the last round's
    lines = [
        f"### bench/ppo.py — profile `{args.profile}`: one PPO iteration (median of iterations 2..{args.iterations}, then the median over {args.rounds} rounds)",
        "",
        markdown_table(
            [
                "implementation",
                "iteration s",
                "first iteration s",
                "rollout generation s",
                "scoring s",
                "optimization s",
                "rollout tokens/s",
                "optimizer samples/s",
                "response width",
                "EOS rate",
                "peak RSS MB",
                "RSS over loaded models MB",
            ],
            rows,
        ),
        "",
    ]

    def ratio_line(label: str, numerator: str, denominator: str, target: str = "") -> list[str]:
        """The median over rounds of `numerator`'s iteration time over `denominator`'s, and each round's."""
        ratios = [r[numerator]["iteration_seconds"] / r[denominator]["iteration_seconds"] for r in rounds]
        median = statistics.median(ratios)
        speed = f" ({median**-1:.2f}× faster{target})" if denominator == "trl" else ""
        each = ", ".join(f"{r:.2f}" for r in ratios)
        return [f"{label}, median over {len(rounds)} rounds: **{median:.2f}**{speed}; each round: {each}.", ""]

    if "trl" in results:
        lines += ratio_line("Ours / TRL iteration time", "ours", "trl", "; target ≤ 0.67, 1.5× faster")
    else:
        lines += [f"Reference: {reference_note.splitlines()[0]}", ""]
    if "ours-whole" in results:
        lines += ratio_line("Ours with / without [PPO-20] (the shared opening run once)", "ours", "ours-whole")
        if "trl" in results:
            lines += ratio_line("Ours without [PPO-20] / TRL", "ours-whole", "trl")
    if sampling:
        lines += [
            f"#### Sampling: {len(settings['prompt_texts'][: cfg.rollout_batch_size])} prompts, up to {cfg.max_new_tokens} new tokens (median of 3)",
            "",
            markdown_table(
                ["variant", "seconds", "decoding steps", "tokens/s (batch x steps / s)"],
                [[s["variant"], s["seconds"], s["steps"], s["tokens_per_second"]] for s in sampling],
            ),
            "",
        ]
    lines += [f"Machine: {machine_line(info)}"]
    save_results(
        "ppo",
        args.profile,
        {
            "profile": args.profile,
            "machine": info,
            "settings": {k: v for k, v in settings.items() if k not in ("prompts", "prompt_texts")},
            "results": results,
            "rounds": rounds,
            "sampling": sampling,
            "reference": reference_note,
        },
        "\n".join(lines),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
