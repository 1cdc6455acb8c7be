"""The colour half of the multi-crop augmentation, batched on the training device.

With ``data.batched_color`` the data-loader workers only decode, crop, flip and draw each crop's
random colour parameters (:class:`ColorParamSampler`, the same distributions as the per-crop
Pillow path in ``ibot.data.transforms``); :func:`apply_color` then applies colour jitter,
grayscale, Gaussian blur and solarisation to a whole batch of uint8 crops on the GPU (or CPU)
and normalises it. The workers' share of the augmentation drops to decoding and cropping.

The results match the Pillow path to within its uint8 rounding for jitter, grayscale and
solarisation; the blur is an exact Gaussian where Pillow approximates one with three box blurs
(compared in ``tests/data/test_batched_color.py``). Per crop, the parameter row is::

    [jitter on, brightness, contrast, saturation, hue, order_0 .. order_3, grayscale, sigma, solarise]

with ``order`` the permutation of the four jitter operations (torchvision's ``ColorJitter``) and
``sigma = 0`` for no blur.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["NUM_PARAMS", "ColorParamSampler", "apply_color"]

NUM_PARAMS = 12
JITTER, BRIGHTNESS, CONTRAST, SATURATION, HUE, ORDER, GRAY, SIGMA, SOLARIZE = 0, 1, 2, 3, 4, 5, 9, 10, 11
# official DataAugmentationiBOT, shared with the per-crop Pillow path (ibot.data.transforms):
# ColorJitter(0.4, 0.4, 0.2, 0.1) with p 0.8, grayscale p 0.2, solarisation at grey level 128
JITTER_STRENGTHS = (0.4, 0.4, 0.2, 0.1)  # brightness, contrast, saturation, hue
JITTER_P, GRAY_P = 0.8, 0.2
SOLARIZE_LEVEL = 128
FACTOR_RANGES = tuple((1 - s, 1 + s) for s in JITTER_STRENGTHS[:3]) + ((-JITTER_STRENGTHS[3], JITTER_STRENGTHS[3]),)
SOLARIZE_THRESHOLD = SOLARIZE_LEVEL / 255
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, Pillow's convert("L")


class ColorParamSampler:
    """``uint8 crop (3, H, W) -> (crop, params (NUM_PARAMS,))``: draws one crop's colour parameters
    from torch's global generator (seeded per sample by the pre-training dataset); :meth:`draw`
    gives the parameters alone, :meth:`row` makes them of given uniforms."""

    UNIFORMS = 13  # the uniforms a row is made of

    def __init__(self, blur_p: float, blur_sigma: tuple[float, float], solarize_p: float) -> None:
        self.blur_p = blur_p
        self.blur_sigma = blur_sigma
        self.solarize_p = solarize_p

    def __call__(self, crop: Tensor) -> tuple[Tensor, Tensor]:
        return crop, self.draw()

    def draw(self) -> Tensor:
        """One crop's parameter row (NUM_PARAMS,), from one call to the generator."""
        return torch.tensor(self.row(torch.rand(self.UNIFORMS).tolist()))

    def row(self, u: Sequence[float]) -> list[float]:
        """The parameter row made of ``UNIFORMS`` uniforms in [0, 1) (drawn in one call, not one per
        choice: a worker draws rows for 12 crops an image). The order of the jitter operations is
        the argsort of four of them."""
        row = [0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 2.0, 3.0, 0.0, 0.0, 0.0]
        if u[0] < JITTER_P:
            row[JITTER] = 1.0
            for i, (low, high) in enumerate(FACTOR_RANGES):
                row[BRIGHTNESS + i] = low + (high - low) * u[1 + i]
            row[ORDER:ORDER + 4] = [float(i) for i in sorted(range(4), key=lambda i: u[5 + i])]
        row[GRAY] = float(u[9] < GRAY_P)
        if u[10] < self.blur_p:
            row[SIGMA] = self.blur_sigma[0] + (self.blur_sigma[1] - self.blur_sigma[0]) * u[11]
        row[SOLARIZE] = float(u[12] < self.solarize_p)
        return row

    def __repr__(self) -> str:
        return f"{type(self).__name__}(blur_p={self.blur_p}, sigma={self.blur_sigma}, solarize_p={self.solarize_p})"


def _gray(x: Tensor) -> Tensor:
    """(N, 3, H, W) -> (N, 1, H, W) luma."""
    return LUMA[0] * x[:, 0:1] + LUMA[1] * x[:, 1:2] + LUMA[2] * x[:, 2:3]


def _blend(x: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    """``factor * x + (1 - factor) * other``, clamped to [0, 1]; ``factor`` is (N,)."""
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1 - f) * other).clamp_(0, 1)


