"""LoRA with peft: low-rank adapters trained on frozen base weights instead of a full fine-tune.

A step whose config sets `lora` trains adapters only: SFT and the reward model
through TRL's `peft_config` (the reward model's new score head trains whole, as
peft does for a classifier), PPO's policy through `adapt` (its reference is the
same model with the adapter disabled: one copy of the base weights, frozen).

A LoRA model is saved twice in its folder (`save_pretrained`): the adapter alone
in `adapter/` (`PeftModel.from_pretrained(<upstream model>, <folder>/adapter)`),
and, at the top, the weights with the adapter merged in: a plain model dir, which
the asset's handle points to, downstream steps load and plain transformers loads.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import LoRAConfig

ADAPTER_DIR = "adapter"


def peft_config(cfg: LoRAConfig, task_type: str):
    """peft's LoraConfig for a causal LM ("CAUSAL_LM") or a reward model ("SEQ_CLS")."""
    from peft import LoraConfig

    modules = "all-linear" if cfg.target_modules == ["all-linear"] else list(cfg.target_modules)
    return LoraConfig(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=modules, task_type=task_type
    )


def adapt(model, cfg: LoRAConfig, task_type: str = "CAUSAL_LM"):
    """`model` wrapped with fresh LoRA adapters (B = 0: it still computes exactly what `model` does); base weights
    frozen (a reward model's score head, "SEQ_CLS", trains whole)."""
    from peft import get_peft_model

    return get_peft_model(model, peft_config(cfg, task_type))


def is_adapted(model) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


class MergedCopy:
    """A plain copy of a LoRA model with its adapter merged in, refreshed before each rollout: sampling runs at the
    plain model's speed (no adapter matmuls per layer and token: at 135M on a CPU, 56 vs 96 new tokens/s, issue #28)
    while training keeps the adapter apart and the reference (the adapter disabled) exact. peft's own
    `merge_adapter`/`unmerge_adapter` would add and subtract the adapter in the shared base weights, and the
    rounding left behind each time would move the reference."""

    def __init__(self, model):
        import copy

        from peft.tuners.lora import LoraLayer

        base = model.get_base_model()
        self.model = copy.deepcopy(base).eval().requires_grad_(False)
        self._layers = []  # (the LoRA layer of the trained model, the plain Linear of the copy it is merged into)
        for name, module in base.named_modules():
            if isinstance(module, LoraLayer):
                parent, _, child = name.rpartition(".")
                linear = self.model.get_submodule(name).base_layer
                setattr(self.model.get_submodule(parent) if parent else self.model, child, linear)
                self._layers.append((module, linear))

    @torch.no_grad()
    def refresh(self):
        """The copy with the adapter's current weights merged in: W + scale * B @ A per layer."""
        for layer, linear in self._layers:
            merged = layer.base_layer.weight.detach().clone()
            for adapter in layer.active_adapters:
                merged += layer.get_delta_weight(adapter)
            linear.weight.copy_(merged)
        return self.model


def parameter_counts(model) -> dict[str, int]:
    """All parameters and those that train (a full fine-tune: all of them)."""
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }


def save_pretrained(model, folder: Path) -> object:
    """Save `model` into `folder` and return what was saved there.

    A peft model: the adapter into `folder/adapter`, then its merged weights into `folder`. Merging is peft's
    `merge_and_unload`, in place (no second copy of the weights): the returned plain model replaces it.
    """
    folder = Path(folder)
    if not is_adapted(model):
        model.save_pretrained(folder, safe_serialization=True)
        return model
    model.save_pretrained(folder / ADAPTER_DIR, safe_serialization=True)
    merged = model.merge_and_unload()
    merged.save_pretrained(folder, safe_serialization=True)
    return merged


def fine_tune_tag(cfg) -> dict[str, str]:
    """How the step trained: 'full', or the LoRA settings (the model dir then also holds adapter/)."""
    return {
        "fine_tune": "full"
        if cfg.lora is None
        else f"lora r={cfg.lora.r} alpha={cfg.lora.alpha:g} target_modules={','.join(cfg.lora.target_modules)}"
    }
