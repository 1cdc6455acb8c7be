"""Multi-crop augmentation of DINO / iBOT, and the evaluation transform.

Per crop (official ``DataAugmentationiBOT``): RandomResizedCrop (bicubic), horizontal flip
(p 0.5), ColorJitter(0.4, 0.4, 0.2, 0.1) (p 0.8), grayscale (p 0.2), Gaussian blur with radius
U[0.1, 2] px (``blur_sigma``: scale it with the crop for small images), ImageNet normalisation.
Blur probability: 1.0 for global crop 1, 0.1 for the other global crops (which are also
solarised with p 0.2, threshold 128), 0.5 for local crops.

Speed: every op runs on the small cropped PIL image and the conversion to float comes last. On
a 224 px crop Pillow is faster than torchvision's uint8-tensor kernels (measured, one thread:
blur 1.5 ms vs 11.7 ms with a 13-tap kernel, colour jitter 4.2 ms vs 7.6 ms), and it keeps the
official semantics exactly: Pillow's ``GaussianBlur(radius)`` is the official blur (its radius is
the Gaussian's standard deviation). All randomness comes from torch's global generator, so
seeding it makes a call reproducible.

``batched_color=True`` stops each crop after the flip: it becomes a uint8 tensor and its colour
parameters, drawn here, and ``ibot.data.batched_color.apply_color`` does the rest for a whole
batch on the training device. The crop and flip then run straight on Pillow
(:class:`ResizedCropFlip`: torchvision's draws and pixels without its per-call dispatch, which
took most of a worker's time on 28-px crops). ``batched_crops=True`` (with ``batched_color``) stops
before any pixel is cut: the image becomes one uint8 tensor with each crop's box, flip and colour
parameters (:class:`ibot.data.batched_crops.CropPlan`), and ``ibot.data.batched_crops.cut_crops``
cuts a whole batch on the training device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageFilter
from torch import Tensor
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2

from ibot.data.batched_color import GRAY_P, JITTER_P, JITTER_STRENGTHS, SOLARIZE_LEVEL, ColorParamSampler
from ibot.data.batched_crops import CropBoxSampler, CropPlan

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MultiCropAugmentation",
    "RandomGaussianBlur",
    "ResizedCropFlip",
    "default_crop_pct",
    "eval_transform",
    "probe_train_transform",
    "uint8_chw",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BLUR_SIGMA = (0.1, 2.0)
# (blur p, solarisation p) of global crop 1, the other global crops and the local crops (official)
CROP_BLUR_SOLARIZE = ((1.0, 0.0), (0.1, 0.2), (0.5, 0.0))


class RandomGaussianBlur:
    """With probability ``p``, Pillow's Gaussian blur of radius (= sigma) ``U[sigma]``."""

    def __init__(self, p: float, sigma: tuple[float, float] = BLUR_SIGMA) -> None:
        self.p = p
        self.sigma = sigma

    def __call__(self, image: Image.Image) -> Image.Image:
        if self.p < 1 and torch.rand(()).item() >= self.p:
            return image
        radius = torch.empty(()).uniform_(*self.sigma).item()
        return image.filter(ImageFilter.GaussianBlur(radius=radius))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p}, sigma={self.sigma})"


def uint8_chw(image: Image.Image | Tensor) -> Tensor:
    """A PIL image or a (C, H, W) uint8 tensor -> (C, H, W) uint8 tensor."""
    if isinstance(image, Tensor):
        return image
    pixels = np.asarray(image)
    pixels = pixels[:, :, None] if pixels.ndim == 2 else pixels
    return torch.from_numpy(pixels.transpose(2, 0, 1).copy())


class ResizedCropFlip:
    """``PIL image -> uint8 tensor (C, size, size)``: ``RandomResizedCrop(size, scale)`` (bicubic)
    then a horizontal flip with p 0.5. torchvision's v2 ops in that order, then ``PILToTensor``,
    give the same pixels from the same draws of torch's generator; this skips their per-call
    dispatch (on the ``cpu`` preset's 28-px crops, 240 against 145 us a crop)."""

    def __init__(self, size: int, scale: tuple[float, float]) -> None:
        self.size = size
        self.crop = v2.RandomResizedCrop(size, scale=scale, interpolation=InterpolationMode.BICUBIC)

    def __call__(self, image: Image.Image) -> Tensor:
        box = self.crop.make_params([image])  # the crop's draws, then the flip's, as v2.Compose makes them
        flip = torch.rand(1).item() < 0.5
        top, left, height, width = box["top"], box["left"], box["height"], box["width"]
        image = image.crop((left, top, left + width, top + height))
        if image.size != (self.size, self.size):
            image = image.resize((self.size, self.size), Image.Resampling.BICUBIC)
        if flip:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return uint8_chw(image)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, scale={self.crop.scale})"


