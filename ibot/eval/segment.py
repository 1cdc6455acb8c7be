"""Linear semantic segmentation on frozen patch tokens (DINOv2's "linear" protocol).

The probe is batch norm + a 1 x 1 convolution on the patch-token map (the last block's tokens, or
the last ``n`` blocks' concatenated): logits on the token grid, upsampled bilinearly to the mask,
cross-entropy with :data:`ibot.data.segmentation.IGNORE_INDEX` left out. One probe per learning
rate of a short sweep trains on the same batches; the reported one is the best on the val split
(as ``ibot linear`` reports its best head), with every lr's figures beside it.

- Training views: the short side resized to ``image_size`` (bicubic; masks nearest), centre crop
  ``image_size``: no random augmentation, so the frozen features of every training image are
  extracted once and kept in memory when they fit in ``cache_gb`` (the probe then trains on exactly
  what the backbone would give again), else the backbone runs again every epoch.
- Evaluation, at the masks' own resolution: ``whole``: the short side resized to ``image_size``,
  the long side to the nearest multiple of the token stride, one pass, logits upsampled to the
  mask; ``slide``: the short side resized to ``image_size``, ``image_size`` windows every
  ``stride`` pixels, window logits averaged where they overlap (mmseg's slide inference).
- Scores (:func:`ibot.eval.metrics.segmentation_scores`): mIoU, pixel accuracy, per-class IoU.
- Under ``torchrun`` (``sharded``): the processes share the backbone's work and every one trains
  the same probes. Kept features: each process extracts its share of the batches, and all get the
  whole set (:mod:`ibot.eval.shards`), the one-process features exactly; recomputed ones: each
  process runs its part of every training batch and all get the whole batch. Evaluation: each
  process scores its share of the val batches and the confusion matrices are summed (exact).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from ibot.data.datasets import collate_skip_corrupt
from ibot.data.views import EvalDataset
from ibot.data.segmentation import IGNORE_INDEX
from ibot.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ibot.distributed import all_reduce_sum, union_over_processes
from ibot.eval.metrics import confusion_matrix, segmentation_scores
from ibot.eval.shards import gather_batch_objects, gather_batches, gather_pieces, process_batches, process_slice
from ibot.models.tokens import check_dense_size, patch_tokens
from ibot.progress import progress_bar
from ibot.schedules import cosine_schedule

__all__ = ["DEFAULT_LRS", "DenseFeatures", "PixelPatches", "SegmentConfig", "SegmentationHead", "run_probe"]

DEFAULT_LRS = {"adamw": (1e-3, 3e-3, 1e-2, 3e-2), "sgd": (1e-2, 3e-2, 0.1, 0.3)}
EVAL_MODES = ("whole", "slide")


@dataclass
class SegmentConfig:
    image_size: int  # training crop and evaluation short side
    eval_mode: str = "whole"
    stride: int | None = None  # slide: window step (default: two thirds of a window, on the token grid)
    epochs: int = 20
    train_batch_size: int = 64  # images per probe step
    batch_size: int = 64  # images per forward pass of the backbone
    optimizer: str = "adamw"  # adamw or sgd (momentum 0.9)
    lrs: tuple[float, ...] | None = None  # default: DEFAULT_LRS[optimizer]
    weight_decay: float = 1e-4
    cache_gb: float = 4.0  # keep the training features in memory up to this size
    num_workers: int = 2
    seed: int = 0
    progress: bool = True

    def validate(self, token_stride: int) -> None:
        if self.eval_mode not in EVAL_MODES:
            raise ValueError(f"--eval-mode must be one of {', '.join(EVAL_MODES)}, got {self.eval_mode!r}")
        if self.optimizer not in DEFAULT_LRS:
            raise ValueError(f"--optimizer must be adamw or sgd, got {self.optimizer!r}")
        if self.image_size < token_stride or self.image_size % token_stride:
            raise ValueError(f"--image-size {self.image_size} must be a positive multiple of the token stride "
                             f"{token_stride}")
        for name in ("epochs", "train_batch_size", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.lrs is not None and (not self.lrs or min(self.lrs) <= 0):
            raise ValueError(f"--lrs must be positive, got {list(self.lrs)}")
        if self.stride is not None and not 0 < self.stride <= self.image_size:
            raise ValueError(f"--stride must be in (0, image size], got {self.stride}")


class DenseFeatures(nn.Module):
    """Images (B, 3, H, W) -> patch tokens (B, h, w, D * n_last_blocks) of a frozen backbone."""

    def __init__(self, backbone: nn.Module, n_last_blocks: int = 1) -> None:
        super().__init__()
        self.backbone, self.n_last_blocks = backbone, n_last_blocks
        self.mask_stride = int(backbone.mask_stride)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return patch_tokens(self.backbone, images, self.n_last_blocks)


class PixelPatches(nn.Module):
    """The raw-pixel baseline: each ``stride`` x ``stride`` patch's normalised pixels as its feature,
    (B, 3, H, W) -> (B, H / s, W / s, 3 s^2), on the same grid as the backbone's tokens."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.mask_stride = stride

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        b, _, height, width = images.shape
        check_dense_size(self, height, width)
        cols = F.unfold(images, self.mask_stride, stride=self.mask_stride)  # (B, 3 s^2, h * w)
        return cols.transpose(1, 2).reshape(b, height // self.mask_stride, width // self.mask_stride, -1)


class SegmentationHead(nn.Module):
    """Batch norm + 1 x 1 convolution: tokens (B, h, w, D) -> logits (B, C, h, w)."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(dim)
        self.classifier = nn.Conv2d(dim, num_classes, kernel_size=1)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.norm(tokens.permute(0, 3, 1, 2)))


# ------------------------------------------------------------------------------ views
def _pixels(image) -> torch.Tensor:
    x = TF.to_dtype(TF.pil_to_tensor(image), torch.float32, scale=True)
    return TF.normalize(x, IMAGENET_MEAN, IMAGENET_STD)


def train_view(image, mask: np.ndarray, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Short side to ``size``, centre crop ``size``: (3, S, S) normalised, (S, S) uint8 labels."""
    x = TF.center_crop(TF.resize(_pixels(image), size, InterpolationMode.BICUBIC, antialias=True), size)
    m = torch.from_numpy(np.asarray(mask, np.int64)).to(torch.uint8)[None]
    m = TF.center_crop(TF.resize(m, size, InterpolationMode.NEAREST), size)[0]
    return x, m


def eval_view(image, size: int, token_stride: int, mode: str) -> torch.Tensor:
    """Short side to ``size``; ``whole``: the long side to the nearest multiple of the token stride."""
    short, long = min(image.size), max(image.size)
    long_side = long * size / short
    if mode == "whole":
        long_side = max(token_stride, round(long_side / token_stride) * token_stride)
    long_side = max(size, int(round(long_side))) if mode == "slide" else int(long_side)
    hw = (size, long_side) if image.height <= image.width else (long_side, size)
    return TF.resize(_pixels(image), list(hw), InterpolationMode.BICUBIC, antialias=True)


def _eval_pair(image, mask, size: int, token_stride: int, mode: str):
    return eval_view(image, size, token_stride, mode), torch.from_numpy(np.asarray(mask, np.int64))


def _loader(dataset: Dataset, batches: list[list[int]], num_workers: int, collate: Callable) -> DataLoader:
    return DataLoader(dataset, batch_sampler=batches, num_workers=num_workers,
                      collate_fn=partial(collate_skip_corrupt, collate=collate))


# ------------------------------------------------------------------------------ training
class TrainBatches:
    """(tokens (B, h, w, D), labels (B, S, S)) batches of every epoch: from features kept in memory
    when they fit in ``cfg.cache_gb``, else from the backbone again. ``sharded``: the processes of
    the process group share the backbone's work, and every one gets every batch."""

    def __init__(self, forward: nn.Module, dataset: Dataset, cfg: SegmentConfig, device: torch.device,
                 sharded: bool = False) -> None:
        self.forward, self.cfg, self.device, self.sharded = forward, cfg, device, sharded
        self.views = EvalDataset(dataset, partial(train_view, size=cfg.image_size), joint=True)
        with torch.no_grad():
            probe = forward(torch.zeros(1, 3, cfg.image_size, cfg.image_size, device=device))
        self.dim = probe.shape[-1]
        self.cached = len(dataset) * probe[0].numel() * 4 <= cfg.cache_gb * 2**30
        self.skipped: list[str] = []  # unreadable images met (recomputed features: on this process)
        self.tokens = self.labels = None
        if self.cached:
            self._keep()

    def __len__(self) -> int:
        return len(self.views) - len(self.skipped) if self.cached else len(self.views)

    @torch.no_grad()
    def _keep(self) -> None:
        """Extract the training features once: this process's share of the batches, then all."""
        batches = process_batches(len(self.views), self.cfg.batch_size, self.sharded)
        loader = _loader(self.views, batches, self.cfg.num_workers, torch.utils.data.default_collate)
        tokens, labels, skipped = [], [], []  # one entry per batch (None: no readable image)
        for views, why in progress_bar(loader, desc="features train", unit="batch", disable=not self.cfg.progress,
                                       leave=False):
            skipped.append(why)
            images, masks = views if views is not None else (None, None)
            tokens.append(None if images is None else self.forward(images.to(self.device)).float().cpu())
            labels.append(masks)
        self.skipped = list(dict.fromkeys(p for why in gather_batch_objects(skipped, self.sharded) for p in why))
        self.tokens = torch.cat([t for t in gather_batches(tokens, self.sharded) if t is not None])
        self.labels = torch.cat([m for m in gather_batches(labels, self.sharded) if m is not None])

    @torch.no_grad()
    def _recompute(self, seed: int, desc: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch's batches from the backbone; each process runs its part of every batch."""
        order = torch.randperm(len(self.views), generator=torch.Generator().manual_seed(seed)).tolist()
        size = self.cfg.train_batch_size
        parts = [process_slice(order[start:start + size], self.sharded) for start in range(0, len(order), size)]
        loader = _loader(self.views, parts, self.cfg.num_workers, torch.utils.data.default_collate)
        for views, why in progress_bar(loader, desc=desc, unit="batch", disable=not self.cfg.progress, leave=False):
            self.skipped.extend(p for p in why if p not in self.skipped)
            images, masks = views if views is not None else (None, None)
            tokens = None if images is None else self.forward(images.to(self.device)).float()
            tokens, masks = gather_pieces(tokens, self.sharded), gather_pieces(masks, self.sharded)
            if tokens is not None:
                yield tokens, masks

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        seed = self.cfg.seed * 1000 + epoch
        if not self.cached:
            yield from self._recompute(seed, f"epoch {epoch}")
            return
        order = torch.randperm(len(self.tokens), generator=torch.Generator().manual_seed(seed))
        for start in range(0, len(order), self.cfg.train_batch_size):
            idx = order[start:start + self.cfg.train_batch_size]
            yield self.tokens[idx], self.labels[idx]


def train_heads(batches: TrainBatches, num_classes: int, cfg: SegmentConfig, device: torch.device) -> list[SegmentationHead]:
    """One :class:`SegmentationHead` per learning rate, trained on the same batches (cosine schedule
    per step to 0); every head starts from the same weights."""
    lrs = cfg.lrs or DEFAULT_LRS[cfg.optimizer]
    heads, optimizers = [], []
    for lr in lrs:
        torch.manual_seed(cfg.seed)
        head = SegmentationHead(batches.dim, num_classes).to(device)
        heads.append(head)
        optimizers.append(torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=cfg.weight_decay)
                          if cfg.optimizer == "adamw" else
                          torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=cfg.weight_decay))
    scales = cosine_schedule(1.0, 0.0, cfg.epochs, math.ceil(len(batches) / cfg.train_batch_size))
    step = 0
    for epoch in progress_bar(range(cfg.epochs), desc="segmentation probes", unit="epoch",
                              disable=not cfg.progress, leave=False):
        for tokens, masks in batches.epoch(epoch):
            masks = masks.to(device).long()
            if not (masks != IGNORE_INDEX).any():
                continue
            tokens = tokens.to(device)
            scale = float(scales[min(step, len(scales) - 1)])
            for head, optimizer, lr in zip(heads, optimizers, lrs):
                logits = F.interpolate(head(tokens), size=masks.shape[-2:], mode="bilinear", align_corners=False)
                loss = F.cross_entropy(logits, masks, ignore_index=IGNORE_INDEX)
                for group in optimizer.param_groups:
                    group["lr"] = lr * scale
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            step += 1
    return [head.eval() for head in heads]


