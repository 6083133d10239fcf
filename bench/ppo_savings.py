"""Each of PPO's savings alone, before against after, in one process on the same models and rollout.

    .venv/bin/python bench/ppo_savings.py [--profile default] [--repeats 7]

- [PPO-15] scoring: the reference, critic and RM over the padded rollout batch (before) against
  `ppo.score_rollouts`, packed in length order (after);
- [PPO-16] the optimizer step: `torch.optim.AdamW` as PyTorch defaults it on a CPU (the per-tensor loop)
  against `AdamW(fused=True)`, on the policy's and critic's parameters with fixed gradients;
- [PPO-17] sampling a rollout with its log-probs: `model.generate(do_sample=True, output_scores=True)`
  (`torch.multinomial`, as TRL's rollout) against `generate.generate_tokens` (the inverse-CDF sampler);
- [PPO-20] the queries' shared opening: packed rows that each run the whole query (before) against the opening
  run once before them, on the models as `ppo_policy` trains them (LoRA where the profile says so): scoring the
  rollout batch, and one epoch of the optimization's forward and backward passes (every minibatch, in length order).

`--savings PPO-20,...` measures only those (at 135M the others take minutes).

Before and after alternate, `--repeats` times each, after one warm-up call of each; the figures are
medians. The per-iteration saving multiplies the optimizer step's by the steps per iteration
(`ppo_epochs × rollout_batch_size / minibatch_size`). The models are bench/ppo.py's.
"""

from __future__ import annotations

import functools
import os
import statistics
import time

from harness import bench_parser, machine, machine_line, markdown_table, save_results, warn_if_busy
from ppo import find_models

SAVINGS = ["PPO-15", "PPO-16", "PPO-17", "PPO-20"]


def alternate(before, after, repeats: int) -> tuple[float, float]:
    """Median seconds of `before` and `after`, called in turn; the same torch seed for both in each round."""
    import torch

    times = {before: [], after: []}
    for r in range(repeats + 1):
        for call in (before, after):
            torch.manual_seed(r)
            start = time.perf_counter()
            call()
            if r:  # the first round warms up
                times[call].append(time.perf_counter() - start)
    return statistics.median(times[before]), statistics.median(times[after])


