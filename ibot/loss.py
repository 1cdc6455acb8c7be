"""The iBOT objective: self-distillation on [CLS] plus masked image modelling on patch tokens.

For teacher global crop ``q`` and student crop ``v`` (Zhou et al., 2022, Eq. 1 and 2):

- ``v != q``: ``L_cls = -sum_k P_t(x_q)[k] log P_s(x_v)[k]`` on the [CLS] outputs;
- ``v == q``: ``L_mim = -sum_{i masked} sum_k P_t(u_i)[k] log P_s(û_i)[k] / #masked`` between
  the teacher's patch tokens of the unmasked crop and the student's of the masked same crop.

``P_s = softmax(student / student_temp)``; ``P_t = softmax((teacher - center) / tau)`` with ``tau``
warmed up per epoch. Both centres are EMAs of the raw teacher outputs, updated after the loss.
``centering="sinkhorn"`` (an option, not the official method) replaces the centred softmax by
DINOv2's Sinkhorn-Knopp normalisation of ``exp(teacher / tau)`` over the batch ([CLS]) and over
the masked tokens (patches).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CENTERINGS", "IBOTLoss", "TeacherTargets", "koleo_loss", "sinkhorn_knopp", "teacher_temp_schedule"]

CENTERINGS = ("mean", "sinkhorn")  # of the teacher's outputs: the official centre, DINOv2's Sinkhorn-Knopp


def teacher_temp_schedule(
    warmup_temp: float, temp: float, warmup_epochs: int, nepochs: int, start_epoch: int = 0
) -> np.ndarray:
    """Per-epoch teacher temperatures: ``warmup_temp`` until ``start_epoch``, a linear warm-up
    over ``warmup_epochs`` epochs (``np.linspace``, both ends included), then ``temp``."""
    if start_epoch < 0 or warmup_epochs < 0 or start_epoch + warmup_epochs > nepochs:
        raise ValueError(
            f"teacher temperature warm-up: need 0 <= mim_start_epoch ({start_epoch}) and "
            f"mim_start_epoch + warmup_teacher_temp_epochs ({warmup_epochs}) <= nepochs ({nepochs})"
        )
    return np.concatenate((
        np.full(start_epoch, warmup_temp),
        np.linspace(warmup_temp, temp, warmup_epochs),
        np.full(nepochs - warmup_epochs - start_epoch, temp),
    ))


@torch.no_grad()
def sinkhorn_knopp(logits: Tensor, temp: float, iterations: int = 3) -> Tensor:
    """Teacher targets (R, K) whose rows sum to 1 and whose columns share the mass equally across
    the rows of every process: ``exp(logits / temp)`` alternately normalised over prototypes and
    over rows (DINOv2's ``sinkhorn_knopp_teacher``; sums are all-reduced under DDP)."""
    distributed = dist.is_available() and dist.is_initialized()

    def reduce(t: Tensor, op=None) -> Tensor:
        if distributed:
            dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
        return t

    scaled = logits.float() / temp
    # the global maximum (-inf on a rank without rows, e.g. no masked token in its batch)
    peak = reduce(torch.cat([scaled.flatten(), scaled.new_full((1,), -torch.inf)]).max().reshape(1),
                  dist.ReduceOp.MAX if distributed else None)
    q = torch.exp(scaled - peak)  # the same factor on every rank: the result does not change
    rows = reduce(torch.tensor([float(q.shape[0])], device=q.device))
    k = q.shape[1]
    q = q / reduce(q.sum().reshape(1)).clamp_min(torch.finfo(q.dtype).tiny)
    for _ in range(iterations):
        q = q / (reduce(q.sum(dim=0, keepdim=True)).clamp_min(torch.finfo(q.dtype).tiny) * k)
        q = q / (q.sum(dim=1, keepdim=True).clamp_min(torch.finfo(q.dtype).tiny) * rows)
    return q * rows


def koleo_loss(features: Tensor, eps: float = 1e-8) -> Tensor:
    """KoLeo regulariser (Sablayrolles et al., 2019; DINOv2's ``koleo_loss``), an option, not part
    of iBOT: ``-mean_i log ||x_i - x_nn(i)||`` over the L2-normalised rows ``x`` (R, D), ``nn(i)``
    the nearest other row. It spreads the rows apart, the Kozachenko-Leonenko entropy estimate."""
    if features.shape[0] < 2:
        raise ValueError(f"koleo_loss needs at least 2 rows, got {features.shape[0]}")
    with torch.autocast(features.device.type, enabled=False):
        x = F.normalize(features.float(), dim=-1, eps=eps)
        with torch.no_grad():
            similarity = x @ x.T
            similarity.fill_diagonal_(-2.0)  # below any cosine: a row is never its own neighbour
            nearest = similarity.argmax(dim=1)
        distance = (x - x[nearest]).norm(dim=-1)
        return -torch.log(distance + eps).mean()


class TeacherTargets(NamedTuple):
    """The teacher's distributions a loss step used (detached): ``cls`` (G*B, K) and the masked
    tokens' ``patch`` (M, K2), each row summing to 1."""

    cls: Tensor
    patch: Tensor


class IBOTLoss(nn.Module):
    """iBOT loss with teacher centring and sharpening (official ``iBOTLoss`` defaults).

    Inputs are crop-major: rows ``[c * B:(c + 1) * B]`` are crop ``c`` of every image. Returns
    ``{"cls": lambda1 * mean over the ngcrops * (ncrops - 1) crop pairs, "patch": lambda2 * mean
    over the ngcrops views, "loss": cls + patch}``; :meth:`forward_with_targets` also returns the
    teacher distributions it scored against (:class:`TeacherTargets`).
    """

    center: Tensor
    center2: Tensor

    def __init__(
        self,
        out_dim: int,
        patch_out_dim: int,
        ngcrops: int,
        nlcrops: int,
        warmup_teacher_temp: float,
        teacher_temp: float,
        warmup_teacher_temp2: float,
        teacher_temp2: float,
        warmup_teacher_temp_epochs: int,
        nepochs: int,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
        center_momentum2: float = 0.9,
        lambda1: float = 1.0,
        lambda2: float = 1.0,
        mim_start_epoch: int = 0,
        centering: str = "mean",
    ) -> None:
        super().__init__()
        if centering not in CENTERINGS:
            raise ValueError(f"centering must be one of {', '.join(CENTERINGS)}, got {centering!r}")
        self.centering = centering
        if ngcrops < 1 or nlcrops < 0 or ngcrops + nlcrops < 2:
            raise ValueError(
                f"IBOTLoss needs ngcrops >= 1, nlcrops >= 0 and at least 2 crops in all, "
                f"got ngcrops={ngcrops}, nlcrops={nlcrops}"
            )
        self.ngcrops = ngcrops
        self.nlcrops = nlcrops
        self.ncrops = ngcrops + nlcrops
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.center_momentum2 = center_momentum2
        self.lambda1 = lambda1
        self.lambda2 = lambda2
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.register_buffer("center2", torch.zeros(1, 1, patch_out_dim))
        self.teacher_temp_schedule = teacher_temp_schedule(
            warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs, nepochs
        )
        # the patch temperature stays at its warm-up value until MIM starts
        self.teacher_temp2_schedule = teacher_temp_schedule(
            warmup_teacher_temp2, teacher_temp2, warmup_teacher_temp_epochs, nepochs,
            start_epoch=mim_start_epoch,
        )

    def forward(self, *inputs, **kw_inputs) -> dict[str, Tensor]:
        """The loss terms of :meth:`forward_with_targets` (same arguments)."""
        return self.forward_with_targets(*inputs, **kw_inputs)[0]

    def forward_with_targets(
        self,
        student_output: tuple[Tensor, Tensor],
        teacher_output: tuple[Tensor, Tensor, Tensor],
        student_local_cls: Tensor | None,
        student_mask: Sequence[Tensor] | Tensor,
        epoch: int,
        mask_index: Tensor,
    ) -> tuple[dict[str, Tensor], TeacherTargets]:
        """``student_output = (cls (G*B, K), patch (M, K2))``, ``teacher_output = (cls (G*B, K),
        patch (M, K2), patch_mean (G*B, K2))``, ``student_local_cls (L*B, K)`` or None,
        ``student_mask``: G bool tensors (B, h, w) or one (G*B, h, w) tensor, True = masked;
        ``mask_index`` (M, 2): ``student_mask.flatten(1).nonzero()`` (:class:`ibot.data.PretrainBatch`).

        Patch outputs come packed: the rows of the M masked tokens only, in ``mask_index`` order
        (:class:`ibot.models.MultiCropWrapper`); the teacher's ``patch_mean`` is each crop's mean
        patch output over all N tokens, which feeds the centre. Returns the terms and the teacher
        distributions they scored against, taken before this step moves the centres."""
        # the loss is computed in float32 whatever autocast gave the networks (as CUDA autocast
        # does for softmax in the official code)
        student_cls, student_patch = (t.float() for t in student_output)
        if len(teacher_output) != 3 or teacher_output[2] is None:
            raise ValueError("teacher_output: give (cls (G*B, K), packed patch (M, K2), patch_mean (G*B, K2))")
        teacher_cls, teacher_patch, teacher_mean = (t.float() for t in teacher_output)
        student_local_cls = student_local_cls.float() if student_local_cls is not None else None
        nepochs = len(self.teacher_temp_schedule)
        if not 0 <= epoch < nepochs:
            raise ValueError(f"epoch {epoch} is outside [0, nepochs={nepochs})")
        if student_local_cls is not None:
            student_cls = torch.cat([student_cls, student_local_cls])
        batch = teacher_cls.shape[0] // self.ngcrops
        n_teacher, n_student = teacher_cls.shape[0], student_cls.shape[0]
        if n_teacher != self.ngcrops * batch or n_student != self.ncrops * batch:
            raise ValueError(
                f"expected {self.ngcrops} teacher and {self.ncrops} student crops of equal batch, "
                f"got {n_teacher} teacher and {n_student} student [CLS] rows"
            )
        mask = self._flat_mask(student_mask, n_teacher)

        # teacher centring and sharpening, detached; patch tokens at masked positions only, the
        # only ones the loss reads (the official code sharpens and scores every token, then
        # multiplies the unmasked ones by 0: the same sums, about 85% less work at its ratios)
        temp = float(self.teacher_temp_schedule[epoch])
        temp2 = float(self.teacher_temp2_schedule[epoch])
        rows = mask_index[:, 0]  # (M,): the crop of each masked token
        for name, patch in (("student", student_patch), ("teacher", teacher_patch)):
            if patch.dim() != 2 or patch.shape[0] != rows.shape[0]:
                raise ValueError(f"packed {name} patch outputs: {tuple(patch.shape)} for {rows.shape[0]} "
                                 f"masked tokens; expected ({rows.shape[0]}, K2)")
        if self.centering == "sinkhorn":
            teacher_cls_p = sinkhorn_knopp(teacher_cls, temp)
            teacher_patch_p = sinkhorn_knopp(teacher_patch, temp2)
        else:
            teacher_cls_p = F.softmax((teacher_cls - self.center) / temp, dim=-1).detach()
            teacher_patch_p = F.softmax((teacher_patch - self.center2[0]) / temp2, dim=-1).detach()
        targets = TeacherTargets(teacher_cls_p, teacher_patch_p)  # both already detached
        student_cls_lp = F.log_softmax(student_cls / self.student_temp, dim=-1)
        student_patch_lp = F.log_softmax(student_patch / self.student_temp, dim=-1)

        # [CLS]: cross-entropy of every (teacher crop q, student crop v) pair in one contraction
        teacher_cls_p = teacher_cls_p.unflatten(0, (self.ngcrops, batch))  # (G*B, K) -> (G, B, K)
        student_cls_lp = student_cls_lp.unflatten(0, (self.ncrops, batch))  # (V*B, K) -> (V, B, K)
        # autocast off: the contraction stays in float32, like the element-wise official sums
        with torch.autocast(teacher_cls_p.device.type, enabled=False):
            pair_ce = -torch.einsum("qbk,vbk->qv", teacher_cls_p, student_cls_lp) / batch  # (G, V)
        different = ~torch.eye(self.ngcrops, self.ncrops, dtype=torch.bool, device=pair_ce.device)
        loss_cls = pair_ce[different].mean() * self.lambda1

        # patches: same crop, masked tokens only, per-image mean then batch mean
        token_ce = -(teacher_patch_p * student_patch_lp).sum(dim=-1)  # (M, K2) -> (M,)
        ce_sum = token_ce.new_zeros(mask.shape[0]).index_add(0, rows, token_ce)  # (G*B,)
        per_image = ce_sum / mask.sum(dim=-1).clamp(min=1).to(ce_sum.dtype)
        loss_patch = per_image.mean() * self.lambda2

        self.update_center(teacher_cls, teacher_mean)
        return {"cls": loss_cls, "patch": loss_patch, "loss": loss_cls + loss_patch}, targets

    def _flat_mask(self, student_mask: Sequence[Tensor] | Tensor, crops: int) -> Tensor:
        """Masks as one (G*B, N) bool tensor, checked against the teacher's G*B crops."""
        if not isinstance(student_mask, Tensor):
            if len(student_mask) != self.ngcrops:
                raise ValueError(
                    f"student_mask: expected {self.ngcrops} masks (one per global crop), "
                    f"got {len(student_mask)}"
                )
            student_mask = torch.cat(list(student_mask))
        mask = student_mask.flatten(1).bool()  # (G*B, h, w) -> (G*B, N)
        if mask.shape[0] != crops:
            raise ValueError(
                f"student_mask: {tuple(student_mask.shape)} does not match the teacher's "
                f"{crops} global crops (G*B, h, w)"
            )
        return mask

    @torch.no_grad()
    def update_center(self, teacher_cls: Tensor, teacher_patch_mean: Tensor) -> None:
        """``center <- m * center + (1 - m) * mean_b teacher_cls`` (and ``center2`` likewise from
        each crop's mean patch output ``teacher_patch_mean`` (G*B, K2)), averaged over all
        processes when distributed."""
        distributed = dist.is_available() and dist.is_initialized()
        world_size = dist.get_world_size() if distributed else 1
        cls_sum = teacher_cls.to(self.center.dtype).sum(dim=0, keepdim=True)  # (G*B, K) -> (1, K)
        patch_sum = teacher_patch_mean.to(self.center2.dtype).sum(dim=0, keepdim=True)  # (G*B, K2) -> (1, K2)
        if distributed:
            dist.all_reduce(cls_sum)
            dist.all_reduce(patch_sum)
        cls_mean = cls_sum / (teacher_cls.shape[0] * world_size)
        patch_mean = patch_sum / (teacher_patch_mean.shape[0] * world_size)
        self.center.mul_(self.center_momentum).add_(cls_mean, alpha=1 - self.center_momentum)
        self.center2.mul_(self.center_momentum2).add_(
            patch_mean.unsqueeze(0), alpha=1 - self.center_momentum2  # (1, K2) -> (1, 1, K2)
        )
