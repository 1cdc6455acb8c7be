"""Patch-level semantics of the patch head (the iBOT paper's pattern figure): for a few prototypes
of the patch head, the patches of a dataset that it gives the highest probability.

Each patch token goes through the patch head (:meth:`ibot.models.head.IBOTHead.forward_patch`;
with a shared head the same prototypes serve [CLS] and patches), and
``softmax(logits / temperature)`` over the prototypes is the patch's probability of each one.
:class:`PatchTopK` keeps a running top-k per prototype over the batches (memory: ``top_k``
entries per prototype, never the dataset's tokens) and the argmax counts of every prototype,
from which the most used ones are shown. A found patch is drawn as a crop of its image: a
window of ``2 * context + 1`` token cells centred on it (shifted to stay inside the image), the
patch itself outlined.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ibot.models.tokens import patch_tokens
from ibot.visualize.grid import Cell, GridLayout, grid_figure, save_png
from ibot.visualize.images import display_scale, upscale

OUTLINE = (255, 210, 0)  # the found patch's frame


@dataclass
class TopPatches:
    """The best patches of ``prototypes`` (K,), best first: row ``r`` of ``scores``, ``images``
    (dataset index), ``rows`` and ``cols`` (token cell), each (K, top_k), belongs to
    ``prototypes[r]``; image -1 marks an empty slot (fewer patches than top_k). ``counts`` (K,):
    patches whose argmax is that prototype, out of ``num_patches``."""

    prototypes: torch.Tensor
    scores: torch.Tensor
    images: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor
    counts: torch.Tensor
    num_patches: int

    def entries(self, r: int) -> list[tuple[float, int, int, int]]:
        """``(probability, image, row, col)`` of row ``r``'s filled slots, best first."""
        return [(float(s), int(i), int(y), int(x))
                for s, i, y, x in zip(self.scores[r], self.images[r], self.rows[r], self.cols[r]) if i >= 0]


def check_prototype_ids(prototype_ids: Sequence[int], num_prototypes: int) -> None:
    """One line if ``prototype_ids`` is empty or names a prototype the head does not have."""
    if not prototype_ids:
        raise ValueError("--prototype-ids needs at least one id")
    wrong = [i for i in prototype_ids if not 0 <= i < num_prototypes]
    if wrong:
        raise ValueError(f"prototype ids {wrong} are out of range: the patch head has {num_prototypes} "
                         f"prototypes (0 to {num_prototypes - 1})")


