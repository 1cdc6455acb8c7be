"""Sample masks over real global crops, to check the masking settings before a long run.

The crops and masks come from the pre-training pipeline itself (:class:`PretrainDataset` with the
configured augmentation and :class:`MaskGenerator`), once with the configured prediction shape
and once with the other one (block-wise / random), from the same crops and seeds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ibot.build import build_augmentation, build_mask_generator
from ibot.config import PretrainConfig, mask_stride
from ibot.data.masking import PRED_SHAPES
from ibot.visualize.grid import Cell, GridLayout, grid_figure, save_png
from ibot.visualize.images import display_scale, to_uint8, upscale

MASK_COLOR = (40, 110, 220)  # masked patches are painted this colour (never produced by a grey image)


@dataclass
class MaskSamples:
    """Global crops (H, W, 3) uint8 and, per prediction shape, one (h, w) bool mask per crop."""

    crops: list[np.ndarray]
    masks: dict[str, list[np.ndarray]]
    stride: int
    epoch: int


def sample_masks(cfg: PretrainConfig, num_images: int = 4, epoch: int | None = None, seed: int = 0) -> MaskSamples:
    """Masks of the global crops of ``num_images`` training images picked with ``seed``.

    ``epoch`` defaults to ``mask.pred_start_epoch`` (earlier epochs have no masks).
    """
    from ibot.data.datasets import build_dataset
    from ibot.data.pretrain import PretrainDataset

    if num_images < 1:
        raise ValueError(f"--num-images must be at least 1, got {num_images}")
    d, m = cfg.data, cfg.mask
    epoch = m.pred_start_epoch if epoch is None else epoch
    if epoch < 0:
        raise ValueError(f"--epoch must be >= 0, got {epoch}")
    base = build_dataset(d.data, split="train")
    indices = np.random.default_rng(seed).choice(len(base), size=min(num_images, len(base)), replace=False)
    augmentation = build_augmentation(d, local_crops_number=0, batched_color=False)
    stride = mask_stride(cfg)
    shapes = [m.pred_shape, *(s for s in PRED_SHAPES if s != m.pred_shape)]
    crops: list[np.ndarray] = []
    masks: dict[str, list[np.ndarray]] = {}
    for shape in shapes:
        generator = build_mask_generator(m, pred_shape=shape)
        dataset = PretrainDataset(base, augmentation, generator, stride, seed)
        samples = [dataset[(epoch, int(i))] for i in indices]  # same seeds: same crops for every shape
        masks[shape] = [mask.numpy() for s in samples for mask in s.masks]
        if not crops:
            crops = [to_uint8(crop) for s in samples for crop in s.global_crops]
    return MaskSamples(crops, masks, stride, epoch)


def paint_masks(crop: np.ndarray, mask: np.ndarray, stride: int) -> np.ndarray:
    """A crop (H, W, 3) with the masked cells of its (H / stride, W / stride) mask painted over."""
    covered = upscale(mask, stride)[..., None]  # (h, w) -> (H, W, 1)
    return np.where(covered, np.array(MASK_COLOR, dtype=np.uint8), crop)


def mask_cells(samples: MaskSamples, min_side: int = 96) -> list[list[Cell]]:
    """One row per prediction shape (the configured one first), one column per global crop."""
    scale = display_scale(*samples.crops[0].shape[:2], min_side)
    return [[Cell(upscale(paint_masks(crop, mask, samples.stride), scale), f"{shape} {mask.mean():.0%}")
             for crop, mask in zip(samples.crops, masks)]
            for shape, masks in samples.masks.items()]


def save_mask_grid(samples: MaskSamples, cfg: PretrainConfig, path: str | Path) -> tuple[Path, GridLayout]:
    """PNG grid of the sampled masks, titled with each crop's masked fraction."""
    m = cfg.mask
    header = (f"mask.pred_shape={m.pred_shape} (first row), pred_ratio={m.pred_ratio} +- {m.pred_ratio_var}, "
              f"aspect {tuple(round(a, 2) for a in m.pred_aspect_ratio)}, epoch {samples.epoch}, "
              f"{samples.stride} px per cell")
    fig, _, layout = grid_figure(mask_cells(samples), header=header)
    return save_png(fig, path), layout
