"""One pre-training step's maths: the student and teacher forwards, the iBOT loss (plus the
optional KoLeo term), its backward, and the teacher's EMA update.

The loop (:mod:`ibot.train.trainer`) holds what varies with the iteration or the run: schedules,
optimiser, clipping, checkpoints, logging.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ibot.build import build_loss
from ibot.config import PretrainConfig
from ibot.data.batched_color import apply_color
from ibot.data.batched_crops import cut_crops
from ibot.data.pretrain import PretrainBatch
from ibot.data.transforms import MultiCropAugmentation
from ibot.loss import koleo_loss
from ibot.models import MultiCropWrapper, use_explicit_attention
from ibot.runtime import resolve_attention
from ibot.train.collapse import PrototypeLabels, collapse_metrics
from ibot.train.ema import EMAUpdater
from ibot.train.sharding import shard_networks


class IBOTObjective:
    """The iBOT objective of one process: ``forward_backward(batch, epoch)`` and ``update_teacher(momentum)``.

    Places ``student`` and ``teacher`` (from :func:`ibot.build.build_student_teacher`) on
    ``device``; ``student_step`` / ``teacher_step`` run their forwards (through DDP when
    ``world_size > 1``, or both networks sharded by FSDP with ``run.strategy=fsdp``, and
    torch.compile with ``run.compile``). ``amp_dtype``: the autocast
    dtype, None for fp32 (fp16 brings a grad scaler, ``scaler``); ``augmentation``: the run's,
    whose crop sizes and normalisation the batched crop and colour ops apply.
    """

    def __init__(self, cfg: PretrainConfig, student: MultiCropWrapper, teacher: MultiCropWrapper,
                 device: torch.device, amp_dtype: torch.dtype | None, world_size: int,
                 augmentation: MultiCropAugmentation) -> None:
        self.device, self.amp_dtype = device, amp_dtype
        self.koleo_weight, self.global_crops_number = cfg.loss.koleo_weight, cfg.data.global_crops_number
        self.mean, self.std = augmentation.mean, augmentation.std
        self.crop_sizes = augmentation.global_crops_size, augmentation.local_crops_size
        self.student, self.teacher = student, teacher
        self.student.to(device)
        self.teacher.to(device).eval()
        if resolve_attention(cfg.run.attention, device):  # the same maths, faster on the CPU
            use_explicit_attention(self.student, self.teacher)
        # ``student``/``teacher`` hold the weights; ``student_step``/``teacher_step`` run the forward
        # (through DDP and torch.compile when enabled)
        self.student_step: nn.Module = self.student
        if world_size > 1 and cfg.run.strategy == "fsdp":  # the shards' gradients are reduced by FSDP itself
            shard_networks(self.student, self.teacher, device)
        elif world_size > 1:
            self.student_step = DistributedDataParallel(
                self.student, device_ids=[device.index] if device.type == "cuda" else None)
        self.teacher_step: nn.Module = self.teacher
        if cfg.run.compile:
            self.student_step = torch.compile(self.student_step)
            self.teacher_step = torch.compile(self.teacher)
        self.loss = build_loss(cfg).to(device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        self.ema = EMAUpdater(self.student, self.teacher)
        self.prototypes = PrototypeLabels()  # the epoch's teacher assignments, for its NMI

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def forward_backward(self, batch: PretrainBatch, epoch: int) -> dict[str, torch.Tensor]:
        """The loss terms of ``batch`` at ``epoch`` (detached, on the device) and the step's
        :mod:`ibot.train.collapse` metrics, after the backward of the loss (scaled by ``scaler``)
        into the student's gradients."""
        masks = batch.masks.to(self.device, non_blocking=True)
        rows = batch.mask_index.to(self.device, non_blocking=True)  # padded to a recurring count (collate)
        m = batch.num_masked
        global_crops, local_crops = self._crops(batch)
        if batch.global_params is not None:  # uint8 crops: the colour half of the augmentation, batched here
            global_crops = apply_color(global_crops, batch.global_params, self.mean, self.std)
            if local_crops is not None:
                local_crops = apply_color(local_crops, batch.local_params, self.mean, self.std)

        with self._autocast():
            with torch.no_grad():  # patch targets at the masked tokens only, plus their mean for the centre
                teacher = self.teacher_step(global_crops, mask_index=rows)
            student = self.student_step(global_crops, masks, local_crops, mask_index=rows)
            # packed patch rows past m are padding
            losses, targets = self.loss.forward_with_targets(
                (student.cls, student.patch[:m]), (teacher.cls, teacher.patch[:m], teacher.patch_mean),
                student.local_cls, masks, epoch, rows[:m])
            if self.koleo_weight > 0:  # per global crop, as DINOv2 does
                chunks = student.backbone_cls.chunk(self.global_crops_number)
                losses["koleo"] = self.koleo_weight * sum(koleo_loss(c) for c in chunks)
                losses["loss"] = losses["loss"] + losses["koleo"]

        self.scaler.scale(losses["loss"]).backward()
        metrics = collapse_metrics(targets, teacher.cls, student.cls, student.backbone_cls)
        self.prototypes.add(teacher.cls, None if batch.labels is None else batch.labels.to(self.device))
        return {**{k: v.detach() for k, v in losses.items()}, **metrics}

    def _crops(self, batch: PretrainBatch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The batch's global and local crops on the device; with batched crops, cut here."""
        if batch.images is None:
            local = batch.local_crops
            return (batch.global_crops.to(self.device, non_blocking=True),
                    None if local is None else local.to(self.device, non_blocking=True))
        images = batch.images.to(self.device, non_blocking=True)
        local = None if batch.local_boxes is None else cut_crops(images, batch.local_boxes, self.crop_sizes[1])
        return cut_crops(images, batch.global_boxes, self.crop_sizes[0]), local

    def update_teacher(self, momentum: float) -> None:
        """``teacher <- momentum * teacher + (1 - momentum) * student`` (the EMA of DINO / iBOT)."""
        self.ema.update(momentum)
