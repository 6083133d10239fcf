"""Loading the graph's models: plain transformers, safetensors only, never remote code."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from .device import device

# Every model load of the graph: no code from the Hub. transformers 5.25 otherwise swaps layers for Hub kernels
# ("kernels-community/rotary") on CUDA whenever the `kernels` package is installed (it is one of its requirements):
# a download at run time, refused offline ("could not verify publisher trust status"), seen on an H200.
NO_HUB_CODE = {"trust_remote_code": False, "use_kernels": False}


def require_safetensors(path: Path) -> Path:
    """Refuse a model directory without safetensors weights: pickle `.bin` files can run code when loaded."""
    path = Path(path).expanduser().resolve()
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such model directory")
    if not any(path.glob("*.safetensors")):
        found = ", ".join(sorted(p.name for p in path.iterdir())) or "nothing"
        raise ValueError(
            f"{path}: no .safetensors weights (found {found}). rlhf-dag loads only safetensors, since pickle "
            "files can run code; convert with `model.save_pretrained(dir, safe_serialization=True)`."
        )
    return path


def set_special_token_ids(model, tokenizer) -> None:
    """Special-token ids live in the model config and generation config too, or generation never stops."""
    configs = [model.config] + ([model.generation_config] if getattr(model, "generation_config", None) else [])
    for cfg in configs:
        cfg.pad_token_id = tokenizer.pad_token_id
        cfg.eos_token_id = tokenizer.eos_token_id
        cfg.bos_token_id = tokenizer.eos_token_id if tokenizer.bos_token_id is None else tokenizer.bos_token_id


def load_causal_lm(path: str | Path):
    """(model, tokenizer) from an upstream asset's directory, on the training device."""
    path = require_safetensors(Path(path))
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, **NO_HUB_CODE).to(device())
    return model, tokenizer


def load_reward_model(path: str | Path):
    """(sequence-classification model with one score head, tokenizer)."""
    path = require_safetensors(Path(path))
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    model = AutoModelForSequenceClassification.from_pretrained(path, use_safetensors=True, **NO_HUB_CODE).to(device())
    return model, tokenizer
