"""What dominates a step: torch.profiler over one PPO iteration and a few pretraining steps, at several thread counts.

    .venv/bin/python bench/profiling.py [--profile default] [--step ppo,pretrain] [--threads 1,2]

PPO: one warm-up iteration, then one profiled iteration of `ppo_train` with the
profile's settings and the models bench/pipeline.py left (or trains them, as
bench/ppo.py does). The loop's phases are labelled from outside the loop:
rollout generation, policy/reference log-probs, reward and value scoring, and
the optimizer's forward/backward/step.

Pretraining: the base model of the profile on packed windows of the real
corpus, a forward/backward/AdamW step as the trainer makes it, without the
trainer; its time per step next to the trainer's (train_runtime / steps from
bench/pipeline.py's run) shows what the trainer adds.

For Python-level stacks of a whole asset (the trainers' own overhead), run
py-spy on a bench/pipeline.py worker, e.g.
    py-spy record -o sft.svg -- .venv/bin/python bench/pipeline.py --worker sft_model --report /tmp/r.json
with the environment of bench/results/tmp/pipeline-<profile>/ (see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time

from harness import machine, machine_line, markdown_table, save_results, warn_if_busy
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
    from rlhf_dag.data.labels import load_labels
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
        (ppo, "response_logprobs", lambda model, *a, **k: "PPO: optimize: policy forward" if torch.is_grad_enabled()
         else "PPO: score: reference log-probs" if model is reference else "PPO: score: policy log-probs"),
        (ppo, "per_token_scores", lambda model, *a, **k: "PPO: optimize: value forward" if torch.is_grad_enabled()
         else "PPO: score: reward model" if model is scorer else "PPO: score: values"),
        (ppo, "gae", lambda *a, **k: "PPO: score: GAE"),
        (torch.optim.AdamW, "step", lambda *a, **k: "PPO: optimize: AdamW step"),
        (torch.Tensor, "backward", lambda *a, **k: "PPO: optimize: backward"),
    )
    with phases:
        ppo.ppo_train(policy, reference, scorer, critic, tokenizer, prompts, cfg)  # warm-up
        started = time.perf_counter()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            ppo.ppo_train(policy, reference, scorer, critic, tokenizer, prompts, cfg)
        seconds = time.perf_counter() - started
    return {"seconds_profiled": seconds}, summarize(prof, "PPO: ", seconds)


def profile_pretrain(profile: str, steps: int = 5) -> tuple[dict, str]:
    import torch

    from rlhf_dag.config import resolve
    from rlhf_dag.data.corpus import load_corpus
    from rlhf_dag.training.pretrain import build_model, train_tokenizer

    cfg = resolve("base_model", profile=profile)
    corpus_cfg = resolve("pretraining_corpus", profile=profile)
    texts = load_corpus(corpus_cfg.source, corpus_cfg.n_documents, corpus_cfg.seed)
    tokenizer = train_tokenizer(texts, cfg.vocab_size)
    ids = [t for ids in tokenizer(texts[: cfg.batch_size * 8])["input_ids"] for t in ids + [tokenizer.eos_token_id]]
    window = cfg.batch_size * cfg.max_length
    batch = torch.tensor(ids[:window]).view(cfg.batch_size, cfg.max_length)
    model = build_model(cfg, tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate)

    def step():
        with torch.profiler.record_function("pretrain: forward"):
            loss = model(input_ids=batch, labels=batch).loss
        with torch.profiler.record_function("pretrain: backward"):
            loss.backward()
        with torch.profiler.record_function("pretrain: AdamW step"):
            optimizer.step()
            optimizer.zero_grad()

    model.train()
    for _ in range(3):  # warm-up
        step()
    started = time.perf_counter()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    seconds = time.perf_counter() - started
    result = {"seconds_per_step": seconds / steps, "tokens_per_step": window, "tokens_per_second": window * steps / seconds}
    return result, summarize(prof, "pretrain: ", seconds) + f"\n\nRaw step (no trainer): {1000 * seconds / steps:.1f} ms for {window} tokens = {window * steps / seconds:.0f} tokens/s (profiler on)."


def summarize(prof, prefix: str, seconds: float) -> str:
    """Our phase labels, then the 15 operators with the most self CPU time."""
    averages = prof.key_averages()
    phases = sorted((e for e in averages if e.key.startswith(prefix)), key=lambda e: -e.cpu_time_total)
    ops = sorted((e for e in averages if not e.key.startswith(prefix)), key=lambda e: -e.self_cpu_time_total)[:15]
    total_self = sum(e.self_cpu_time_total for e in averages) or 1
    return "\n".join([
        markdown_table(["phase", "calls", "CPU s (incl. children)", "share of wall"], [[e.key, e.count, e.cpu_time_total / 1e6, e.cpu_time_total / 1e6 / seconds] for e in phases]),
        "",
        markdown_table(["operator", "calls", "self CPU s", "share of self CPU"], [[e.key, e.count, e.self_cpu_time_total / 1e6, e.self_cpu_time_total / total_self] for e in ops]),
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="default")
    parser.add_argument("--step", default="ppo,pretrain", help="comma-separated: ppo, pretrain")
    parser.add_argument("--threads", default="", help="comma-separated torch thread counts to compare (default: torch's own choice)")
    args = parser.parse_args()
    import torch

    info = machine()
    warn_if_busy(info)
    sections, payload = [f"### bench/profiling.py — profile `{args.profile}`", ""], {"profile": args.profile, "machine": info, "runs": {}}
    for threads in [int(t) for t in args.threads.split(",") if t] or [torch.get_num_threads()]:
        torch.set_num_threads(threads)
        for step in args.step.split(","):
            result, table = {"ppo": profile_ppo, "pretrain": profile_pretrain}[step](args.profile)
            payload["runs"][f"{step}-threads{threads}"] = result
            sections += [f"#### {step}, {threads} torch thread(s)", "", table, ""]
            print(f"  {step}, {threads} thread(s): {result}", file=sys.stderr, flush=True)
    sections.append(f"Machine: {machine_line(info)}")
    save_results("profiling", args.profile, payload, "\n".join(sections))
    return 0


if __name__ == "__main__":
    sys.exit(main())
