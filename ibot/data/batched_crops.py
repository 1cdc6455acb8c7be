"""The geometric half of the multi-crop augmentation, batched on the training device.

With ``data.batched_crops`` (on top of ``data.batched_color``) a data-loader worker no longer cuts
any pixels: per image it decodes the image once and draws each crop's box and flip
(:class:`CropBoxSampler`) and colour parameters; :func:`cut_crops` then cuts and resizes every
crop of a batch in one ``torchvision.ops.roi_align`` call on the training device, and
``ibot.data.batched_color.apply_color`` does the colour half. On small images the workers' share
of a step drops to decoding and drawing random numbers.

Semantics of ``RandomResizedCrop(size, scale, ratio=(3/4, 4/3))`` then a flip with p 0.5, with two
differences from the per-crop Pillow path, both in how pixels are sampled, not in which regions
are drawn:

- boxes are continuous (sub-pixel corners) instead of rounded to whole pixels;
- resizing is bilinear, averaging ``ceil(box / size)`` samples a side per output pixel when the
  box is larger than the crop (an anti-aliased downscale), where the official code resizes
  bicubically.

A box row is ``[x1, y1, x2, y2, flip]`` in pixels of its image (which spans ``[0, W] x [0, H]``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import roi_align

__all__ = ["BOX_COLUMNS", "CropBoxSampler", "CropPlan", "cut_crops", "pad_images"]

BOX_COLUMNS = 5  # x1, y1, x2, y2, flip
RATIO = (3 / 4, 4 / 3)  # torchvision's RandomResizedCrop default, as in the official code
ATTEMPTS = 10  # torchvision's: draws of (area, aspect) before the central fallback


class CropBoxSampler:
    """``(height, width) -> box row (BOX_COLUMNS,)``: a box of ``scale`` of the image's area and
    aspect ratio ``exp(U(log 3/4, log 4/3))`` at a uniform position, as torchvision's
    ``RandomResizedCrop`` draws it (up to 10 tries, then the largest central box of a clamped
    aspect ratio), and a horizontal flip with p 0.5. :meth:`row` makes the box of ``UNIFORMS``
    given uniforms; called, the sampler draws them from torch's global generator (seeded per
    sample by the pre-training dataset)."""

    UNIFORMS = 2 * ATTEMPTS + 3  # (area, aspect) per try, then left, top, flip

    def __init__(self, scale: tuple[float, float]) -> None:
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"crop scale must be (min, max) with 0 < min <= max <= 1, got {scale}")
        self.scale = (float(scale[0]), float(scale[1]))
        self.log_ratio = (math.log(RATIO[0]), math.log(RATIO[1]))

    def __call__(self, height: int, width: int) -> Tensor:
        return torch.tensor(self.row(height, width, torch.rand(self.UNIFORMS).tolist()))

    def row(self, height: int, width: int, u: Sequence[float]) -> list[float]:
        """The box row ``[x1, y1, x2, y2, flip]`` in an image of ``height`` x ``width`` pixels."""
        area = height * width
        (s0, s1), (r0, r1) = self.scale, self.log_ratio
        for attempt in range(ATTEMPTS):
            target = area * (s0 + (s1 - s0) * u[2 * attempt])
            aspect = math.exp(r0 + (r1 - r0) * u[2 * attempt + 1])
            w, h = math.sqrt(target * aspect), math.sqrt(target / aspect)
            if w <= width and h <= height:
                left, top = (width - w) * u[-3], (height - h) * u[-2]
                break
        else:  # torchvision's fallback: the whole image, its aspect ratio clamped, centred
            w = min(float(width), height * RATIO[1])
            h = min(float(height), width / RATIO[0])
            left, top = (width - w) / 2, (height - h) / 2
        return [left, top, left + w, top + h, float(u[-1] < 0.5)]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(scale={self.scale})"


@dataclass
class CropPlan:
    """One image and the crops to cut from it: what a worker returns with ``data.batched_crops``."""

    image: Tensor  # (C, H, W) uint8, the whole image
    boxes: Tensor  # (N, BOX_COLUMNS), global crops first
    color_params: Tensor  # (N, NUM_PARAMS) of ibot.data.batched_color


def pad_images(images: list[Tensor]) -> Tensor:
    """B images (C, H_i, W_i) -> (B, C, max H, max W), padded at the bottom and right with copies
    of the last row and column: a crop samples its image as if it stood alone (boxes are in each
    image's own pixels; bilinear sampling at the edge then reads the edge)."""
    height = max(int(i.shape[-2]) for i in images)
    width = max(int(i.shape[-1]) for i in images)
    if all(tuple(i.shape[-2:]) == (height, width) for i in images):
        return torch.stack(images)
    out = images[0].new_empty((len(images), images[0].shape[0], height, width))
    for row, image in zip(out, images):
        h, w = image.shape[-2:]
        row[:, :h, :w] = image
        row[:, :h, w:] = image[:, :, w - 1 :]
        row[:, h:, :] = row[:, h - 1 : h, :]
    return out


def cut_crops(images: Tensor, boxes: Tensor, size: int) -> Tensor:
    """Images (B, C, H, W) (uint8, or float in [0, 1]) and crop-major box rows (K * B,
    BOX_COLUMNS) -> crops (K * B, C, size, size) float in [0, 1]; row ``k * B + b`` is cut from
    image ``b``. ``images`` may be on any device; ``boxes`` follow it."""
    if images.dim() != 4 or boxes.dim() != 2 or boxes.shape[1] != BOX_COLUMNS or boxes.shape[0] % images.shape[0]:
        raise ValueError(f"cut_crops expects images (B, C, H, W) and boxes (K * B, {BOX_COLUMNS}), "
                         f"got {tuple(images.shape)} and {tuple(boxes.shape)}")
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    boxes = boxes.to(x.device, torch.float32)
    index = torch.arange(boxes.shape[0], device=x.device) % images.shape[0]
    rois = torch.cat((index.unsqueeze(1).float(), boxes[:, :4]), dim=1)
    # aligned=True: pixel i covers [i, i + 1], sampled at its centre, as a resize samples it;
    # sampling_ratio 0: ceil(box / size) samples a side per output pixel (anti-aliased downscale)
    crops = roi_align(x, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=0, aligned=True)
    flip = (boxes[:, 4] > 0.5).view(-1, 1, 1, 1)
    return torch.where(flip, crops.flip(-1), crops)
