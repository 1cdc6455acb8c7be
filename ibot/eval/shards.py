"""Evaluation work shared out over the processes of a ``torchrun`` launch and put back together
in the order one process would have made it.

A pass over a dataset is cut into the batches one process would run; batch ``b`` goes to process
``b % world_size``. Every batch is thus the one-process batch itself (same images, same size), so
what comes back from :func:`gather_batches` is the one-process result, batch for batch.
Without a process group (or with ``sharded=False``) every function is the one-process case.
"""

from __future__ import annotations

from typing import Any, TypeVar

import torch

from ibot.distributed import all_gather_objects, current, gather_rows

T = TypeVar("T")


def _world(sharded: bool) -> tuple[int, int]:
    info = current()
    return (info.rank, info.world_size) if sharded else (0, 1)


def process_batches(n: int, batch_size: int, sharded: bool = True) -> list[list[int]]:
    """This process's batches of ``range(n)`` (``batch_size`` each, the last one shorter), in order."""
    rank, world = _world(sharded)
    starts = range(0, n, batch_size)[rank::world]
    return [list(range(start, min(start + batch_size, n))) for start in starts]


def process_slice(batch: list[T], sharded: bool = True) -> list[T]:
    """This process's contiguous part of one ``batch`` (parts in rank order make up the batch)."""
    rank, world = _world(sharded)
    return batch[rank * len(batch) // world:(rank + 1) * len(batch) // world]


def interleave(per_process: list[list[T]]) -> list[T]:
    """Per-process lists of :func:`process_batches`' batches -> one list in the one-process order."""
    world, total = len(per_process), sum(map(len, per_process))
    return [per_process[b % world][b // world] for b in range(total)]


def gather_batch_objects(items: list[T], sharded: bool = True) -> list[T]:
    """Every process's per-batch ``items`` (picklable), in the one-process batch order."""
    if _world(sharded)[1] == 1:
        return items
    return interleave(all_gather_objects(items))


def gather_batches(parts: list[torch.Tensor | None], sharded: bool = True) -> list[torch.Tensor | None]:
    """Every process's per-batch tensors (rows: the batch's images; ``None``: a batch with none
    readable), in the one-process batch order, on every process."""
    if _world(sharded)[1] == 1:
        return parts
    spec = next(((tuple(p.shape[1:]), p.dtype) for p in parts if p is not None), None)
    meta = all_gather_objects(([-1 if p is None else len(p) for p in parts], spec))
    spec = next((s for _, s in meta if s is not None), None)
    if spec is None:  # no process has a single row
        return interleave([[None] * len(sizes) for sizes, _ in meta])
    mine = [p for p in parts if p is not None]
    local = torch.cat(mine) if mine else torch.empty((0, *spec[0]), dtype=spec[1])
    per_process: list[list[Any]] = []
    for (sizes, _), rows in zip(meta, gather_rows(local)):
        pieces = iter(rows.split([max(s, 0) for s in sizes]))
        per_process.append([next(pieces) if s >= 0 else None for s in sizes])
    return interleave(per_process)


def gather_pieces(piece: torch.Tensor | None, sharded: bool = True) -> torch.Tensor | None:
    """Every process's :func:`process_slice` part of one batch (``None``: no readable image),
    concatenated in rank order: the whole batch (``None`` when no process has a row), on every process."""
    pieces = [p for p in gather_batches([piece], sharded) if p is not None]
    return torch.cat(pieces) if pieces else None
