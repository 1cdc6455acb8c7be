"""The fine-tuned network and its optimiser groups (BEiT's recipe, which the official iBOT
fine-tuning uses).

- Classifier on the final-norm [CLS] (official ``--use_cls``), initialised N(0, 0.02) x 0.001;
  ``pool`` chooses another input: ``mean``, the mean of the final-norm patch tokens (BEiT's default
  ``--use_mean_pooling`` pools the un-normed tokens, then norms them), or ``grid``, the patch tokens
  flattened in grid order (a fixed ``image_size``).
- Layer-wise lr decay (timm's ``param_groups_layer_decay``, BEiT's layer ids): the embeddings are
  layer 0, block i is layer i + 1, the final norm and the classifier the top layer L + 1; layer
  l learns at ``lr * decay ** (L + 1 - l)``. Decay 0.65 for ViT-B, 0.75 for ViT-S/L (official).
- ``head_lr_scale``: the top layer (classifier and final norm) learns that many times faster
  than layer decay alone gives (1 officially).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ibot.eval.finetune_config import POOLS
from ibot.models.tokens import token_grid


class FinetuneModel(nn.Module):
    """``backbone`` + a linear classifier on its ``pool`` features: images (B, 3, H, W) -> (B, C)."""

    def __init__(self, backbone: nn.Module, num_classes: int, init_scale: float = 0.001, pool: str = "cls",
                 image_size: int | None = None) -> None:
        super().__init__()
        from timm.layers import trunc_normal_

        if pool not in POOLS:
            raise ValueError(f"--pool must be one of {', '.join(POOLS)}, got {pool!r}")
        if pool == "grid" and not image_size:
            raise ValueError("pool 'grid' needs the patch-token grid: give the image size it trains on")
        self.backbone, self.pool = backbone, pool
        self.grid = token_grid(backbone, image_size, image_size) if pool == "grid" else None
        cells = self.grid[0] * self.grid[1] if self.grid else 1
        self.head = nn.Linear(backbone.embed_dim * cells, num_classes)
        trunc_normal_(self.head.weight, std=0.02)
        with torch.no_grad():
            self.head.weight.mul_(init_scale)
        nn.init.zeros_(self.head.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The classifier's input (B, F): the final-norm [CLS], mean patch token or token grid."""
        if self.pool == "cls":
            return self.backbone(x)
        tokens = self.backbone(x, return_all_tokens=True)[:, 1:]  # (B, N, D), through the final norm
        if self.pool == "mean":
            return tokens.mean(dim=1)
        if tokens.shape[1] != self.grid[0] * self.grid[1]:
            h, w = self.grid
            raise ValueError(f"the classifier reads a {h}x{w} patch grid, the images gave {tokens.shape[1]} "
                             "patch tokens: use the image size it was fine-tuned at")
        return tokens.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Layer ids for timm's ``param_groups_layer_decay`` (BEiT's): embeddings first, then each
        block (a Swin patch merging joins the block before it, ``(99999,)`` in timm's notation);
        unmatched parameters (final norm, classifier) form the top layer."""
        if hasattr(self.backbone, "blocks"):
            blocks = [(r"^backbone\.blocks\.(\d+)\.", None)]
        else:
            blocks = [(r"^backbone\.layers\.(\d+)\.blocks\.(\d+)\.", None),
                      (r"^backbone\.layers\.(\d+)\.downsample\.", (99999,))]
        return {"stem": r"^backbone\.(?:cls_token|pos_embed|patch_embed|masked_embed)", "blocks": blocks}

    @staticmethod
    def no_weight_decay() -> tuple[str, ...]:
        """Besides biases and norms (all 1-D parameters): BEiT's and Swin's exclusions."""
        return ("backbone.cls_token", "backbone.pos_embed", "*relative_position_bias_table")


def layer_decay_param_groups(model: FinetuneModel, weight_decay: float, layer_decay: float,
                             head_lr_scale: float = 1.0) -> list[dict[str, Any]]:
    """Optimizer groups, each with its ``lr_scale`` and ``weight_decay`` (timm's implementation);
    the top layer's (final norm and classifier) ``lr_scale`` times ``head_lr_scale``."""
    from timm.optim import param_groups_layer_decay

    if not 0 < layer_decay <= 1:
        raise ValueError(f"layer decay must be in (0, 1], got {layer_decay}")
    if head_lr_scale <= 0:
        raise ValueError(f"head lr scale must be positive, got {head_lr_scale}")
    groups = param_groups_layer_decay(model, weight_decay=weight_decay, layer_decay=layer_decay,
                                      no_weight_decay_list=model.no_weight_decay())
    top = max(group["lr_scale"] for group in groups)
    for group in groups:
        if group["lr_scale"] == top:
            group["lr_scale"] *= head_lr_scale
    return groups
