"""What dominates a step: torch.profiler over one PPO iteration and pretraining steps, under several OpenMP settings.

    .venv/bin/python bench/profiling.py [--profile default] [--step ppo,pretrain] [--threads 1,2] [--wait-policy default,PASSIVE]

Each combination of torch threads (OMP_NUM_THREADS) and OpenMP wait policy
(OMP_WAIT_POLICY; `default` leaves it unset) runs in a process of its own,
since libgomp reads both when torch loads. Per combination:

- PPO: one warm-up iteration of `ppo_train` with the profile's settings and the
  models bench/pipeline.py left (or trains them, as bench/ppo.py does), two
  timed iterations, then one profiled iteration. The loop's phases are labelled
  from outside the loop: rollout generation, policy/reference log-probs, reward
  and value scoring, GAE, and the optimizer's forwards, backward and AdamW step.
- Pretraining: the profile's base model on a padded batch of whole documents of the real corpus,
  forward/backward/AdamW as the trainer makes it but without the trainer: 3
  warm-up steps, 8 timed, 5 profiled. Its tokens/s beside bench/pipeline.py's
  trainer tokens/s shows what the trainer adds.

The timed (unprofiled) figures compare the combinations; the profiles say
where the time goes. For Python-level stacks of a whole asset (what the
trainers add), run py-spy on a bench/pipeline.py worker (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time

from harness import (
    isolated_env,
    machine,
    machine_line,
    markdown_table,
    run_child,
    save_results,
    warn_if_busy,
    write_report,
)
from ppo import find_models


@contextlib.contextmanager
def labelled(*targets):
    """Within the block, each call of owner.attr shows in the profile under label_for(args); (owner, attr, label_for) per target."""
    import torch

    originals = [(owner, attr, getattr(owner, attr)) for owner, attr, _ in targets]

    def wrap(original, label_for):
        def wrapped(*args, **kwargs):
            with torch.profiler.record_function(label_for(*args, **kwargs)):
                return original(*args, **kwargs)

        return wrapped

    for (owner, attr, original), (_, _, label_for) in zip(originals, targets):
        setattr(owner, attr, wrap(original, label_for))
    try:
        yield
    finally:
        for owner, attr, original in originals:
            setattr(owner, attr, original)


def profile_ppo(profile: str) -> tuple[dict, str]:
    import torch

    from rlhf_dag.config import REPO_ROOT, resolve
    from rlhf_dag.data.label_files import load_labels
    from rlhf_dag.training import ppo
    from rlhf_dag.training.models import load_causal_lm, load_reward_model

    sft_model, reward_model = find_models(profile)
    cfg = resolve("ppo_policy", {"iterations": 1}, profile)
    prompts = [r["prompt"] for r in load_labels(REPO_ROOT / "assets" / "prompts.jsonl", "prompts").records]
    policy, tokenizer = load_causal_lm(sft_model)
    reference, _ = load_causal_lm(sft_model)
    scorer, _ = load_reward_model(reward_model)
    critic, _ = load_reward_model(reward_model)
    phases = labelled(
        (ppo, "generate_tokens", lambda *a, **k: "PPO: rollout generation"),
        (ppo, "score_rollouts", lambda *a, **k: "PPO: score: reference, values and RM, packed"),
        (
            ppo,
            "pack_minibatch",
            lambda *a, **k: "PPO: optimize: pack minibatch" if torch.is_grad_enabled() else "PPO: score: pack",
        ),
        (
            ppo,
            "packed_logprobs_and_values",
            lambda model, *a, **k: (
                "PPO: optimize: policy + value forward (value inside)"
                if torch.is_grad_enabled()
                else "PPO: score: reference + values forward"
            ),
        ),
        (
            ppo,
            "packed_scores",
            lambda model, *a, **k: (
                "PPO: optimize: value forward"
                if torch.is_grad_enabled()
                else "PPO: score: reward model"
                if model is scorer
                else "PPO: score: values"
            ),
        ),
        (ppo, "gae", lambda *a, **k: "PPO: score: GAE"),
        (torch.optim.AdamW, "step", lambda *a, **k: "PPO: optimize: AdamW step"),
        (torch.Tensor, "backward", lambda *a, **k: "PPO: optimize: backward"),
    )
    ppo.ppo_train(policy, reference, scorer, critic, tokenizer, prompts, cfg)  # warm-up
    started = time.perf_counter()
    ppo.ppo_train(policy, reference, scorer, critic, tokenizer, prompts, cfg.model_copy(update={"iterations": 2}))
    iteration = (time.perf_counter() - started) / 2
    with phases:
        started = time.perf_counter()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            ppo.ppo_train(policy, reference, scorer, critic, tokenizer, prompts, cfg)
        seconds = time.perf_counter() - started
    return {"iteration_seconds": iteration}, summarize(prof, "PPO: ", seconds)


def profile_pretrain(profile: str, steps: int = 5) -> tuple[dict, str]:
    import torch

    from rlhf_dag.config import resolve
    from rlhf_dag.data.corpus import load_corpus
    from rlhf_dag.training.pretrain import build_model, train_tokenizer

    cfg = resolve("base_model", profile=profile)
    corpus_cfg = resolve("pretraining_corpus", profile=profile)
    texts = load_corpus(corpus_cfg.source, corpus_cfg.n_documents, corpus_cfg.seed)
    tokenizer = train_tokenizer(texts, cfg.vocab_size)
    # One padded batch of whole documents, as base_model trains (no packing).
    docs = [
        ids[: cfg.max_length - 1] + [tokenizer.eos_token_id] for ids in tokenizer(texts[: cfg.batch_size])["input_ids"]
    ]
    width = max(len(d) for d in docs)
    batch = torch.tensor([d + [tokenizer.pad_token_id] * (width - len(d)) for d in docs])
    attention_mask = batch != tokenizer.pad_token_id
    labels = batch.masked_fill(~attention_mask, -100)
    model = build_model(cfg, tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate)

    def step():
        with torch.profiler.record_function("pretrain: forward"):
            loss = model(input_ids=batch, attention_mask=attention_mask, labels=labels).loss
        with torch.profiler.record_function("pretrain: backward"):
            loss.backward()
        with torch.profiler.record_function("pretrain: AdamW step"):
            optimizer.step()
            optimizer.zero_grad()

    model.train()
    for _ in range(3):  # warm-up
        step()
    started = time.perf_counter()
    for _ in range(8):
        step()
    per_step = (time.perf_counter() - started) / 8
    started = time.perf_counter()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    seconds = time.perf_counter() - started
    return {"step_seconds": per_step, "tokens_per_second": int(attention_mask.sum()) / per_step}, summarize(
        prof, "pretrain: ", seconds
    )


def summarize(prof, prefix: str, seconds: float) -> str:
    """Our phase labels, then the 15 operators with the most self CPU time."""
    averages = prof.key_averages()
    phases = sorted((e for e in averages if e.key.startswith(prefix)), key=lambda e: -e.cpu_time_total)
    ops = sorted((e for e in averages if not e.key.startswith(prefix)), key=lambda e: -e.self_cpu_time_total)[:15]
    total_self = sum(e.self_cpu_time_total for e in averages) or 1
    return "\n".join(
        [
            markdown_table(
                ["phase", "calls", "CPU s (incl. children)", "share of wall"],
                [[e.key, e.count, e.cpu_time_total / 1e6, e.cpu_time_total / 1e6 / seconds] for e in phases],
            ),
            "",
            markdown_table(
                ["operator", "calls", "self CPU s", "share of self CPU"],
                [[e.key, e.count, e.self_cpu_time_total / 1e6, e.self_cpu_time_total / total_self] for e in ops],
            ),
        ]
    )


def worker(args) -> None:
    import torch

    report = {"threads": torch.get_num_threads(), "runs": {}, "tables": {}}
    for step in args.step.split(","):
        report["runs"][step], report["tables"][step] = {"ppo": profile_ppo, "pretrain": profile_pretrain}[step](
            args.profile
        )
    write_report(args.report, report)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="default")
    parser.add_argument("--step", default="ppo,pretrain", help="comma-separated: ppo, pretrain")
    parser.add_argument("--threads", default="2", help="comma-separated torch thread counts (OMP_NUM_THREADS)")
    parser.add_argument(
        "--wait-policy", default="default", help="comma-separated OMP_WAIT_POLICY values; 'default' leaves it unset"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--report", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return 0

    info = machine()
    warn_if_busy(info)
    root, env = isolated_env("profiling", args.profile)
    sections, payload, rows = [], {"profile": args.profile, "machine": info, "variants": {}}, []
    for threads in args.threads.split(","):
        for policy in args.wait_policy.split(","):
            variant = f"{threads} thread(s), OMP_WAIT_POLICY={policy}"
            child_env = {**env, "OMP_NUM_THREADS": threads}
            child_env.pop("OMP_WAIT_POLICY", None)
            if policy != "default":
                child_env["OMP_WAIT_POLICY"] = policy
            report = root / f"threads{threads}-{policy}.json"
            child = run_child(
                [
                    sys.executable,
                    __file__,
                    "--worker",
                    "--profile",
                    args.profile,
                    "--step",
                    args.step,
                    "--report",
                    str(report),
                ],
                child_env,
                report.with_suffix(".log"),
                report,
            )
            runs = child.report["runs"]
            payload["variants"][variant] = runs
            rows.append(
                [
                    variant,
                    runs.get("ppo", {}).get("iteration_seconds"),
                    1000 * runs["pretrain"]["step_seconds"] if "pretrain" in runs else None,
                    runs.get("pretrain", {}).get("tokens_per_second"),
                ]
            )
            print(f"  {variant}: {runs}", flush=True)
            for step, table in child.report["tables"].items():
                sections += [f"#### {step}, {variant}", "", table, ""]
    lines = [
        f"### bench/profiling.py — profile `{args.profile}`",
        "",
        markdown_table(
            [
                "torch threads, OpenMP wait policy",
                "PPO iteration s",
                "pretraining step ms (no trainer)",
                "pretraining tokens/s (no trainer)",
            ],
            rows,
        ),
        "",
        *sections,
        f"Machine: {machine_line(info)}",
    ]
    save_results("profiling", args.profile, payload, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
