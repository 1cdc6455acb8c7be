"""Small checkpoints in our format, a ViT with known attention and synthetic images for the
visualisation and CLI tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from ibot.build import build_head
from ibot.config import get_preset
from ibot.formats.ours import prefixed, save_checkpoint
from ibot.hub import backbone_kwargs_from_config
from ibot.models import build_backbone

PATCH, SIDE = 4, 16  # a 4 x 4 grid of patches
BRIGHT = (1, 2)  # the one white patch (row, col) of the synthetic image


def pointing_vit() -> nn.Module:
    """Depth-1 ViT whose [CLS] attends (head 0) to the brightest patch and (head 1) away from it.

    Tokens carry the patch's mean normalised brightness in channel 1, so after LayerNorm channel 1
    is about +sqrt(7) for a bright patch and -sqrt(7) for a dark one; the query of every head is a
    constant c, the key of head 0 is +channel 1, of head 1 -channel 1. A faint random position
    embedding keeps the output tokens of the patches apart; the block adds nothing to its input.
    """
    vit = build_backbone("vit_tiny", patch_size=PATCH, img_size=SIDE, depth=1, embed_dim=8, num_heads=2)
    dim, c = 8, 4.0
    with torch.no_grad():
        for p in vit.parameters():
            p.zero_()
        vit.blocks[0].norm1.weight.fill_(1)
        vit.norm.weight.fill_(1)
        noise = torch.randn(1, (SIDE // PATCH) ** 2, dim, generator=torch.Generator().manual_seed(0))
        vit.pos_embed[:, 1:] = 0.01 * noise
        vit.patch_embed.proj.weight[1].fill_(1 / (3 * PATCH * PATCH))  # channel 1 = mean of the patch
        qkv = vit.blocks[0].attn.qkv
        qkv.bias[0] = qkv.bias[4] = c  # head 0 query in dim 0, head 1 query in dim 4
        qkv.weight[dim + 0, 1] = 1.0  # head 0 key = +channel 1
        qkv.weight[dim + 4, 1] = -1.0  # head 1 key = -channel 1
    return vit.eval()


def bright_patch_image() -> Image.Image:
    pixels = np.zeros((SIDE, SIDE, 3), dtype=np.uint8)
    r, c = BRIGHT
    pixels[r * PATCH:(r + 1) * PATCH, c * PATCH:(c + 1) * PATCH] = 255
    return Image.fromarray(pixels)


def tiny_checkpoint(path: Path, preset: str = "cpu", head: bool = False, **model: int) -> Path:
    """One of our checkpoints holding a random teacher backbone of ``preset`` made tiny (and with
    ``head``, the teacher's head).

    ``model`` overrides ``model.*`` sizes (ViT default: depth 1, width 16, 2 heads)."""
    cfg = get_preset(preset)
    swin = cfg.model.arch.startswith("swin")
    vit = {"depth": 1, "embed_dim": 16, "num_heads": 2, "patch_size": 4}
    for key, value in {**({} if swin else vit), **model}.items():
        setattr(cfg.model, key, value)
    if swin:  # small crops keep the Swin quick
        cfg.data.global_crops_size, cfg.data.local_crops_size = 64, 32
    tree = cfg.to_dict()
    arch, patch_size, kwargs = backbone_kwargs_from_config(tree)
    torch.manual_seed(0)
    backbone = build_backbone(arch, patch_size=patch_size, **kwargs)
    tensors = prefixed("teacher.backbone.", backbone.state_dict())
    if head:
        tensors.update(prefixed("teacher.head.", build_head(cfg, backbone.embed_dim, student=False).state_dict()))
    return save_checkpoint(path, tensors, {"config": tree, "epoch": 0, "step": 0}, kind="pretrain")


def noise_image(path: Path, size: tuple[int, int] = (28, 28), mode: str = "RGB", seed: int = 0) -> Path:
    """A random image of ``size`` (width, height) in ``mode``, saved as PNG."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).convert(mode).save(path)
    return path