# ------------------------------------------------------------------------------ evaluation
def _starts(length: int, window: int, stride: int) -> list[int]:
    starts = list(range(0, max(length - window, 0) + 1, stride))
    return starts if starts[-1] == max(length - window, 0) else [*starts, length - window]


def _slide_logits(forward: nn.Module, heads: list[SegmentationHead], image: torch.Tensor, size: int,
                  stride: int) -> list[torch.Tensor]:
    """Each head's (C, H, W) logits of one image, averaged over overlapping ``size`` windows."""
    height, width = image.shape[-2:]
    boxes = [(t, l) for t in _starts(height, size, stride) for l in _starts(width, size, stride)]
    tokens = forward(torch.stack([image[:, t:t + size, l:l + size] for t, l in boxes]))
    count = torch.zeros(1, height, width, device=image.device)
    for t, l in boxes:
        count[:, t:t + size, l:l + size] += 1
    out = []
    for head in heads:
        logits = F.interpolate(head(tokens), size=(size, size), mode="bilinear", align_corners=False)
        total = torch.zeros(logits.shape[1], height, width, device=image.device)
        for (t, l), window in zip(boxes, logits):
            total[:, t:t + size, l:l + size] += window
        out.append(total / count)
    return out


@torch.no_grad()
def evaluate_heads(forward: nn.Module, heads: list[SegmentationHead], dataset: Dataset, num_classes: int,
                   cfg: SegmentConfig, device: torch.device,
                   sharded: bool = False) -> tuple[list[torch.Tensor], list[str]]:
    """Each head's (C, C) confusion matrix over ``dataset`` at the masks' resolution, and the
    unreadable images skipped. ``sharded``: each process scores its share of the batches and every
    one gets the sums."""
    stride_px = int(forward.mask_stride)
    window_step = cfg.stride or max(stride_px, (2 * cfg.image_size // 3) // stride_px * stride_px)
    views = EvalDataset(dataset, partial(_eval_pair, size=cfg.image_size, token_stride=stride_px, mode=cfg.eval_mode),
                        joint=True)
    loader = _loader(views, process_batches(len(views), cfg.batch_size, sharded), cfg.num_workers, list)
    confusions = [torch.zeros(num_classes, num_classes, dtype=torch.long) for _ in heads]
    skipped: list[list[str]] = []  # per batch
    for items, why in progress_bar(loader, desc="features val", unit="batch", disable=not cfg.progress, leave=False):
        skipped.append(why)
        for shape in dict.fromkeys(tuple(image.shape) for image, _ in items or []):
            group = [(image, mask) for image, mask in items if tuple(image.shape) == shape]
            images = torch.stack([image for image, _ in group]).to(device)
            if cfg.eval_mode == "whole":
                tokens = forward(images).float()
                per_head = [head(tokens) for head in heads]  # (B, C, h, w) each
            else:
                per_image = [_slide_logits(forward, heads, image, cfg.image_size, window_step) for image in images]
                per_head = [torch.stack([logits[j] for logits in per_image]) for j in range(len(heads))]
            masks = [mask for _, mask in group]
            same_size = all(m.shape == masks[0].shape for m in masks)
            for j, logits in enumerate(per_head):
                if same_size:  # one upsampling for the group
                    up = F.interpolate(logits, size=masks[0].shape, mode="bilinear", align_corners=False)
                    confusions[j] += confusion_matrix(up.argmax(1).cpu(), torch.stack(masks), num_classes,
                                                      IGNORE_INDEX)
                    continue
                for i, mask in enumerate(masks):
                    up = F.interpolate(logits[i:i + 1], size=mask.shape, mode="bilinear", align_corners=False)
                    confusions[j] += confusion_matrix(up[0].argmax(0).cpu(), mask, num_classes, IGNORE_INDEX)
    if sharded:
        confusions = list(all_reduce_sum(torch.stack(confusions)))
    return confusions, [p for why in gather_batch_objects(skipped, sharded) for p in why]


def run_probe(forward: nn.Module, train_set: Dataset, val_set: Dataset, cfg: SegmentConfig,
              device: torch.device | str = "cpu", sharded: bool = False) -> dict[str, Any]:
    """Train the sweep of probes on ``train_set`` and score them on ``val_set``. Returns the best
    head's scores (``miou``, ``pixel_acc``, ``per_class_iou``, ``lr``), ``per_lr`` and the counts.
    ``sharded``: every process of the process group takes part and gets the one-process result."""
    device = torch.device(device)
    cfg.validate(int(forward.mask_stride))
    classes = list(train_set.classes)
    forward = forward.to(device).eval()
    batches = TrainBatches(forward, train_set, cfg, device, sharded)
    heads = train_heads(batches, len(classes), cfg, device)
    if sharded and not batches.cached:  # each process met the unreadable images of its parts
        batches.skipped = union_over_processes(batches.skipped)
    confusions, val_skipped = evaluate_heads(forward, heads, val_set, len(classes), cfg, device, sharded)
    scores = [segmentation_scores(c, classes) for c in confusions]
    lrs = cfg.lrs or DEFAULT_LRS[cfg.optimizer]
    best = max(range(len(lrs)), key=lambda j: scores[j]["miou"])
    return {**scores[best], "lr": lrs[best], "head": heads[best].cpu(),
            "per_lr": [{"lr": lr, "miou": s["miou"], "pixel_acc": s["pixel_acc"]} for lr, s in zip(lrs, scores)],
            "feature_dim": batches.dim, "cached_features": batches.cached,
            "num_train": len(train_set) - len(batches.skipped),
            "num_val": len(val_set) - len(val_skipped), "skipped": batches.skipped + val_skipped}
