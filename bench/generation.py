"""Sampling against the machine's limit: new tokens/s of every sampling path, before and after, and the decode bound.

    .venv/bin/python bench/generation.py [--profile smollm2,default] [--repeats 1]

The bound: a forward pass over 8 x 128 tokens, timed in the same run, gives the machine's FLOP/s at this model
(2N FLOPs per token, N its parameters); decoding one token costs the same 2N, so no sampler can write more than
FLOP/s / 2N new tokens/s. Each path samples a profile's SFT model (bench/ppo.py's `find_models`: the pipeline
bench's, or trained for it) on the profile's own prompts, at the profile's settings:

- `ppo_rollout`: one rollout batch (`rollout_batch_size` prompts, `max_new_tokens`) from the policy with a LoRA
  adapter when the profile trains one (its B drawn small, so that the adapter computes something);
- `evaluation`: one model's samples as `policy_evaluation` makes them: every held-out prompt, `samples_per_prompt`
  each, at the evaluation's length and temperature, then the source's four prompts, `source_prompt_samples` each,
  at theirs (two calls);
- `labeling_candidates` (and `make-labels`, the same call): one batch, `prompts_per_batch` prompts x K responses.

Before: transformers' `generate(do_sample=True)` (`torch.multinomial`, PAD suppressed) on the model as the path
holds it (the LoRA policy unmerged), prompts in file order, 32 a batch (`sample`'s batch before). After: the project's sampler
(`generate.sample`, `generate_tokens`: the decoding loop, length-sorted batches, merged LoRA weights). New tokens
are the response tokens written (EOS included, never PAD); before and after alternate, `--repeats` times each
after a warm-up, and the figures are the medians. GRPO and RLOO sample inside TRL's trainers (their `generate`):
not a path of ours, not measured here.

After, bf16 (`after_bf16`, the evaluation and the candidates: `sample_precision: bf16`): the same sampler on a
bfloat16 copy of the weights (the copy's making counted). Its share is given of the fp32 bound (the issue's) and of
a bf16 bound measured the same way (`bound_bf16_tokens_per_s`). PPO's rollout stays fp32: its log-probs are PPO's.
"""

from __future__ import annotations

import json
import statistics
import time

from harness import REPO, RESULTS, bench_parser, machine, machine_line, markdown_table, warn_if_busy
from ppo import find_models

BATCH = 32  # the evaluation's and the candidates' batch before (after: generate.SAMPLE_BATCH)


def forward_bound(model, vocab: int) -> dict:
    """FLOP/s of a forward over 8 x 128 tokens (best of 3 after a warm-up) and the decode bound it gives."""
    import torch

    n_params = sum(p.numel() for p in model.parameters())
    ids = torch.randint(0, vocab, (8, 128))
    with torch.no_grad():
        model(input_ids=ids)
        times = []
        for _ in range(3):
            start = time.perf_counter()
            model(input_ids=ids)
            times.append(time.perf_counter() - start)
    flops = 2 * n_params * ids.numel() / min(times)
    return {"parameters": n_params, "forward_gflops": flops / 1e9, "bound_tokens_per_s": flops / (2 * n_params)}


def new_tokens(responses, pad: int, eos: int) -> int:
    """Response tokens written: up to and including each row's first EOS, never PAD."""
    from rlhf_dag.training.generate import truncate_after_eos

    truncated, _ = truncate_after_eos(responses, eos, pad)
    return int((truncated != pad).sum())


def generate_before(model, tokenizer, texts: list[str], max_new_tokens: int, temperature: float) -> int:
    """transformers' `generate(do_sample=True)`, 32 texts a batch in their order: the new tokens it wrote."""
    import torch

    written = 0
    for start in range(0, len(texts), BATCH):
        tokenizer.padding_side = "left"
        batch = tokenizer(texts[start : start + BATCH], return_tensors="pt", padding=True)
        tokenizer.padding_side = "right"
        with torch.no_grad():
            out = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=True,
                temperature=temperature,
                top_k=None,
                top_p=None,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                suppress_tokens=[tokenizer.pad_token_id],
            )
        written += new_tokens(out[:, batch["input_ids"].shape[1] :], tokenizer.pad_token_id, tokenizer.eos_token_id)
    return written


def timed(call, repeats: int) -> tuple[float, int]:
    """Median seconds of `call` over `repeats` calls (the seed fixed per call), and the new tokens of the last."""
    import torch

    times, written = [], 0
    for r in range(repeats):
        torch.manual_seed(r)
        start = time.perf_counter()
        written = call()
        times.append(time.perf_counter() - start)
    return statistics.median(times), written