def _check_scale(scale: Sequence[float], name: str) -> tuple[float, float]:
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
        raise ValueError(f"{name} must be (min, max) with 0 < min <= max <= 1, got {scale}")
    return float(scale[0]), float(scale[1])


def _normalized_tensor(mean: Sequence[float], std: Sequence[float]) -> list:
    """The tail every image transform ends with: PIL -> (3, H, W) float in [0, 1] -> normalised."""
    return [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=mean, std=std)]


def _crop_transform(
    size: int,
    scale: tuple[float, float],
    blur_p: float,
    blur_sigma: tuple[float, float],
    solarize_p: float,
    mean: Sequence[float],
    std: Sequence[float],
    batched_color: bool = False,
) -> v2.Compose:
    if batched_color:  # -> (uint8 crop, colour parameters) for ``apply_color``
        return v2.Compose([ResizedCropFlip(size, scale), ColorParamSampler(blur_p, blur_sigma, solarize_p)])
    ops = [
        v2.RandomResizedCrop(size, scale=scale, interpolation=InterpolationMode.BICUBIC),
        v2.RandomHorizontalFlip(p=0.5),
    ]
    ops += [
        v2.RandomApply([v2.ColorJitter(*JITTER_STRENGTHS)], p=JITTER_P),
        v2.RandomGrayscale(p=GRAY_P),
        RandomGaussianBlur(p=blur_p, sigma=blur_sigma),
    ]
    if solarize_p > 0:
        ops.append(v2.RandomSolarize(threshold=SOLARIZE_LEVEL, p=solarize_p))
    return v2.Compose([*ops, *_normalized_tensor(mean, std)])


class _CropDraws:
    """One crop's draws for ``batched_crops``, made of given uniforms: its box and flip, then its
    colour parameters."""

    def __init__(self, scale: tuple[float, float], blur_p: float, blur_sigma: tuple[float, float],
                 solarize_p: float) -> None:
        self.box = CropBoxSampler(scale)
        self.color = ColorParamSampler(blur_p, blur_sigma, solarize_p)
        self.uniforms = self.box.UNIFORMS + self.color.UNIFORMS

    def __call__(self, height: int, width: int, u: list[float]) -> tuple[list[float], list[float]]:
        return self.box.row(height, width, u[: self.box.UNIFORMS]), self.color.row(u[self.box.UNIFORMS :])


