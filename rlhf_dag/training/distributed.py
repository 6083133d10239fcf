"""What the ranks of a multi-process job (`torchrun`, `accelerate launch`, a pod) share: one process group.

A launcher starts every rank with the spec runner (training/steps.py). Each rank
joins the group before any training, so TRL's trainers (through accelerate) and
our PPO loop (through DistributedDataParallel) all-reduce over the same group:
gloo on CPU, NCCL on GPU. Run as one plain process, every function here is a no-op.
"""

from __future__ import annotations

import hashlib
import os

import torch
import torch.distributed as dist


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def init() -> None:
    """Join the job's process group (a no-op in one process, or when already joined)."""
    if world_size() > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend())


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def shard_size(total: int, what: str) -> int:
    """One rank's share of a global batch of `total`: the global batch stays the configured one at any world size."""
    n = world_size()
    if total % n:
        raise ValueError(f"{what}={total} does not split over {n} processes; set it to a multiple of {n}")
    return total // n


def all_sum(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """Each tensor summed over the ranks (the tensors themselves in one process)."""
    if not dist.is_initialized():
        return list(tensors)
    out = []
    for t in tensors:
        t = t.detach().clone()
        dist.all_reduce(t)
        out.append(t)
    return out


def all_mean(values: dict[str, float], maxima: tuple[str, ...] = ()) -> dict[str, float]:
    """Per-rank figures averaged over the ranks (the largest, for the keys in `maxima`): what the run logs."""
    if not dist.is_initialized():
        return values
    keys = list(values)  # the same keys in the same order on every rank
    mean = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    top = mean.clone()
    dist.all_reduce(mean)
    dist.all_reduce(top, op=dist.ReduceOp.MAX)
    return {k: float(top[i]) if k in maxima else float(mean[i]) / world_size() for i, k in enumerate(keys)}


def all_gather(value):
    """Every rank's `value` (any picklable object), in rank order."""
    if not dist.is_initialized():
        return [value]
    out = [None] * world_size()
    dist.all_gather_object(out, value)
    return out


def checksum(result) -> str:
    """sha256 over a step result's weights (the model and its submodels) and its tokenizer's vocabulary: equal on
    every rank when training kept the replicas in sync."""
    digest = hashlib.sha256()
    for model in [result.model, *result.submodels.values()]:
        if model is None:
            continue
        for name, tensor in sorted(model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    if result.tokenizer is not None:
        digest.update(repr(sorted(result.tokenizer.get_vocab().items())).encode())
    return digest.hexdigest()[:16]
