"""`labeling_candidates`: K responses per prompt from a policy, for one labeling batch that people rank in Label Studio."""

from __future__ import annotations

from ..config import LabelingConfig
from ..data.chat import format_prompt
from ..data.label_files import load_labels
from .result import StepResult, step


@step
def labeling_candidates(inputs: dict[str, str], cfg: LabelingConfig) -> StepResult:
    """K responses per prompt from the configured policy, for one labeling batch (`inputs["batch"]`, the partition)."""
    import hashlib

    from ..data.feedback import batch_prompts
    from .generate import sample
    from .models import load_causal_lm

    if cfg.policy not in ("sft_model", "ppo_policy"):
        raise ValueError(f"labeling_candidates: policy must be 'sft_model' or 'ppo_policy', got {cfg.policy!r}")
    if cfg.responses_per_prompt < 2:
        raise ValueError(
            f"labeling_candidates: responses_per_prompt must be at least 2 to rank, got {cfg.responses_per_prompt}"
        )
    batch = inputs["batch"]
    prompts = batch_prompts(load_labels(inputs["prompts"], "prompts").records, batch, cfg.prompts_per_batch)
    model, tokenizer = load_causal_lm(inputs[cfg.policy])
    repeated = [r for r in prompts for _ in range(cfg.responses_per_prompt)]
    seed = cfg.seed + int(hashlib.sha256(batch.encode()).hexdigest()[:8], 16)
    samples = sample(
        model,
        tokenizer,
        [r["prompt"] for r in repeated],
        [format_prompt(r["prompt"], tokenizer) for r in repeated],
        cfg.max_new_tokens,
        cfg.temperature,
        seed=seed,
        precision=cfg.sample_precision,
    )
    candidates, duplicates, left_out = [], 0, 0
    for n, record in enumerate(prompts):
        drawn = [s.response.strip() for s in samples[n * cfg.responses_per_prompt : (n + 1) * cfg.responses_per_prompt]]
        responses = list(dict.fromkeys(r for r in drawn if r))
        duplicates += sum(1 for r in drawn if r) - len(responses)
        if len(responses) < 2:  # nothing to rank
            left_out += 1
            continue
        candidates.append({"prompt_id": record["id"], "prompt": record["prompt"], "responses": responses})
    if not candidates:
        raise ValueError(
            f"labeling_candidates: every prompt of batch {batch!r} got fewer than two different responses from {cfg.policy}; raise temperature"
        )
    responses = sum(len(c["responses"]) for c in candidates)
    metrics = {
        "prompts": len(candidates),
        "responses": responses,
        "duplicates_dropped": duplicates,
        "prompts_left_out": left_out,
        "comparisons_if_ranked": sum(len(c["responses"]) * (len(c["responses"]) - 1) // 2 for c in candidates),
    }
    preview = "\n\n".join(f"**{c['prompt']}**\n" + "\n".join(f"- {r}" for r in c["responses"]) for c in candidates[:3])
    return StepResult(
        "labeling_candidates",
        metrics,
        list(metrics),
        inputs=inputs,
        tags={"policy": cfg.policy, "batch": batch},
        main_file="candidates.json",
        records={"candidates.json": candidates},
        texts={"preview.md": preview},
    )
