"""The dense form of the patch outputs, as the official code computes them: every token of every
global crop through the head, (G*B, N, K2). The library gives and takes the packed form only (the
rows of the masked tokens, (M, K2)); the parity and fast-path tests compute the dense form here
and convert it to packed for the library's calls."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import Tensor

from ibot.models import CropOutputs, MultiCropWrapper


def flat_masks(masks: Sequence[Tensor] | Tensor) -> Tensor:
    """G bool tensors (B, h, w) or one (G*B, h, w) tensor -> (G*B, N)."""
    return (masks if isinstance(masks, Tensor) else torch.cat(list(masks))).flatten(1)


def pack(patch: Tensor, mask_index: Tensor) -> Tensor:
    """Dense patch outputs (G*B, N, K2) -> the rows at ``mask_index`` (M, 2), (M, K2)."""
    return patch[mask_index[:, 0], mask_index[:, 1]]


def packed_loss_inputs(student_output: tuple[Tensor, Tensor], teacher_output: tuple[Tensor, Tensor],
                       masks: Sequence[Tensor] | Tensor) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, ...], Tensor]:
    """Dense ``(cls, patch (G*B, N, K2))`` outputs of the student and teacher -> the loss's packed
    ``student_output``, ``teacher_output`` (with the teacher's mean over all tokens) and ``mask_index``."""
    mask_index = flat_masks(masks).nonzero()
    (s_cls, s_patch), (t_cls, t_patch) = student_output, teacher_output
    return (s_cls, pack(s_patch, mask_index)), (t_cls, pack(t_patch, mask_index), t_patch.mean(1)), mask_index


def dense_loss(loss, student_output, teacher_output, student_local_cls, student_mask, epoch):
    """``loss`` (an :class:`ibot.loss.IBOTLoss`) called on dense patch outputs."""
    student, teacher, mask_index = packed_loss_inputs(student_output, teacher_output, student_mask)
    return loss(student, teacher, student_local_cls, student_mask, epoch, mask_index)


def dense_outputs(wrapper: MultiCropWrapper, global_crops: Tensor, masks: Tensor | None = None,
                  local_crops: Tensor | None = None) -> CropOutputs:
    """The official ``MultiCropWrapper``: every global-crop token through the backbone's last
    block and the head, ``patch`` (G*B, N, K2); local crops give their [CLS]."""
    tokens = wrapper.backbone(global_crops, mask=masks, return_all_tokens=True)  # (G*B, 1 + N, D)
    cls, patch = wrapper.head(tokens)
    outputs = CropOutputs(cls, patch, backbone_cls=tokens[:, 0])
    if local_crops is not None:
        outputs = outputs._replace(local_cls=wrapper.head(wrapper.backbone(local_crops)))
    return outputs


def dense_forward(wrapper: MultiCropWrapper, global_crops: Tensor, masks: Tensor | None = None,
                  local_crops: Tensor | None = None, *, mask_index: Tensor) -> CropOutputs:
    """:meth:`MultiCropWrapper.forward`'s packed outputs computed the dense way: the dense outputs
    read at ``mask_index``, and for the teacher (no masks) the mean over all tokens."""
    outputs = dense_outputs(wrapper, global_crops, masks, local_crops)
    return outputs._replace(patch=pack(outputs.patch, mask_index),
                            patch_mean=outputs.patch.mean(1) if masks is None else None)


def use_dense_forward(*wrappers: MultiCropWrapper) -> None:
    """Make ``wrappers`` compute every token, as the official code does (:func:`dense_forward`)."""
    for wrapper in wrappers:
        wrapper.forward = functools.partial(dense_forward, wrapper)
