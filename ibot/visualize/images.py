"""Preparing user images (read by :func:`ibot.image_io.load_rgb`) for the visualisations.

An image is resized so both sides are multiples of the backbone's patch size (the shorter side
to ``size``), then normalised as in training (ImageNet mean and std).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ibot.data.transforms import IMAGENET_MEAN, IMAGENET_STD


def fit_to_patches(image: Image.Image, size: int, patch_size: int) -> Image.Image:
    """Resize (bicubic) so the shorter side is ``size`` and both sides are multiples of
    ``patch_size`` (each rounded to the nearest multiple, at least one patch)."""
    if size < 1 or patch_size < 1:
        raise ValueError(f"image size and patch size must be positive, got {size} and {patch_size}")
    width, height = image.size
    scale = size / min(width, height)

    def snap(side: float) -> int:
        return max(patch_size, int(round(side / patch_size)) * patch_size)

    return image.resize((snap(width * scale), snap(height * scale)), Image.Resampling.BICUBIC)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> normalised (1, 3, H, W) float tensor."""
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)  # (H, W, 3)
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    return ((pixels - mean) / std).permute(2, 0, 1).unsqueeze(0)  # (H, W, 3) -> (1, 3, H, W)


def to_uint8(crop: torch.Tensor) -> np.ndarray:
    """Normalised (3, H, W) tensor -> (H, W, 3) uint8 pixels (inverse of :func:`to_tensor`)."""
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    pixels = (crop.detach().float().cpu() * std + mean).clamp(0, 1)
    return np.uint8(np.round(pixels.permute(1, 2, 0).numpy() * 255))  # (3, H, W) -> (H, W, 3)


def upscale(pixels: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscaling of an (H, W, ...) array by an integer factor."""
    return pixels.repeat(factor, axis=0).repeat(factor, axis=1) if factor > 1 else pixels


def display_scale(height: int, width: int, min_side: int = 112) -> int:
    """Integer zoom that makes the shorter side at least ``min_side`` pixels (small crops)."""
    return max(1, -(-min_side // min(height, width)))