class PatchTopK:
    """Running top-``top_k`` patches per prototype, fed batches of patch probabilities.

    ``prototype_ids`` limits the search to those prototypes (in that order); by default every
    prototype is followed and :meth:`result` shows the most used ones."""

    def __init__(self, num_prototypes: int, top_k: int, prototype_ids: Sequence[int] | None = None) -> None:
        if top_k < 1:
            raise ValueError(f"--top-k must be at least 1, got {top_k}")
        if prototype_ids is not None:
            check_prototype_ids(prototype_ids, num_prototypes)
        self.num_prototypes, self.top_k = num_prototypes, top_k
        self.columns = None if prototype_ids is None else torch.tensor(list(prototype_ids), dtype=torch.long)
        self.counts = torch.zeros(num_prototypes, dtype=torch.long)
        self.num_patches = 0
        self.scores: torch.Tensor | None = None  # (C, top_k), C the followed prototypes
        self.where: torch.Tensor | None = None  # (3, C, top_k): image, row, col

    def update(self, probs: torch.Tensor, image_ids: torch.Tensor) -> None:
        """Add a batch: probabilities (B, h, w, P) of the images ``image_ids`` (B,)."""
        b, h, w, p = probs.shape
        if p != self.num_prototypes or len(image_ids) != b:
            raise ValueError(f"expected (B, h, w, {self.num_prototypes}) probabilities of {len(image_ids)} images, "
                             f"got {tuple(probs.shape)}")
        device = probs.device
        flat = probs.reshape(b * h * w, p)
        self.counts += torch.bincount(flat.argmax(1), minlength=p).cpu()
        self.num_patches += b * h * w
        if self.columns is not None:
            flat = flat[:, self.columns.to(device)]
        flat = flat.T.float()  # (C, M)
        if self.scores is None:
            self.scores = torch.full((len(flat), self.top_k), float("-inf"), device=device)
            self.where = torch.full((3, len(flat), self.top_k), -1, dtype=torch.long, device=device)
        cells = torch.arange(b * h * w, device=device)
        found = torch.stack([image_ids.to(device).long().repeat_interleave(h * w), cells // w % h, cells % w])
        values, index = torch.cat([self.scores, flat], dim=1).topk(self.top_k, dim=1)  # over kept + new
        kept = self.where.gather(2, index.clamp(max=self.top_k - 1).expand(3, -1, -1))
        new = found[:, (index - self.top_k).clamp(min=0)]  # (3, C, top_k)
        self.scores, self.where = values, torch.where(index < self.top_k, kept, new)

    def result(self, num_shown: int = 8) -> TopPatches:
        """The followed prototypes (``prototype_ids``), else the ``num_shown`` most used (ties: lower id)."""
        if self.scores is None:
            raise ValueError("no patches were seen")
        if self.columns is not None:
            prototypes, rows = self.columns, torch.arange(len(self.columns))
        else:
            if num_shown < 1:
                raise ValueError(f"--prototypes must be at least 1, got {num_shown}")
            prototypes = torch.sort(self.counts, descending=True, stable=True).indices[:num_shown]
            rows = prototypes
        where = self.where[:, rows.to(self.where.device)].cpu()
        return TopPatches(prototypes.clone(), self.scores[rows.to(self.scores.device)].cpu(), where[0], where[1],
                          where[2], self.counts[prototypes], self.num_patches)


def find_top_patches(batches: Iterable[tuple[torch.Tensor, torch.Tensor]], top_k: int = 8, num_shown: int = 8,
                     prototype_ids: Sequence[int] | None = None) -> TopPatches:
    """The top patches of :class:`PatchTopK` over ``batches`` of ``(probabilities (B, h, w, P), image ids (B,))``."""
    search: PatchTopK | None = None
    for probs, image_ids in batches:
        if search is None:
            search = PatchTopK(probs.shape[-1], top_k, prototype_ids)
        search.update(probs, image_ids)
    if search is None:
        raise ValueError("no patches were seen")
    return search.result(num_shown)


@torch.no_grad()
def patch_probabilities(backbone: nn.Module, head: nn.Module, images: torch.Tensor,
                        temperature: float = 0.07) -> torch.Tensor:
    """Images (B, 3, H, W) -> each patch's probability of each prototype (B, h, w, patch_out_dim)."""
    logits = head.forward_patch(patch_tokens(backbone, images))  # (B, h, w, D) -> (B, h, w, P)
    return F.softmax(logits.float() / temperature, dim=-1)


class IndexedImages(Dataset):
    """``(image, dataset index)`` of the images ``indices`` of a ``(image, label)`` dataset."""

    def __init__(self, base: Dataset, indices: Sequence[int]) -> None:
        self.base, self.indices = base, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.base[self.indices[i]][0], self.indices[i]


def spread_indices(n: int, max_images: int) -> list[int]:
    """``max_images`` indices of ``range(n)`` spread evenly over it (all when fewer)."""
    if max_images < 1:
        raise ValueError(f"--max-images must be at least 1, got {max_images}")
    count = min(n, max_images)
    return [i * n // count for i in range(count)]


def scan_dataset(backbone: nn.Module, head: nn.Module, base: Dataset, transform: Callable, indices: Sequence[int],
                 top_k: int = 8, num_shown: int = 8, prototype_ids: Sequence[int] | None = None,
                 temperature: float = 0.07, batch_size: int = 64, num_workers: int = 0,
                 device: torch.device | str = "cpu", progress: bool = True) -> tuple[TopPatches, list[str]]:
    """:func:`find_top_patches` over the images ``indices`` of ``base`` through ``transform``;
    returns the result and the unreadable images skipped."""
    from ibot.data.views import EvalDataset, collate_skip_none
    from ibot.progress import progress_bar

    if temperature <= 0:
        raise ValueError(f"--temperature must be positive, got {temperature}")
    loader = DataLoader(EvalDataset(IndexedImages(base, indices), transform), batch_size=batch_size,
                        num_workers=num_workers, collate_fn=collate_skip_none)
    skipped: list[str] = []

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, ids, why in progress_bar(loader, desc="patch head", unit="batch", disable=not progress,
                                             leave=False):
            skipped.extend(why)
            if len(images):
                yield patch_probabilities(backbone, head, images.to(device), temperature), ids

    try:
        return find_top_patches(batches(), top_k, num_shown, prototype_ids), skipped
    except ValueError as exc:
        if str(exc) == "no patches were seen":
            raise ValueError(f"no readable image among the {len(indices)} images scanned") from None
        raise


def patch_crop(pixels: np.ndarray, row: int, col: int, stride: int, context: int = 1) -> tuple[np.ndarray, int, int]:
    """The window of ``2 * context + 1`` token cells around cell ``(row, col)`` of (H, W, 3) ``pixels``,
    shifted to stay inside the image (cut where the image is smaller); returns the crop and the
    (top, left) pixel of the cell in it."""
    side = (2 * context + 1) * stride
    starts = []
    for cell, extent in ((row, pixels.shape[0]), (col, pixels.shape[1])):
        starts.append(int(np.clip((cell - context) * stride, 0, max(extent - side, 0))))
    top, left = starts
    crop = pixels[top:top + side, left:left + side]
    return crop, row * stride - top, col * stride - left


def outline(pixels: np.ndarray, top: int, left: int, height: int, width: int, thickness: int = 2,
            color: tuple[int, int, int] = OUTLINE) -> np.ndarray:
    """A copy of ``pixels`` with a frame ``thickness`` pixels wide just inside the box."""
    framed = pixels.copy()
    t = max(1, min(thickness, height // 2, width // 2))
    box = framed[top:top + height, left:left + width]
    box[:t], box[-t:], box[:, :t], box[:, -t:] = color, color, color, color
    return framed


def pattern_cells(top: TopPatches, image: Callable[[int], np.ndarray], stride: int, context: int = 1,
                  min_side: int = 96) -> list[list[Cell]]:
    """One row per prototype: the crops around its patches, zoomed to ``min_side``, patch outlined,
    titled with the probability. ``image(index)`` gives a dataset image as the network saw it."""
    if context < 0:
        raise ValueError(f"--context must be at least 0, got {context}")
    shown: dict[int, np.ndarray] = {}
    rows = []
    for r in range(len(top.prototypes)):
        cells = []
        for score, index, row, col in top.entries(r):
            if index not in shown:
                shown[index] = image(index)
            crop, y, x = patch_crop(shown[index], row, col, stride, context)
            zoom = display_scale(*crop.shape[:2], min_side)
            cells.append(Cell(outline(upscale(crop, zoom), y * zoom, x * zoom, stride * zoom, stride * zoom,
                                      thickness=max(2, zoom // 3)), f"{score:.3g}"))
        rows.append(cells)
    return rows


def save_patterns(top: TopPatches, image: Callable[[int], np.ndarray], path: str | Path, stride: int,
                  context: int = 1, title: str = "") -> tuple[Path, GridLayout]:
    """The grid of :func:`pattern_cells`, rows labelled by prototype id; returns its path and layout."""
    cells = pattern_cells(top, image, stride, context)
    if not any(cells):
        raise ValueError("no patches to draw")
    labels = [f"#{int(p)}" for p in top.prototypes]
    fig, _, layout = grid_figure(cells, header=title, row_labels=labels)
    return save_png(fig, path), layout
