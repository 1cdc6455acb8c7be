"""Patch embedding as one matrix product.

timm's ``PatchEmbed`` projects non-overlapping p x p patches with a ``Conv2d`` whose kernel and
stride are both p. :class:`LinearPatchEmbed` keeps that module and its parameters (so the state
dict keeps ``patch_embed.proj.{weight,bias}``, as official checkpoints have them) and computes the
same map as a linear layer on the flattened patches: ``tokens = patches @ W.reshape(D, C p^2).T + b``.
On the CPU oneDNN's convolution is the slow way to do it, in bf16 above all: with the matrix
product the ``cpu`` preset's whole training step runs at 1.07 times the images/s
(``benchmarks/README.md``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import PatchEmbed

__all__ = ["LinearPatchEmbed"]


class LinearPatchEmbed(PatchEmbed):
    """``(B, C, H, W) -> (B, H / p, W / p, D)`` (then the module's norm, if any); H and W must be
    multiples of the patch size. The arguments are ``PatchEmbed``'s; the output is always NHWC."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.update(output_fmt="NHWC", strict_img_size=False)
        super().__init__(*args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, height, width = x.shape
        ph, pw = self.patch_size
        if height % ph or width % pw:
            raise ValueError(f"image size {height} x {width} is not a multiple of the patch size {ph} x {pw}")
        h, w = height // ph, width // pw
        # (B, C, h, ph, w, pw) -> (B, h, w, C, ph, pw): each patch flattened as the kernel is
        patches = x.reshape(b, c, h, ph, w, pw).permute(0, 2, 4, 1, 3, 5).reshape(b, h, w, c * ph * pw)
        weight = self.proj.weight.reshape(self.proj.out_channels, -1)
        return self.norm(F.linear(patches, weight, self.proj.bias))