def measure(profile: str, repeats: int) -> dict:
    import torch

    from rlhf_dag.config import PROFILE_LABELS, REPO_ROOT, resolve
    from rlhf_dag.data.chat import format_prompt
    from rlhf_dag.data.gold import GoldJudge, gold_score
    from rlhf_dag.data.label_files import load_labels
    from rlhf_dag.training import lora
    from rlhf_dag.training.generate import at_precision, generate_tokens, sample
    from rlhf_dag.training.models import load_causal_lm

    ppo_cfg, eval_cfg = resolve("ppo_policy", {}, profile), resolve("policy_evaluation", {}, profile)
    cand_cfg = resolve("labeling_candidates", {}, profile)
    labels = REPO_ROOT / PROFILE_LABELS.get(profile, "assets")
    sft_model, _ = find_models(profile)
    model, tokenizer = load_causal_lm(sft_model)
    model.eval()
    bound = forward_bound(model, len(tokenizer))
    bf16_bound = forward_bound(at_precision(model, "bf16"), len(tokenizer))
    bound["bound_bf16_tokens_per_s"] = bf16_bound["bound_tokens_per_s"]
    print(
        f"{profile}: forward {bound['forward_gflops']:.1f} GFLOP/s -> bound {bound['bound_tokens_per_s']:.0f} new tokens/s"
        f" (bf16: {bf16_bound['forward_gflops']:.1f} GFLOP/s -> {bf16_bound['bound_tokens_per_s']:.0f})",
        flush=True,
    )
    prompts = [r["prompt"] for r in load_labels(labels / "prompts.jsonl", "prompts").records]
    held_out = [r["prompt"] for r in load_labels(labels / "eval_prompts.jsonl", "eval_prompts").records]

    policy = model
    if ppo_cfg.lora is not None:
        policy = lora.adapt(load_causal_lm(sft_model)[0], ppo_cfg.lora).eval()
        with torch.no_grad():
            for name, p in policy.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 1e-3)
    merged = lora.MergedCopy(policy) if lora.is_adapted(policy) else None
    rollout = [format_prompt(p, tokenizer) for p in prompts[: ppo_cfg.rollout_batch_size]]
    evaluation = [format_prompt(p, tokenizer) for p in held_out for _ in range(eval_cfg.samples_per_prompt)]
    source = [
        format_prompt(p, tokenizer) for p in GoldJudge.source_prompts for _ in range(eval_cfg.source_prompt_samples)
    ]
    candidates = [
        format_prompt(p, tokenizer)
        for p in prompts[: cand_cfg.prompts_per_batch]
        for _ in range(cand_cfg.responses_per_prompt)
    ]

    def rollout_after() -> int:
        _, response, _ = generate_tokens(
            merged.refresh() if merged else policy,
            tokenizer,
            rollout,
            ppo_cfg.max_new_tokens,
            ppo_cfg.temperature,
            return_logprobs=True,
        )
        return new_tokens(response, tokenizer.pad_token_id, tokenizer.eos_token_id)

    asked = {format_prompt(p, tokenizer): p for p in held_out + list(GoldJudge.source_prompts)}  # text -> request
    judged = {"fp32": [], "bf16": []}  # the evaluation path's gold scores at each precision, every timed call

    def sampled(texts, cfg_max, temperature, precision="fp32", judge=False):
        samples = sample(model, tokenizer, texts, texts, cfg_max, temperature, precision=precision)
        if judge:  # as the evaluation judges them: the gold labeler's score of each response to its request
            scores = (gold_score(asked[s.prompt], s.response, s.ended_with_eos) for s in samples)
            judged[precision].extend(g.score for g in scores if g is not None)
        return sum(s.n_tokens + s.ended_with_eos for s in samples)

    paths = {
        "ppo_rollout": (
            lambda: generate_before(policy, tokenizer, rollout, ppo_cfg.max_new_tokens, ppo_cfg.temperature),
            rollout_after,
        ),
        "evaluation": (  # one model's samples, as policy_evaluation makes them: two calls
            lambda: (
                generate_before(model, tokenizer, evaluation, eval_cfg.max_new_tokens, eval_cfg.temperature)
                + generate_before(model, tokenizer, source, eval_cfg.max_new_tokens, eval_cfg.source_prompt_temperature)
            ),
            lambda: (
                sampled(evaluation, eval_cfg.max_new_tokens, eval_cfg.temperature, judge=True)
                + sampled(source, eval_cfg.max_new_tokens, eval_cfg.source_prompt_temperature)
            ),
            lambda: (
                sampled(evaluation, eval_cfg.max_new_tokens, eval_cfg.temperature, "bf16", judge=True)
                + sampled(source, eval_cfg.max_new_tokens, eval_cfg.source_prompt_temperature, "bf16")
            ),
        ),
        "labeling_candidates": (
            lambda: generate_before(model, tokenizer, candidates, cand_cfg.max_new_tokens, cand_cfg.temperature),
            lambda: sampled(candidates, cand_cfg.max_new_tokens, cand_cfg.temperature),
            lambda: sampled(candidates, cand_cfg.max_new_tokens, cand_cfg.temperature, "bf16"),
        ),
    }
    generate_before(policy, tokenizer, rollout[:2], 4, 1.0)  # warm-up of both
    generate_tokens(merged.refresh() if merged else policy, tokenizer, rollout[:2], 4, 1.0)
    results = {}
    for name, calls in paths.items():
        rows = {}
        for label, call in zip(("before", "after", "after_bf16"), calls):
            seconds, written = timed(call, repeats)
            rows[label] = {
                "seconds": seconds,
                "new_tokens": written,
                "tokens_per_s": written / seconds,
                "share_of_bound": written / seconds / bound["bound_tokens_per_s"],
            }
            if label == "after_bf16":
                rows[label]["share_of_bf16_bound"] = written / seconds / bound["bound_bf16_tokens_per_s"]
        rows["speedup"] = rows["after"]["tokens_per_s"] / rows["before"]["tokens_per_s"]
        results[name] = rows
        bf16 = rows.get("after_bf16")
        print(
            f"{profile} {name}: before {rows['before']['tokens_per_s']:.1f} tokens/s "
            f"({rows['before']['share_of_bound']:.0%} of the bound), after {rows['after']['tokens_per_s']:.1f} "
            f"({rows['after']['share_of_bound']:.0%}), {rows['speedup']:.2f}x"
            + (
                f"; bf16 {bf16['tokens_per_s']:.1f} ({bf16['share_of_bound']:.0%} of the fp32 bound, "
                f"{bf16['share_of_bf16_bound']:.0%} of the bf16 bound)"
                if bf16
                else ""
            ),
            flush=True,
        )
    # what bf16 does to what is sampled: the held-out samples' gold mean at each precision (the same model and prompts)
    results["evaluation"]["gold_mean"] = {k: sum(v) / len(v) for k, v in judged.items() if v}
    print(
        f"{profile} evaluation, held-out gold mean: "
        + ", ".join(f"{k} {v:.3f} ({len(judged[k])} samples)" for k, v in results["evaluation"]["gold_mean"].items()),
        flush=True,
    )
    return {
        **bound,
        "paths": results,
        "texts": {
            "ppo_rollout": len(rollout),
            "evaluation": len(evaluation) + len(source),
            "labeling_candidates": len(candidates),
        },
    }


