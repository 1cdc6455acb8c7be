"""A dataset seen through a deterministic transform, unreadable images dropped and counted: what
every evaluation, the segmentation probe and the dataset pictures read."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import Dataset

from ibot.data.datasets import collate_skip_corrupt, safe_getitem

__all__ = ["EvalDataset", "collate_skip_none"]


class EvalDataset(Dataset):
    """``((transform(image), label), None)`` pairs, or ``(None, path)`` for an unreadable image
    (dropped and counted by :func:`ibot.data.datasets.collate_skip_corrupt`). With ``joint``,
    ``transform`` takes the whole item (e.g. an image and its mask) and returns the pair."""

    def __init__(self, base: Dataset, transform: Callable, joint: bool = False) -> None:
        self.base = base
        self.transform = transform
        self.joint = joint

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        item, skipped = safe_getitem(self.base, index)
        if item is None:
            return None, skipped
        if self.joint:
            return self.transform(*item), None
        image, label = item
        return (self.transform(image), label), None


def collate_skip_none(items) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """``(images, labels, skipped paths)`` of an :class:`EvalDataset` batch; empty tensors when
    every image was unreadable."""
    batch, skipped = collate_skip_corrupt(items)
    if batch is None:
        return torch.empty(0), torch.empty(0, dtype=torch.long), skipped
    return batch[0], batch[1], skipped