def main() -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--repeats", type=int, default=7, help="timed calls of each variant (after one warm-up)")
    parser.add_argument(
        "--savings", default=",".join(SAVINGS), help=f"which to measure, comma-separated (default: all of {SAVINGS})"
    )
    args = parser.parse_args()
    wanted = set(args.savings.split(","))
    if wanted - set(SAVINGS):
        parser.error(f"--savings: unknown {sorted(wanted - set(SAVINGS))}; known: {SAVINGS}")
    os.environ["RLHF_DAG_PROFILE"] = args.profile  # labels_dir(): the profile's own prompts (assets/smollm2/ there)

    import torch

    from rlhf_dag.config import labels_dir, resolve
    from rlhf_dag.data.chat import format_prompt
    from rlhf_dag.data.label_files import load_labels
    from rlhf_dag.training import ppo
    from rlhf_dag.training.generate import generate_tokens, truncate_after_eos
    from rlhf_dag.training.models import load_causal_lm, load_reward_model
    from rlhf_dag.training.ppo import response_logprobs, score_rollouts
    from rlhf_dag.training.reward import per_token_scores

    info = machine()
    warn_if_busy(info)
    cfg = resolve("ppo_policy", {}, args.profile)
    sft_model, reward_model = find_models(args.profile)
    policy, tokenizer = load_causal_lm(sft_model)
    reference, _ = load_causal_lm(sft_model)
    scorer, _ = load_reward_model(reward_model)
    critic, _ = load_reward_model(reward_model)
    for model in (policy, reference, scorer, critic):
        model.eval()
    texts = [  # the profile's own prompts in the model's own template, as ppo_policy formats them
        format_prompt(r["prompt"], tokenizer) for r in load_labels(labels_dir() / "prompts.jsonl", "prompts").records
    ][: cfg.rollout_batch_size]
    pad, eos, temperature = tokenizer.pad_token_id, tokenizer.eos_token_id, cfg.temperature

    def multinomial_rollout():
        tokenizer.padding_side = "left"
        batch = tokenizer(texts, return_tensors="pt", padding=True)
        tokenizer.padding_side = "right"
        with torch.no_grad():
            out = policy.generate(
                **batch,
                max_new_tokens=cfg.max_new_tokens,
                pad_token_id=pad,
                eos_token_id=eos,
                suppress_tokens=[pad],
                use_cache=True,
                do_sample=True,
                temperature=temperature,
                top_k=0,
                top_p=1.0,
                output_scores=True,
                return_dict_in_generate=True,
            )
        response = out.sequences[:, batch["input_ids"].shape[1] :]
        return torch.log_softmax(torch.stack(out.scores, dim=1).float(), dim=-1).gather(-1, response.unsqueeze(-1))

    def inverse_cdf_rollout():
        return generate_tokens(policy, tokenizer, texts, cfg.max_new_tokens, temperature, return_logprobs=True)

    torch.manual_seed(0)
    query, response = generate_tokens(policy, tokenizer, texts, cfg.max_new_tokens, temperature)
    response, _ = truncate_after_eos(response, eos, pad)
    query_response = torch.cat([query, response], dim=1)
    attention, mask, n_query = query_response != pad, (response != pad).float(), query.shape[1]
    last = n_query + mask.sum(dim=1).long() - 1

    def padded_scoring():
        with torch.no_grad():
            response_logprobs(reference, query_response, attention, n_query, temperature, pad)
            per_token_scores(critic, query_response, attention)
            per_token_scores(scorer, query_response, attention)[torch.arange(len(last)), last]

    def packed_scoring():
        score_rollouts(
            policy,
            reference,
            scorer,
            critic,
            query,
            query != pad,
            response,
            mask.sum(dim=1),
            temperature,
            pad,
            cfg.minibatch_size,
        )

    params = [p for p in (*policy.parameters(), *critic.parameters())]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    loop_adamw = torch.optim.AdamW(params, lr=cfg.learning_rate, eps=1e-5)
    fused_adamw = torch.optim.AdamW(params, lr=cfg.learning_rate, eps=1e-5, fused=True)
    steps_per_iteration = cfg.ppo_epochs * cfg.rollout_batch_size // cfg.minibatch_size

    def whole_rows_against_shared_opening():
        """(scoring, one optimization epoch) as ppo_train runs them, each a (before, after) pair of calls."""
        lora_policy, lora_reference, lora_scorer, lora_critic, _ = ppo.ppo_models(
            str(sft_model), str(reward_model), cfg
        )
        lengths, query_mask = mask.sum(dim=1), query != pad
        order = torch.sort(query_mask.sum(dim=1) + lengths, stable=True).indices.split(cfg.minibatch_size)
        learner = ppo.Learner(lora_policy, lora_critic).train()
        pack = ppo.pack_minibatch  # the function itself: scoring swaps the module's name for a variant

        def scoring(share: bool):
            ppo.pack_minibatch = functools.partial(pack, share_prefix=share)  # as score_rollouts packs
            try:
                score_rollouts(
                    lora_policy,
                    lora_reference,
                    lora_scorer,
                    lora_critic,
                    query,
                    query_mask,
                    response,
                    lengths,
                    temperature,
                    pad,
                    cfg.minibatch_size,
                )
            finally:
                ppo.pack_minibatch = pack

        def epoch(share: bool):
            for idx in order:
                packed = pack(query[idx], query_mask[idx], response[idx], lengths[idx], pad, share_prefix=share)
                logprobs, _, values = learner(packed, temperature, pad)
                ((logprobs * mask[idx, : packed.width]).sum() + values.square().mean()).backward()
            learner.zero_grad()

        return (
            alternate(lambda: scoring(False), lambda: scoring(True), args.repeats),
            alternate(lambda: epoch(False), lambda: epoch(True), args.repeats),
        )

    # (tag, what is measured, before, after, times per iteration, the measurement): each run only if asked for
    candidates = [
        ("PPO-15", "[PPO-15] scoring a rollout batch", "padded batch", "packed in length order", 1,
         lambda: alternate(padded_scoring, packed_scoring, args.repeats)),
        ("PPO-16", "[PPO-16] one optimizer step", "AdamW, CPU default (per-tensor loop)", "AdamW(fused=True)",
         steps_per_iteration, lambda: alternate(loop_adamw.step, fused_adamw.step, args.repeats)),
        ("PPO-17", "[PPO-17] sampling a rollout with log-probs", "generate(do_sample=True, output_scores=True)",
         "inverse-CDF sampler", 1, lambda: alternate(multinomial_rollout, inverse_cdf_rollout, args.repeats)),
    ]  # fmt: skip
    measured = [(name, b, a, per, measure()) for tag, name, b, a, per, measure in candidates if tag in wanted]
    if "PPO-20" in wanted:
        shared_scoring, shared_epoch = whole_rows_against_shared_opening()
        whole, shared = "every row its whole query", "shared opening once"
        measured += [
            ("[PPO-20] scoring a rollout batch", whole, shared, 1, shared_scoring),
            ("[PPO-20] one optimization epoch (forward + backward of each minibatch)", whole, shared, cfg.ppo_epochs, shared_epoch),
        ]  # fmt: skip
    results = [
        {
            "saving": name,
            "before": b,
            "after": a,
            "before_seconds": before,
            "after_seconds": after,
            "after_over_before": after / before,
            "per_iteration": per,
            "seconds_saved_per_iteration": (before - after) * per,
        }
        for name, b, a, per, (before, after) in measured
    ]
    rows = [
        [
            r["saving"],
            r["before"],
            r["before_seconds"],
            r["after"],
            r["after_seconds"],
            r["after_over_before"],
            r["per_iteration"],
            r["seconds_saved_per_iteration"],
        ]
        for r in results
    ]
    table = "\n".join(
        [
            f"### bench/ppo_savings.py — profile `{args.profile}`: each saving alone (median of {args.repeats}, before and after alternating, one process)",
            "",
            markdown_table(
                [
                    "saving",
                    "before",
                    "before s",
                    "after",
                    "after s",
                    "after / before",
                    "times per iteration",
                    "s saved per iteration",
                ],
                rows,
            ),
            "",
            f"Rollout: {len(texts)} prompts, up to {cfg.max_new_tokens} new tokens; optimizer: {sum(p.numel() for p in params):,} parameters.",
            "",
            f"Machine: {machine_line(info)}",
        ]
    )
    save_results("ppo_savings", args.profile, {"profile": args.profile, "machine": info, "results": results}, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
