"""Backbones, the iBOT head and the multi-crop wrapper; ``build_backbone`` names an architecture."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ibot.models.head import IBOTHead, WeightNormLinear
from ibot.models.multicrop import CropOutputs, MultiCropWrapper
from ibot.models.swin_transformer import SwinTransformer, swin_tiny
from ibot.models.vision_transformer import VisionTransformer, vit_base, vit_large, vit_small, vit_tiny

BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "vit_tiny": vit_tiny,
    "vit_small": vit_small,
    "vit_base": vit_base,
    "vit_large": vit_large,
    "swin_tiny": swin_tiny,
}


def use_explicit_attention(*models: nn.Module) -> None:
    """Run every timm attention layer in ``models`` as the explicit ``softmax(q k^T / sqrt(d)) v``
    instead of ``scaled_dot_product_attention`` (timm's ``fused_attn``): the same maths."""
    for model in models:
        for module in model.modules():
            if hasattr(module, "fused_attn"):
                module.fused_attn = False


def build_backbone(arch: str, patch_size: int | None = None, **kwargs) -> nn.Module:
    """Backbone ``arch`` (one of ``BACKBONES``) with ``patch_size`` (None: 16 for ViT, 4 for Swin).

    ``kwargs`` go to the constructor: ``drop_path_rate``, ``masked_im_modeling``, ``img_size``,
    ``window_size`` (Swin), and size overrides (``embed_dim``, ``depth``, ``num_heads`` for ViT;
    ``embed_dim``, ``depths``, ``num_heads`` for Swin).
    """
    if arch not in BACKBONES:
        raise ValueError(f"unknown arch {arch!r}; choose from {', '.join(BACKBONES)}")
    if patch_size is None:
        return BACKBONES[arch](**kwargs)
    return BACKBONES[arch](patch_size=patch_size, **kwargs)


__all__ = [
    "BACKBONES",
    "CropOutputs",
    "IBOTHead",
    "MultiCropWrapper",
    "SwinTransformer",
    "VisionTransformer",
    "WeightNormLinear",
    "build_backbone",
    "swin_tiny",
    "use_explicit_attention",
    "vit_base",
    "vit_large",
    "vit_small",
    "vit_tiny",
]