def _adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotates the hue of (N, 3, H, W) images in [0, 1] by ``shift`` (N,) turns, through HSV."""
    r, g, b = x.unbind(1)
    maxc, argmax = x.max(dim=1)
    minc = x.min(dim=1).values
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    hue = torch.stack([(g - b) / safe, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe]).gather(
        0, argmax.unsqueeze(0)).squeeze(0)
    hue = torch.where(delta > 0, hue / 6.0, torch.zeros_like(hue))
    hue = torch.remainder(hue + shift.view(-1, 1, 1), 1.0)
    sat = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    # HSV -> RGB: each channel from k = (n + 6h) mod 6, v - v s max(0, min(k, 4 - k, 1))
    k = torch.remainder(torch.tensor([5.0, 3.0, 1.0], device=x.device).view(1, 3, 1, 1) + 6.0 * hue.unsqueeze(1), 6.0)
    ramp = torch.minimum(k, 4.0 - k).clamp(0, 1)
    return maxc.unsqueeze(1) * (1 - sat.unsqueeze(1) * ramp)


def _jitter_op(x: Tensor, op: int, factor: Tensor) -> Tensor:
    if op == 0:  # brightness: blend with black
        return (x * factor.view(-1, 1, 1, 1)).clamp_(0, 1)
    if op == 1:  # contrast: blend with the mean luma of the image
        return _blend(x, _gray(x).mean(dim=(1, 2, 3), keepdim=True), factor)
    if op == 2:  # saturation: blend with the luma image
        return _blend(x, _gray(x), factor)
    return _adjust_hue(x, factor)


def _color_jitter(x: Tensor, params: Tensor) -> Tensor:
    """The four jitter operations in each crop's own order, on the crops whose jitter is on.
    ``params`` stay on the CPU: every selection is decided there, so a GPU batch needs no
    host-device synchronisation."""
    rows = (params[:, JITTER] > 0).nonzero().squeeze(1)
    if rows.numel() == 0:
        return x
    p = params[rows]
    y = x[rows.to(x.device)]
    order = p[:, ORDER:ORDER + 4].long()
    for position in range(4):
        for op in range(4):
            picked = (order[:, position] == op).nonzero().squeeze(1)
            if picked.numel():
                at = picked.to(x.device)
                y[at] = _jitter_op(y[at], op, p[picked, BRIGHTNESS + op].to(x.device, x.dtype))
    out = x.clone()
    out[rows.to(x.device)] = y
    return out


def _gaussian_blur(x: Tensor, sigma: Tensor) -> Tensor:
    """Separable Gaussian blur of each crop with its own ``sigma`` (N,) (CPU; 0: unchanged), edges
    replicated; the kernel reaches 3 sigma of the largest one."""
    rows = (sigma > 0).nonzero().squeeze(1)
    if rows.numel() == 0:
        return x
    s = sigma[rows].double()
    radius = max(1, math.ceil(3.0 * float(s.max())))
    taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (taps.view(1, -1) / s.view(-1, 1)) ** 2)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).to(x.device, x.dtype)  # (M, 2r + 1)
    at = rows.to(x.device)
    n, c, h, w = len(rows), x.shape[1], x.shape[2], x.shape[3]
    weight = kernel.repeat_interleave(c, dim=0)  # one kernel per channel: (M * C, 2r + 1)
    y = F.pad(x[at].reshape(1, n * c, h, w), (radius, radius, radius, radius), mode="replicate")
    y = F.conv2d(y, weight.view(n * c, 1, 1, -1), groups=n * c)
    y = F.conv2d(y, weight.view(n * c, 1, -1, 1), groups=n * c)
    out = x.clone()
    out[at] = y.view(n, c, h, w)
    return out


def apply_color(
    crops: Tensor,
    params: Tensor,
    mean: Sequence[float],
    std: Sequence[float],
) -> Tensor:
    """uint8 crops (N, 3, H, W) and their parameter rows (N, NUM_PARAMS) -> normalised float32
    crops: colour jitter (p 0.8, random order), grayscale, Gaussian blur, solarisation, in the
    order of the official per-crop pipeline. ``crops`` may be on any device; keep ``params`` on
    the CPU (as the data loader gives them) to spare a GPU any synchronisation."""
    if crops.dim() != 4 or crops.shape[1] != 3 or params.shape != (crops.shape[0], NUM_PARAMS):
        raise ValueError(f"apply_color expects crops (N, 3, H, W) and params (N, {NUM_PARAMS}), "
                         f"got {tuple(crops.shape)} and {tuple(params.shape)}")
    params = params.detach().to("cpu", torch.float32)
    x = crops.float() / 255.0 if crops.dtype == torch.uint8 else crops.float()
    x = _color_jitter(x, params)
    gray = params[:, GRAY] > 0
    if gray.any():
        x = torch.where(gray.to(x.device).view(-1, 1, 1, 1), _gray(x).expand_as(x), x)
    x = _gaussian_blur(x, params[:, SIGMA])
    solarise = params[:, SOLARIZE] > 0
    if solarise.any():
        x = torch.where(solarise.to(x.device).view(-1, 1, 1, 1) & (x >= SOLARIZE_THRESHOLD), 1.0 - x, x)
    m = torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1).to(x.device)
    s = torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1).to(x.device)
    return (x - m) / s
