"""Process-group set-up from ``torchrun``'s environment; nothing beyond torch.distributed."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group ``torchrun`` describes (NCCL on GPU, gloo on CPU); a single
    process without those variables runs alone."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def union_over_processes(items: Iterable[str]) -> list[str]:
    """Every process's ``items``, each once (rank 0's first); ``items`` itself in a single process."""
    items = list(dict.fromkeys(items))
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return items
    gathered: list[list[str] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, items)
    return list(dict.fromkeys(item for part in gathered for item in part))


def any_over_processes(flag: torch.Tensor) -> bool:
    """Whether ``flag`` (a bool tensor on this process's device) is true on any process: one sync."""
    flag = flag.detach().reshape(()).to(torch.int32)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def all_gather_tensors(tensor: torch.Tensor) -> list[torch.Tensor]:
    """Every process's 1-D CPU ``tensor`` (lengths may differ), rank 0's first; ``[tensor]`` alone."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [tensor]
    gathered: list[torch.Tensor | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, tensor)
    return list(gathered)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
