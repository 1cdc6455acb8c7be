"""Process-group set-up from ``torchrun``'s environment and the few collectives built on it
(pre-training and evaluation alike); nothing beyond torch.distributed.

Every helper is a no-op in a single process. The collectives accept tensors on any device: with
NCCL they travel through this process's GPU and come back on the device they came from.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

# the most bytes one rank sends per all-gather call of gather_rows (a large matrix goes in slices)
GATHER_CHUNK_BYTES = 64 * 2**20


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def is_active() -> bool:
    """Whether this process belongs to a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def current() -> DistInfo:
    """This process's place in the process group (rank 0 of 1 without one)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return DistInfo()


def env_rank() -> int:
    """``torchrun``'s global rank of this process (0 outside ``torchrun``), before any process group."""
    return int(os.environ.get("RANK", "0"))


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group ``torchrun`` describes (NCCL on GPU, gloo on CPU); a single
    process without those variables runs alone. Joining twice returns the group joined."""
    if dist.is_available() and dist.is_initialized():
        return current()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank)


def process_device(device: torch.device) -> torch.device:
    """``device`` for this process: on CUDA under a process group, the GPU of its local rank."""
    device = torch.device(device)
    info = current()
    if device.type == "cuda" and info.world_size > 1:
        return torch.device("cuda", info.local_rank)
    return device


def _comm_device() -> torch.device:
    """Where tensors go for a collective: this process's GPU under NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def union_over_processes(items: Iterable[str]) -> list[str]:
    """Every process's ``items``, each once (rank 0's first); ``items`` itself in a single process."""
    items = list(dict.fromkeys(items))
    if not is_active():
        return items
    return list(dict.fromkeys(item for part in all_gather_objects(items) for item in part))


def any_over_processes(flag: torch.Tensor) -> bool:
    """Whether ``flag`` (a bool tensor) is true on any process: one sync."""
    flag = flag.detach().reshape(()).to(torch.int32)
    if is_active():
        flag = flag.to(_comm_device())
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over the processes (a new tensor on ``tensor``'s device)."""
    if not is_active():
        return tensor.clone()
    out = tensor.detach().to(_comm_device(), copy=True)
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(tensor.device)


def all_gather_objects(obj: Any) -> list[Any]:
    """Every process's ``obj`` (picklable), in rank order."""
    if not is_active():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def gather_rows(tensor: torch.Tensor) -> list[torch.Tensor]:
    """Every process's ``tensor`` (same dtype and trailing shape everywhere, any number of rows),
    in rank order, on ``tensor``'s device: padded to the longest, sent in slices of at most
    :data:`GATHER_CHUNK_BYTES` per process."""
    if not is_active():
        return [tensor]
    device, world = _comm_device(), dist.get_world_size()
    count = torch.tensor([len(tensor)], device=device)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    counts = [int(c) for c in counts]
    longest, trailing = max(counts), tuple(tensor.shape[1:])
    out = [torch.empty((c, *trailing), dtype=tensor.dtype, device=tensor.device) for c in counts]
    row_bytes = max(1, math.prod(trailing) * tensor.element_size())  # the same on every process
    step = max(1, GATHER_CHUNK_BYTES // row_bytes)
    for start in range(0, longest, step):
        end = min(start + step, longest)
        piece = torch.zeros((end - start, *trailing), dtype=tensor.dtype, device=device)
        mine = tensor[start:end]
        piece[:len(mine)] = mine.to(device)
        pieces = [torch.empty_like(piece) for _ in range(world)]
        dist.all_gather(pieces, piece)
        for rank, (received, c) in enumerate(zip(pieces, counts)):
            if start < c:
                out[rank][start:min(end, c)] = received[:min(end, c) - start].to(tensor.device)
    return out


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
