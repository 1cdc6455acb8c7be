"""Backbone + head over all crops of a step, in one call (so DDP sees a single forward)."""

from __future__ import annotations

import torch
from torch import nn

from ibot.models.head import IBOTHead


class MultiCropWrapper(nn.Module):
    """Runs the (masked) global crops and the local crops through ``backbone`` and ``head``.

    Global crops give all tokens, so the head returns [CLS] and patch outputs; local crops (a
    different resolution, never masked) contribute only their [CLS], as in the official code.
    State-dict keys are ``backbone.*`` and ``head.*``, like the official teacher's.

    ``masked_patches_only`` (the student's setting in training): when masks are given, the head
    runs on the [CLS] and the masked patch tokens only, and the patch output holds just those rows,
    packed (M, K2) in ``masks.flatten(1).nonzero()`` order. The loss reads student patch outputs
    at masked positions only, so this is exact, and it skips most of the head's work (with the
    official ratios about 85% of the patch tokens are unmasked); the official code projects every
    token. The teacher needs all of them (centring).
    """

    def __init__(self, backbone: nn.Module, head: IBOTHead, masked_patches_only: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.masked_patches_only = masked_patches_only

    def forward(
        self,
        global_crops: torch.Tensor,
        masks: torch.Tensor | None = None,
        local_crops: torch.Tensor | None = None,
        return_backbone_cls: bool = False,
        mask_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """(G*B, 3, H, W), masks (G*B, h, w), (L*B, 3, h', w') ->
        (cls (G*B, K), patch (G*B, N, K2) or packed (M, K2), local_cls (L*B, K) or None), then the backbone's
        [CLS] of the global crops (G*B, D) when ``return_backbone_cls`` (for a KoLeo term).

        ``mask_index`` (M, 2): (crop, patch) of each masked token, ``masks.flatten(1).nonzero()``;
        computed on the host and passed in, it spares a GPU the sync of finding them itself."""
        tokens = self.backbone(global_crops, mask=masks, return_all_tokens=True)  # (G*B, 1 + N, D)
        if self.masked_patches_only and masks is not None:
            cls = self.head(tokens[:, 0])
            rows, cols = (masks.flatten(1).nonzero() if mask_index is None else mask_index).unbind(1)
            patch = self.head.forward_patch(tokens[rows, cols + 1])  # (M, D) -> (M, K2)
        else:
            cls, patch = self.head(tokens)
        local_cls = None
        if local_crops is not None:
            local_cls = self.head(self.backbone(local_crops))  # (L*B, D) -> (L*B, K)
        if return_backbone_cls:
            return cls, patch, local_cls, tokens[:, 0]
        return cls, patch, local_cls
