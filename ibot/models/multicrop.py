"""Backbone + head over all crops of a step, in one call (so DDP sees a single forward)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ibot.models.head import IBOTHead


class CropOutputs(NamedTuple):
    """What :class:`MultiCropWrapper` gives the loss; rows are crop-major (crop ``c`` of every image)."""

    cls: torch.Tensor  # head output of the global crops' [CLS], (G*B, K)
    patch: torch.Tensor  # patch outputs packed (M, K2): at the masked tokens only, in ``mask_index`` order
    local_cls: torch.Tensor | None = None  # head output of the local crops' [CLS], (L*B, K)
    backbone_cls: torch.Tensor | None = None  # the backbone's [CLS] of the global crops, (G*B, D) (KoLeo)
    patch_mean: torch.Tensor | None = None  # the teacher's: each crop's mean patch output over all N tokens, (G*B, K2)


class MultiCropWrapper(nn.Module):
    """Runs the (masked) global crops and the local crops through ``backbone`` and ``head``.

    Global crops give [CLS] and patch outputs; local crops (a different resolution, never masked)
    contribute only their [CLS], as in the official code. State-dict keys are ``backbone.*`` and
    ``head.*``, like the official teacher's.

    The loss reads patch outputs at the student's masked tokens only, so the patch output holds
    just those rows, packed (M, K2) in ``mask_index`` order (``masks.flatten(1).nonzero()``, from
    :class:`ibot.data.PretrainBatch`). For the student (``masks`` given) the ViT's last block and
    the head run on the [CLS] and masked tokens only; for the teacher (no ``masks``: it sees the
    unmasked crops) the head's MLP runs on every token, as the centre needs their mean, but the
    last layer projects only the masked ones and that mean (``CropOutputs.patch_mean``). With the
    official ratios about 85% of the patch tokens are unmasked; the official code projects every
    token of every crop. ``mask_index`` may end in (0, 0) padding rows: their outputs come last,
    to be dropped by the caller.
    """

    def __init__(self, backbone: nn.Module, head: IBOTHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(
        self,
        global_crops: torch.Tensor,
        masks: torch.Tensor | None = None,
        local_crops: torch.Tensor | None = None,
        *,
        mask_index: torch.Tensor,
    ) -> CropOutputs:
        """Global crops (G*B, 3, H, W) with the student's masks (G*B, h, w) (None for the teacher),
        local crops (L*B, 3, h', w') or None; ``mask_index`` (M, 2): (crop, patch) of each masked
        token of the student's masks, in ``masks.flatten(1).nonzero()`` order."""
        if masks is None:  # the teacher: targets at the tokens the student has masked
            tokens = self.backbone(global_crops, return_all_tokens=True)
            cls, patch, patch_mean = self.head.forward_at(tokens, mask_index)
            outputs = CropOutputs(cls, patch, backbone_cls=tokens[:, 0], patch_mean=patch_mean)
        else:  # the student: [CLS] rows, then the masked tokens (token 0 is [CLS])
            n = global_crops.shape[0]
            images, patches = mask_index.unbind(1)
            cls_rows = torch.arange(n, device=mask_index.device)
            token_index = torch.stack((torch.cat((cls_rows, images)),
                                       torch.cat((torch.zeros_like(cls_rows), patches + 1))), dim=1)
            tokens = self.backbone(global_crops, mask=masks, token_index=token_index)  # (G*B + M, D)
            outputs = CropOutputs(self.head(tokens[:n]), self.head.forward_patch(tokens[n:]), backbone_cls=tokens[:n])
        if local_crops is not None:
            outputs = outputs._replace(local_cls=self.head(self.backbone(local_crops)))  # (L*B, D) -> (L*B, K)
        return outputs
