"""Patch tokens as feature maps: the dense output every patch-level use reads (export, inference,
the segmentation probe, correspondences, prototype patterns).

A backbone's ``forward(x, return_all_tokens=True)`` gives ``(B, 1 + N, D)``: token 0 is the
[CLS] (ViT) or the pooled token (Swin), the other ``N = h * w`` are the patch tokens of the last
block in raster order, on the grid of the backbone's ``mask_stride`` (the patch size for ViT,
patch size x 8 for Swin-T: one token per last-stage cell). :func:`patch_tokens` reshapes them to
``(B, h, w, D)``; with ``n_last_blocks > 1`` it concatenates the last blocks' tokens along ``D``
(DINOv2's "multi-layer" linear segmentation features), each through the final norm.
"""

from __future__ import annotations

import torch
from torch import nn

from ibot.formats.onnx_outputs import OUTPUT_NAMES, TOKEN_CHOICES

__all__ = ["TOKEN_CHOICES", "TokenOutputs", "check_dense_size", "patch_tokens", "token_grid"]


def token_grid(backbone: nn.Module, height: int, width: int) -> tuple[int, int]:
    """``(h, w)``: the patch-token grid of a ``height`` x ``width`` image."""
    stride = int(backbone.mask_stride)
    return height // stride, width // stride


def check_dense_size(backbone: nn.Module, height: int, width: int) -> None:
    """One line if ``height`` x ``width`` is not a whole number of token cells."""
    stride = int(backbone.mask_stride)
    if height < stride or width < stride or height % stride or width % stride:
        raise ValueError(f"image size {height}x{width} is not a positive multiple of the backbone's token "
                         f"stride {stride} (the patch size for ViT, patch size x 8 for Swin)")


def patch_tokens(backbone: nn.Module, images: torch.Tensor, n_last_blocks: int = 1) -> torch.Tensor:
    """Images (B, 3, H, W) -> patch tokens (B, h, w, D * n_last_blocks), normed as the final norm does.

    ``n_last_blocks`` > 1 concatenates the last blocks' tokens (for Swin, blocks of the last stage
    only: earlier stages have another width and grid)."""
    b, _, height, width = images.shape
    check_dense_size(backbone, height, width)
    h, w = token_grid(backbone, height, width)
    if n_last_blocks < 1:
        raise ValueError(f"n_last_blocks must be at least 1, got {n_last_blocks}")
    if n_last_blocks == 1:
        layers = [backbone(images, return_all_tokens=True)]
    else:
        last_stage = len(backbone.blocks) if hasattr(backbone, "blocks") else backbone.depths[-1]
        if n_last_blocks > last_stage:
            raise ValueError(f"n_last_blocks={n_last_blocks} is more than the {last_stage} blocks of the "
                             "backbone's last stage")
        layers = backbone.get_intermediate_layers(images, n_last_blocks)
    tokens = torch.cat([layer[:, 1:] for layer in layers], dim=-1)  # (B, N, D * n)
    if tokens.shape[1] != h * w:
        raise ValueError(f"the backbone gave {tokens.shape[1]} patch tokens for a {h}x{w} grid")
    return tokens.reshape(b, h, w, tokens.shape[-1])


class TokenOutputs(nn.Module):
    """``images -> [CLS] (B, D)``, ``patch tokens (B, h, w, D)`` or both (a tuple), by ``tokens``:
    the graph ``ibot export --tokens`` writes."""

    def __init__(self, backbone: nn.Module, tokens: str = "cls") -> None:
        super().__init__()
        if tokens not in TOKEN_CHOICES:
            raise ValueError(f"--tokens must be one of {', '.join(TOKEN_CHOICES)}, got {tokens!r}")
        self.backbone, self.tokens = backbone, tokens

    @property
    def output_names(self) -> list[str]:
        return list(OUTPUT_NAMES[self.tokens])

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if self.tokens == "cls":
            return self.backbone(images)
        b, _, height, width = images.shape
        check_dense_size(self.backbone, height, width)
        h, w = token_grid(self.backbone, height, width)
        tokens = self.backbone(images, return_all_tokens=True)  # (B, 1 + N, D)
        patches = tokens[:, 1:].reshape(b, h, w, tokens.shape[-1])
        return patches if self.tokens == "patch" else (tokens[:, 0], patches)
