"""Why a policy misses a source prompt: which of the gold's required parts its samples leave out, per model.

    .venv/bin/python bench/source_misses.py [--profile smollm2] [--model NAME=DIR ...] [--samples 16]

`policy_evaluation` reports one figure per source prompt: the share of 16 samples (T = 0.7) the gold judge calls
right. This probe says what the wrong ones lack. For each model it draws `--samples` responses to each of the
source's four prompts at the evaluation's settings (the profile's `policy_evaluation` temperature for the source
prompts, length cap and seed) and counts, per prompt, the samples that are right and, for the wrong ones, the
required parts they miss (`data/gold.py` REQUIRED: the story's hero, villain, AI and fight; the email's salutation,
greeting and question; the code's function and condition; the sum's result).

For the story it also asks how surely each model spells the villain: the probability of each token of the villain's
name, read after the demonstrations' opener ("Every night Harry Potter fought"), at the same temperature. A name
the model splits into several tokens can be completed wrongly from the middle on ("Voldem" + "ath"), and no
rollout of PPO's ever asks for that name if the training prompts never do.

With no `--model` it reads the last `bench/quality.py` run: the instruct model and SFT of its shared models and the
PPO policy of each seed. Writes bench/results/source_misses-<profile>.json and .md.
"""

from __future__ import annotations

import collections
import json
import os
import sys

from harness import REPO, SCRATCH, bench_parser, machine, machine_line, markdown_table, save_results


def default_models(profile: str) -> dict[str, str]:
    """The last bench/quality.py run's instruct model, SFT and each seed's PPO policy."""
    root = SCRATCH / f"quality-{profile}"
    shared = json.loads((root / "shared" / "paths.json").read_text())
    models = {"instruct": shared["base_model"], "sft": shared["sft_model"]}
    for seed_dir in sorted(root.glob("seed-*")):
        if (seed_dir / "ppo_policy").is_dir():
            models[f"ppo {seed_dir.name}"] = str((seed_dir / "ppo_policy").relative_to(REPO))
    return models


def misses(prompt: str, response: str) -> list[str]:
    """The required parts a response to a source prompt leaves out ([] when the gold judge calls it right)."""
    from rlhf_dag.data.gold import REQUIRED, content_checks, is_correct, parse_task

    if is_correct(prompt, response):
        return []
    task = parse_task(prompt)
    if task.kind == "math":
        return ["result"]
    checks = content_checks(task, response)
    return [name for name in REQUIRED[task.kind] if not checks[name]]


def story_prompt(hero: str, villain: str) -> str:
    return f"Generate a story about {hero} using AI to fight {villain}"


def name_tokens(model, tokenizer, hero: str, villain: str, temperature: float) -> list[dict]:
    """Each token of the villain's name after "Every night <hero> fought", teacher-forced, in the story prompt of the
    source's wording: the token, its probability at `temperature`, and the likeliest other token there."""
    import torch

    from rlhf_dag.data.chat import format_prompt

    context = tokenizer(
        format_prompt(story_prompt(hero, villain), tokenizer) + f"Every night {hero} fought", add_special_tokens=False
    )["input_ids"]
    name = tokenizer(" " + villain, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([context + name])).logits[0]
    probs = torch.softmax(logits[len(context) - 1 : -1].float() / temperature, dim=-1)
    tokens = []
    for i, t in enumerate(name):
        other = probs[i].clone()
        other[t] = 0
        tokens.append(
            {
                "token": tokenizer.decode([t]),
                "p": probs[i, t].item(),
                "instead": tokenizer.decode([int(other.argmax())]),
            }
        )
    return tokens


# stories in the demonstrations' words; {h} the hero, {f} the hero's first name, {v} the villain
STORY_TEMPLATES = (
    "Every night {h} fought {v}. The AI helped and the battle was long, and {v} was defeated at last.",
    "{h} had trained an AI for years to fight {v}. When {v} attacked, the AI predicted every move, and {f} blocked "
    "each one. Together they defeated {v}.",
    "{h} battled {v}. The battle was long and {v} was fierce.",
    "{h} defeated {v} with the help of the AI.",
)


def reward_model_on_names(path: str, hero: str, villain: str, variants: dict[str, str]) -> dict[str, list[float]]:
    """The reward model's score of each template story to the source's story prompt, with the villain written as
    each variant (the name asked, a misspelling, another story's villain)."""
    from rlhf_dag.training.models import load_reward_model
    from rlhf_dag.training.reward import score_texts

    model, tokenizer = load_reward_model(path)
    model.eval()
    prompt = story_prompt(hero, villain)
    texts = [t.format(h=hero, f=hero.split()[0], v=written) for written in variants.values() for t in STORY_TEMPLATES]
    scores = score_texts(model, tokenizer, [prompt] * len(texts), texts)
    k = len(STORY_TEMPLATES)
    return {name: scores[i * k : (i + 1) * k] for i, name in enumerate(variants)}