def main() -> int:
    parser = bench_parser(__doc__, default_profile="smollm2,default")
    parser.add_argument("--repeats", type=int, default=1, help="timed calls of each variant (after a warm-up)")
    args = parser.parse_args()
    import torch

    info = machine()
    warn_if_busy(info)
    torch.set_num_threads(info["cores_usable"])
    measured = {profile: measure(profile, args.repeats) for profile in args.profile.split(",")}
    rows = [
        [
            profile,
            name,
            r["before"]["tokens_per_s"],
            f"{r['before']['share_of_bound']:.0%}",
            r["after"]["tokens_per_s"],
            f"{r['after']['share_of_bound']:.0%}",
            f"{r['speedup']:.2f}x",
            f"{r['after_bf16']['tokens_per_s']:.1f}" if "after_bf16" in r else "(fp32 only)",
            f"{r['after_bf16']['share_of_bound']:.0%} / {r['after_bf16']['share_of_bf16_bound']:.0%}"
            if "after_bf16" in r
            else "",
        ]
        for profile, m in measured.items()
        for name, r in m["paths"].items()
    ]
    bounds = "; ".join(
        f"{p}: {m['parameters'] / 1e6:.1f}M parameters, forward {m['forward_gflops']:.1f} GFLOP/s, bound "
        f"{m['bound_tokens_per_s']:.0f} new tokens/s (bf16: {m['bound_bf16_tokens_per_s']:.0f})"
        for p, m in measured.items()
    )
    gold = "; ".join(
        f"{p}: " + ", ".join(f"{k} {v:.3f}" for k, v in m["paths"]["evaluation"]["gold_mean"].items())
        for p, m in measured.items()
    )
    table = "\n".join(
        [
            f"Measured on {machine_line(info)}. {bounds}.",
            "",
            f"The evaluation path's held-out samples, gold mean by precision: {gold}.",
            "",
            markdown_table(
                [
                    "profile",
                    "path",
                    "before tokens/s",
                    "of bound",
                    "after tokens/s",
                    "of bound",
                    "speedup",
                    "after, bf16 tokens/s",
                    "of fp32 / bf16 bound",
                ],
                rows,
            ),
        ]
    )
    real = measured.get("smollm2")
    payload = {
        "machine": info,
        "command": "bench/generation.py --profile " + args.profile,
        **(
            {
                "bound_tokens_per_s": real["bound_tokens_per_s"],
                "bound_bf16_tokens_per_s": real["bound_bf16_tokens_per_s"],
                "paths": real["paths"],
            }
            if real
            else {}
        ),
        "profiles": measured,
    }
    (RESULTS / "generation.json").write_text(json.dumps(payload, indent=1, default=str))
    (RESULTS / "generation.md").write_text(table + "\n")
    print(table)
    print(f"\n(written to {(RESULTS / 'generation.json').relative_to(REPO)} and .md)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