class MultiCropAugmentation:
    """``image -> [global_1, ..., global_G, local_1, ..., local_L]`` normalised float tensors
    (with ``batched_color``: ``(uint8 crop, colour parameters)`` pairs for ``apply_color``; with
    ``batched_crops`` as well: one :class:`~ibot.data.batched_crops.CropPlan`).

    Official recipe: 2 global crops of 224 px, scale (0.25, 1); 10 local crops of 96 px, scale
    (0.05, 0.25). Global crops 2..G share global crop 2's transform, as in the official code.
    """

    def __init__(
        self,
        global_crops_size: int = 224,
        local_crops_size: int = 96,
        global_crops_scale: Sequence[float] = (0.25, 1.0),
        local_crops_scale: Sequence[float] = (0.05, 0.25),
        global_crops_number: int = 2,
        local_crops_number: int = 10,
        blur_sigma: Sequence[float] = BLUR_SIGMA,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        batched_color: bool = False,
        batched_crops: bool = False,
    ) -> None:
        if batched_crops and not batched_color:
            raise ValueError("batched_crops needs batched_color: the crops are cut on the training device, "
                             "where the colour half then runs")
        if global_crops_size < 1 or local_crops_size < 1:
            raise ValueError(
                f"crop sizes must be positive, got {global_crops_size} and {local_crops_size}"
            )
        if global_crops_number < 1:
            raise ValueError(f"global_crops_number must be >= 1, got {global_crops_number}")
        if local_crops_number < 0:
            raise ValueError(f"local_crops_number must be >= 0, got {local_crops_number}")
        if len(blur_sigma) != 2 or not 0 < blur_sigma[0] <= blur_sigma[1]:
            raise ValueError(f"blur_sigma must be (min, max) with 0 < min <= max, got {blur_sigma}")
        sigma = (float(blur_sigma[0]), float(blur_sigma[1]))
        global_scale = _check_scale(global_crops_scale, "global_crops_scale")
        local_scale = _check_scale(local_crops_scale, "local_crops_scale")
        self.global_crops_size = global_crops_size
        self.local_crops_size = local_crops_size
        self.global_crops_number = global_crops_number
        self.local_crops_number = local_crops_number
        self.mean, self.std = tuple(mean), tuple(std)
        self.batched_color = batched_color
        self.batched_crops = batched_crops
        # global crop 1, the other global crops, the local crops: (size, scale, blur p, solarisation p)
        kinds = [(global_crops_size, global_scale, *CROP_BLUR_SOLARIZE[0]),
                 (global_crops_size, global_scale, *CROP_BLUR_SOLARIZE[1]),
                 (local_crops_size, local_scale, *CROP_BLUR_SOLARIZE[2])]
        if batched_crops:  # draws only: the crops are cut and coloured on the training device
            self.draws = tuple(_CropDraws(scale, blur_p, sigma, solarize_p) for _, scale, blur_p, solarize_p in kinds)
        else:
            self.global_transform1, self.global_transform2, self.local_transform = (
                _crop_transform(size, scale, blur_p, sigma, solarize_p, mean, std, batched_color)
                for size, scale, blur_p, solarize_p in kinds)

    def __call__(self, image: Image.Image) -> list[Tensor] | list[tuple[Tensor, Tensor]] | CropPlan:
        if self.batched_crops:
            return self.plan(image)
        crops = [self.global_transform1(image)]
        crops += [self.global_transform2(image) for _ in range(self.global_crops_number - 1)]
        crops += [self.local_transform(image) for _ in range(self.local_crops_number)]
        return crops

    def plan(self, image: Image.Image | Tensor) -> CropPlan:
        """The image as one uint8 tensor and every crop's box, flip and colour parameters (crop by
        crop: box, flip, colour, as the per-crop path draws them)."""
        pixels = uint8_chw(image)
        height, width = int(pixels.shape[-2]), int(pixels.shape[-1])
        first, other_global, local = self.draws
        draws = [first] + [other_global] * (self.global_crops_number - 1) + [local] * self.local_crops_number
        uniforms = torch.rand(len(draws), first.uniforms).tolist()  # one call to the generator an image
        boxes, params = zip(*(draw(height, width, u) for draw, u in zip(draws, uniforms)))
        return CropPlan(pixels, torch.tensor(boxes), torch.tensor(params))

    def __repr__(self) -> str:
        batched = ", crops and colour batched" if self.batched_crops else ", colour batched" if self.batched_color else ""
        return (
            f"{type(self).__name__}(global {self.global_crops_number} x "
            f"{self.global_crops_size}px, local {self.local_crops_number} x "
            f"{self.local_crops_size}px{batched})"
        )


def default_crop_pct(image_size: int) -> float:
    """The evaluation crop for a network trained on ``image_size`` crops: the official 0.875
    (resize 256, crop 224), and no crop under 64 px (e.g. Fashion-MNIST's 28 px), whose
    pre-training crops covered the images whole."""
    return 0.875 if image_size >= 64 else 1.0


def probe_train_transform(
    image_size: int = 224,
    scale: Sequence[float] = (0.08, 1.0),
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> v2.Compose:
    """The official linear probe's training transform: random resized crop (torchvision's defaults:
    8-100% of the area, bilinear), horizontal flip, normalise; no colour augmentation."""
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    return v2.Compose(
        [
            v2.RandomResizedCrop(image_size, scale=_check_scale(scale, "crop scale"), antialias=True),
            v2.RandomHorizontalFlip(p=0.5),
            *_normalized_tensor(mean, std),
        ]
    )


def eval_transform(
    image_size: int = 224,
    crop_pct: float = 0.875,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> v2.Compose:
    """Resize the short side to ``floor(image_size / crop_pct)`` (bicubic), center-crop
    ``image_size``, normalise: the official 256 -> 224 evaluation transform by default."""
    if image_size < 1 or not 0 < crop_pct <= 1:
        raise ValueError(
            f"need image_size >= 1 and 0 < crop_pct <= 1, got {image_size} and {crop_pct}"
        )
    return v2.Compose(
        [
            v2.Resize(math.floor(image_size / crop_pct), interpolation=InterpolationMode.BICUBIC),
            v2.CenterCrop(image_size),
            *_normalized_tensor(mean, std),
        ]
    )
