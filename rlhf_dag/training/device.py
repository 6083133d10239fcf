"""Where the models live: CUDA when there is one, else the CPU; and the precision of the TRL trainers."""

from __future__ import annotations

import torch


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def bf16() -> bool:
    """bf16 mixed precision (fp32 weights, bf16 matrix products) for the TRL trainers where the GPU has it; fp32 on CPU,
    where it only costs time. Our PPO loop stays fp32: under bf16 autocast it diverged on an H200 (docs/benchmarks.md)."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
