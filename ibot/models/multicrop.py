"""Backbone + head over all crops of a step, in one call (so DDP sees a single forward)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ibot.models.head import IBOTHead


class CropOutputs(NamedTuple):
    """What :class:`MultiCropWrapper` gives the loss; rows are crop-major (crop ``c`` of every image)."""

    cls: torch.Tensor  # head output of the global crops' [CLS], (G*B, K)
    patch: torch.Tensor  # patch outputs, (G*B, N, K2), or packed (M, K2): the masked tokens only
    local_cls: torch.Tensor | None = None  # head output of the local crops' [CLS], (L*B, K)
    backbone_cls: torch.Tensor | None = None  # the backbone's [CLS] of the global crops, (G*B, D) (KoLeo)
    patch_mean: torch.Tensor | None = None  # with packed outputs: each crop's mean patch output over all N tokens


def bucket_rows(m: int) -> int:
    """``m`` rounded up to a multiple of 64, past 1024 to a multiple of 1/16 of the power of two
    below it: at most 1/16 more rows, and a count that recurs from step to step."""
    step = 64 if m <= 1024 else 1 << (m.bit_length() - 5)
    return -(-m // step) * step


def pad_mask_index(mask_index: torch.Tensor) -> torch.Tensor:
    """``mask_index`` (M, 2) followed by (0, 0) rows up to :func:`bucket_rows` (M) rows; the
    outputs at the padding rows (past M) are to be dropped.

    The number of masked tokens changes every step; kernels made per shape (oneDNN's bf16 matmuls
    on CPU keep one per shape in a cache; torch.compile recompiles) would otherwise pile up: with
    the exact count a bf16 CPU run's memory grew by about 12 MiB a step. Done on the host, before
    the compiled or distributed forward."""
    m = mask_index.shape[0]
    return torch.cat((mask_index, mask_index.new_zeros(bucket_rows(m) - m, 2)))


class MultiCropWrapper(nn.Module):
    """Runs the (masked) global crops and the local crops through ``backbone`` and ``head``.

    Global crops give all tokens, so the head returns [CLS] and patch outputs; local crops (a
    different resolution, never masked) contribute only their [CLS], as in the official code.
    State-dict keys are ``backbone.*`` and ``head.*``, like the official teacher's.

    ``masked_patches_only`` (training): the loss reads patch outputs at the student's masked
    tokens only, so when the masked positions are known the patch output holds just those rows,
    packed (M, K2) in ``masks.flatten(1).nonzero()`` order. For the student (``masks`` given) the
    ViT's last block and the head then run on the [CLS] and masked tokens only; for the teacher
    (``mask_index`` given, no ``masks``: it sees the unmasked crops) the head's MLP runs on every
    token, as the centre needs their mean, but the last layer projects only the masked ones and
    that mean (``CropOutputs.patch_mean``). With the official ratios about 85% of the patch tokens
    are unmasked; the official code projects every token of every crop. The trainer pads
    ``mask_index`` (:func:`pad_mask_index`) and drops the padding rows of ``patch`` itself.
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
        mask_index: torch.Tensor | None = None,
    ) -> CropOutputs:
        """Global crops (G*B, 3, H, W) with optional masks (G*B, h, w), local crops (L*B, 3, h', w').

        ``mask_index`` (M, 2): (crop, patch) of each masked token, ``masks.flatten(1).nonzero()``;
        computed on the host and passed in, it spares a GPU the sync of finding them itself."""
        if self.masked_patches_only and mask_index is None and masks is not None:
            mask_index = masks.flatten(1).nonzero()
        if not self.masked_patches_only or mask_index is None:
            tokens = self.backbone(global_crops, mask=masks, return_all_tokens=True)  # (G*B, 1 + N, D)
            cls, patch = self.head(tokens)
            outputs = CropOutputs(cls, patch, backbone_cls=tokens[:, 0])
        elif masks is None:  # the teacher: targets at the tokens the student has masked
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
