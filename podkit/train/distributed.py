"""torch.distributed, started by torchrun: gloo on CPU, nccl on CUDA. One process = world of 1."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_distributed(device: str) -> tuple[int, int, int]:
    """(rank, world_size, local_rank); initialises the process group when torchrun started us."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return 0, 1, 0
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), local_rank


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over processes (a no-op alone): every rank gets the same figure."""
    if not is_distributed():
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean over processes (a no-op alone): every rank gets the same statistic."""
    return all_reduce_sum(t) / (dist.get_world_size() if is_distributed() else 1)


def any_rank(flag: bool, device) -> bool:
    """True on every rank if it is true on one (stop requests, non-finite losses)."""
    if not is_distributed():
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def barrier() -> None:
    if is_distributed():
        dist.barrier()