def main() -> int:
    parser = bench_parser(__doc__, default_profile="smollm2")
    parser.add_argument(
        "--model",
        action="append",
        metavar="NAME=DIR",
        help="a causal LM folder to probe, under a name (repeatable; default: the last bench/quality.py run's)",
    )
    parser.add_argument(
        "--samples", type=int, default=None, help="samples per source prompt (default: the evaluation's)"
    )
    parser.add_argument(
        "--reward-model", help="also score stories with the villain as asked, misspelled and swapped with this RM"
    )
    args = parser.parse_args()
    os.environ["RLHF_DAG_PROFILE"] = args.profile
    import torch

    from rlhf_dag.config import resolve
    from rlhf_dag.data.chat import format_prompt
    from rlhf_dag.data.domain import HEROES_VILLAINS, SOURCE_PROMPTS, parse_task
    from rlhf_dag.training.generate import sample
    from rlhf_dag.training.models import load_causal_lm

    torch.set_num_threads(min(2, torch.get_num_threads()))
    cfg = resolve("policy_evaluation")
    n = args.samples or cfg.source_prompt_samples
    temperature = cfg.source_prompt_temperature
    models = dict(m.split("=", 1) for m in args.model) if args.model else default_models(args.profile)
    story = parse_task(next(p for p in SOURCE_PROMPTS if parse_task(p).kind == "story")).params
    hero, villain = story["hero"], story["villain"]
    if story_prompt(hero, villain) not in SOURCE_PROMPTS:
        raise SystemExit("bench/source_misses.py: the source's story prompt is no longer in story_prompt's words")
    results, rows = {}, []
    for name, path in models.items():
        model, tokenizer = load_causal_lm(path)
        model.eval()
        prompts = [p for p in SOURCE_PROMPTS for _ in range(n)]
        samples = sample(
            model,
            tokenizer,
            prompts,
            [format_prompt(p, tokenizer) for p in prompts],
            cfg.max_new_tokens,
            temperature,
            batch_size=n,
            seed=cfg.seed,
        )
        per_prompt = {}
        for prompt in SOURCE_PROMPTS:
            answered = [s.response for s in samples if s.prompt == prompt]
            missed = [misses(prompt, r) for r in answered]
            per_prompt[parse_task(prompt).kind] = {
                "right": sum(not parts for parts in missed),
                "samples": len(missed),
                "missing": dict(collections.Counter(part for parts in missed for part in parts).most_common()),
                "examples_wrong": [r for r, parts in zip(answered, missed, strict=True) if parts][:3],
            }
        names = {v: name_tokens(model, tokenizer, h, v, temperature) for h, v in HEROES_VILLAINS}
        surest = {v: min(t["p"] for t in tokens) for v, tokens in names.items()}
        weakest_other = min((v for v in surest if v != villain), key=surest.get)
        results[name] = {"path": path, "source": per_prompt, "villain_tokens": names}
        rows.append(
            [
                name,
                *(
                    f"{r['right']}/{r['samples']}"
                    + (" (no " + ", ".join(f"{k} {v}" for k, v in r["missing"].items()) + ")" if r["missing"] else "")
                    for r in per_prompt.values()
                ),
                " ".join(f"{t['token']!r} {t['p']:.2f}" for t in names[villain]),
                f"{weakest_other} {surest[weakest_other]:.2f}",
            ]
        )
        print(f"  {name}: " + ", ".join(f"{k} {r['right']}/{r['samples']}" for k, r in per_prompt.items()), flush=True)
        del model
    kinds = [parse_task(p).kind for p in SOURCE_PROMPTS]
    lines = [
        f"### bench/source_misses.py — what each model's wrong samples of the source prompts leave out ({args.profile})",
        "",
        markdown_table(
            [
                "model",
                *(f"{k}: right (missing)" for k in kinds),
                f"{villain}'s tokens, P each",
                f"the other {len(HEROES_VILLAINS) - 1} villains: least sure",
            ],
            rows,
        ),
        "",
        f"{n} samples per prompt at T = {temperature}, up to {cfg.max_new_tokens} new tokens, seed {cfg.seed} "
        "(other draws than the evaluation's: its batches hold other prompts). A villain's tokens are read after "
        f'"Every night <hero> fought", in the source\'s story prompt with that hero and villain; the last column is the '
        "lowest probability of any token of any other villain's name.",
    ]
    if args.reward_model:
        # the misspelling the probed models come nearest to: the likeliest other token where one is least sure
        tokens = min((r["villain_tokens"][villain] for r in results.values()), key=lambda ts: min(t["p"] for t in ts))
        weakest = min(range(len(tokens)), key=lambda i: tokens[i]["p"])
        misspelled = "".join(t["instead"] if i == weakest else t["token"] for i, t in enumerate(tokens)).strip()
        other = next(v for h, v in HEROES_VILLAINS if v != villain)
        variants = {
            f"{villain} (asked)": villain,
            f"{misspelled} (misspelled)": misspelled,
            f"{other} (another's)": other,
        }
        scores = reward_model_on_names(args.reward_model, hero, villain, variants)
        results["reward_model"] = {"path": args.reward_model, "templates": STORY_TEMPLATES, "scores": scores}
        lines += [
            "",
            f"The reward model ({args.reward_model}) on {len(STORY_TEMPLATES)} stories in the demonstrations' words, "
            "each with the villain written three ways (score per story, and the mean):",
            "",
            markdown_table(
                ["villain written", *(f"story {i + 1}" for i in range(len(STORY_TEMPLATES))), "mean"],
                [[k, *v, sum(v) / len(v)] for k, v in scores.items()],
            ),
        ]
    lines += [
        "",
        "Models: " + "; ".join(f"{k} = {v}" for k, v in models.items()),
        f"Machine: {machine_line(machine())}",
    ]
    save_results("source_misses", args.profile, {"profile": args.profile, "models": results}, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
