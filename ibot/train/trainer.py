"""The pre-training loop. It orchestrates; the maths lives in the modules it calls.

dataset -> multi-crop + masks -> student / teacher -> IBOTLoss -> AdamW (+ schedules,
per-parameter clipping, frozen last layer) -> EMA teacher -> log / atomic checkpoint.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ibot.config import PretrainConfig, augmentation_kwargs, backbone_kwargs
from ibot.data.batched_color import apply_color
from ibot.data.datasets import build_dataset
from ibot.data.masking import MaskGenerator
from ibot.data.pretrain import EpochBatchSampler, PretrainDataset, collate_pretrain
from ibot.data.transforms import MultiCropAugmentation
from ibot.loss import IBOTLoss, koleo_loss
from ibot.models import IBOTHead, MultiCropWrapper, build_backbone, use_explicit_attention
from ibot.models.multicrop import pad_mask_index
from ibot.train import checkpoint as ckpt
from ibot.train.distributed import DistInfo, barrier, init_distributed
from ibot.train.ema import EMAUpdater
from ibot.train.run_logger import RunLogger
from ibot.train.optim import build_optimizer, cancel_last_layer_gradients, clip_gradients_per_param
from ibot.train.precision import resolve_precision
from ibot.train.schedules import cosine_schedule


class NonFiniteLossError(RuntimeError):
    """Raised when the loss becomes NaN or infinite; the last checkpoint on disk stays intact."""


@dataclass
class TrainState:
    epoch: int = 0  # the epoch in progress (or the next to run)
    step_in_epoch: int = 0  # optimiser steps done within ``epoch``

    @property
    def done(self) -> tuple[int, int]:
        return self.epoch, self.step_in_epoch


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"run.device={name} but no CUDA device is available; use run.device=cpu")
    return torch.device(name)


def build_student_teacher(cfg: PretrainConfig) -> tuple[MultiCropWrapper, MultiCropWrapper]:
    """Student (drop path, mask token) and teacher (same weights, no mask token) networks."""
    m = cfg.model
    common = backbone_kwargs(cfg)
    student_bb = build_backbone(m.arch, drop_path_rate=m.drop_path_rate, masked_im_modeling=True, **common)
    teacher_bb = build_backbone(m.arch, drop_path_rate=0.0, masked_im_modeling=False, **common)
    head = dict(out_dim=m.out_dim, patch_out_dim=m.patch_out_dim, hidden_dim=m.head_hidden_dim,
                bottleneck_dim=m.head_bottleneck_dim, nlayers=m.head_nlayers)
    student = MultiCropWrapper(student_bb, IBOTHead(student_bb.embed_dim, norm_last_layer=m.norm_last_layer,
                                                    shared_head=m.shared_head, **head), masked_patches_only=True)
    teacher = MultiCropWrapper(teacher_bb, IBOTHead(teacher_bb.embed_dim, shared_head=m.shared_head_teacher, **head),
                               masked_patches_only=True)
    missing, unexpected = teacher.load_state_dict(student.state_dict(), strict=False)
    if missing or [k for k in unexpected if "masked_embed" not in k]:
        raise RuntimeError(f"teacher/student mismatch: missing {missing}, unexpected {unexpected}")
    for param in teacher.parameters():
        param.requires_grad_(False)
    return student, teacher


class Pretrainer:
    """iBOT pre-training for one process of a (possibly) distributed run."""

    def __init__(self, cfg: PretrainConfig) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg.run.device)
        self.dist: DistInfo = init_distributed(self.device.type)
        if self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        self.amp_dtype = resolve_precision(cfg.run.precision, self.device)
        self.output_dir = Path(cfg.run.output_dir)
        self.checkpoint_path = self.output_dir / "checkpoint.safetensors"

        torch.manual_seed(cfg.run.seed)  # identical initial weights on every rank
        self.student, self.teacher = build_student_teacher(cfg)
        self.student.to(self.device)
        self.teacher.to(self.device).eval()
        if self.device.type == "cpu" and self.amp_dtype is not None:
            # measured (benchmarks/README.md): ATen's CPU flash-attention backward is slow in bf16,
            # while the explicit softmax(QK^T)V runs on AMX matmuls; same maths
            use_explicit_attention(self.student, self.teacher)
        # ``student``/``teacher`` hold the weights; ``student_step``/``teacher_step`` run the forward
        # (through DDP and torch.compile when enabled)
        self.student_step: nn.Module = self.student
        if self.dist.world_size > 1:
            self.student_step = DistributedDataParallel(
                self.student, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.teacher_step: nn.Module = self.teacher
        if cfg.run.compile:
            self.student_step = torch.compile(self.student_step)
            self.teacher_step = torch.compile(self.teacher)
        self._build_data()
        self._build_objective()
        torch.manual_seed(cfg.run.seed + 1000 + self.dist.rank)  # drop path differs per rank

    # ------------------------------------------------------------------------------ set-up
    def _build_data(self) -> None:
        cfg, d = self.cfg, self.cfg.data
        augmentation = MultiCropAugmentation(**augmentation_kwargs(d), batched_color=d.batched_color)
        masks = MaskGenerator(cfg.mask.pred_ratio, cfg.mask.pred_ratio_var, tuple(cfg.mask.pred_aspect_ratio),
                              cfg.mask.pred_shape, cfg.mask.pred_start_epoch)
        base = build_dataset(d.data, split="train")
        self.dataset = PretrainDataset(base, augmentation, masks, self.student.backbone.mask_stride, cfg.run.seed)
        self.global_batch = cfg.optim.batch_size_per_device * self.dist.world_size
        if len(base) < self.global_batch:
            raise ValueError(f"dataset {d.data} has {len(base)} images, fewer than one batch of "
                             f"{self.global_batch}; lower optim.batch_size_per_device")
        self.sampler = EpochBatchSampler(len(base), self.global_batch, self.dist.world_size, self.dist.rank,
                                         cfg.run.seed)
        self.steps_per_epoch = len(self.sampler)
        self.loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=self.sampler, collate_fn=collate_pretrain,
            num_workers=d.num_workers, pin_memory=self.device.type == "cuda",
            persistent_workers=d.num_workers > 0, prefetch_factor=4 if d.num_workers > 0 else None,
            # a private generator: creating loader iterators must not consume the global RNG
            generator=torch.Generator().manual_seed(cfg.run.seed))

    def _build_objective(self) -> None:
        cfg, o, n = self.cfg, self.cfg.optim, self.steps_per_epoch
        self.ibot_loss = IBOTLoss(
            cfg.model.out_dim, cfg.model.patch_out_dim, cfg.data.global_crops_number, cfg.data.local_crops_number,
            cfg.loss.warmup_teacher_temp, cfg.loss.teacher_temp, cfg.loss.warmup_teacher_patch_temp,
            cfg.loss.teacher_patch_temp, cfg.loss.warmup_teacher_temp_epochs, o.epochs,
            student_temp=cfg.loss.student_temp, center_momentum=cfg.loss.center_momentum,
            center_momentum2=cfg.loss.center_momentum, lambda1=cfg.loss.lambda1, lambda2=cfg.loss.lambda2,
            mim_start_epoch=cfg.mask.pred_start_epoch, centering=cfg.loss.centering).to(self.device)
        self.optimizer = build_optimizer(self.student, fused=o.fused)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        base_lr = o.lr * self.global_batch / 256.0  # linear scaling rule
        self.lr_schedule = cosine_schedule(base_lr, o.min_lr, o.epochs, n, warmup_epochs=o.warmup_epochs)
        self.wd_schedule = cosine_schedule(o.weight_decay, o.weight_decay_end, o.epochs, n)
        self.momentum_schedule = cosine_schedule(o.momentum_teacher, 1.0, o.epochs, n)
        self.ema = EMAUpdater(self.student, self.teacher)
        self.clip_params = [p for p in self.student.parameters() if p.requires_grad]

    # ------------------------------------------------------------------------------ checkpoints
    def save(self, state: TrainState) -> Path:
        """Everything needed to continue exactly: weights, optimiser, centres, counters, RNG."""
        opt_tensors, param_groups = ckpt.optimizer_to_tensors(self.optimizer.state_dict())
        tensors = {
            **ckpt.prefixed("student.", self.student.state_dict()),
            **ckpt.prefixed("teacher.", self.teacher.state_dict()),
            "loss.center": self.ibot_loss.center, "loss.center2": self.ibot_loss.center2,
            **opt_tensors, "rng.torch": torch.get_rng_state(),
        }
        if self.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        meta = {"epoch": state.epoch, "step_in_epoch": state.step_in_epoch,
                "global_step": state.epoch * self.steps_per_epoch + state.step_in_epoch,
                "config": self.cfg.to_dict(), "optimizer_param_groups": param_groups,
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
                "world_size": self.dist.world_size}
        return ckpt.save_checkpoint(self.checkpoint_path, tensors, meta)

    def load(self, path: str | Path) -> TrainState:
        """Restore a run from one of our checkpoints (exactly), from a file written by ``ibot
        convert``, or from an official full ``checkpoint.pth`` (weights, loss centres and epoch;
        AdamW moments start afresh since the official ones follow another parameter order)."""
        if ckpt.is_our_checkpoint(path):
            tensors, meta = ckpt.load_checkpoint(path)
        else:
            from ibot.convert import official_to_ours

            tensors, meta = official_to_ours(path)
            missing = {"student", "teacher"} - set(meta["networks"])
            if missing:
                raise ValueError(f"{path} has no {' or '.join(sorted(missing))} network; resuming needs a full "
                                 f"training checkpoint (checkpoint.pth), not a backbone-only file")
        self.student.load_state_dict(ckpt.strip_prefix("student.", tensors))
        self.teacher.load_state_dict(ckpt.strip_prefix("teacher.", tensors))
        self.ibot_loss.center.copy_(tensors["loss.center"])
        self.ibot_loss.center2.copy_(tensors["loss.center2"])
        if "optimizer_param_groups" in meta:
            self.optimizer.load_state_dict(ckpt.optimizer_from_tensors(tensors, meta["optimizer_param_groups"]))
        if meta.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(meta["scaler"])
        if "rng.torch" in tensors and meta.get("world_size", 1) == self.dist.world_size:
            torch.set_rng_state(tensors["rng.torch"])  # drop path continues as if never stopped
            if "rng.cuda" in tensors and self.device.type == "cuda":
                torch.cuda.set_rng_state(tensors["rng.cuda"], self.device)
        return TrainState(meta["epoch"], meta.get("step_in_epoch", 0))

    # ------------------------------------------------------------------------------ training
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def train_step(self, batch: Any, epoch: int, it: int) -> dict[str, torch.Tensor]:
        """One optimiser step at global iteration ``it``; returns the (device) loss terms."""
        for i, group in enumerate(self.optimizer.param_groups):
            group["lr"] = self.lr_schedule[it]
            if i == 0:  # only the decayed group follows the weight-decay schedule
                group["weight_decay"] = self.wd_schedule[it]
        global_crops = batch.global_crops.to(self.device, non_blocking=True)
        masks = batch.masks.to(self.device, non_blocking=True)
        mask_index = batch.masks.flatten(1).nonzero()  # found on the host: no GPU sync
        m = mask_index.shape[0]
        rows = pad_mask_index(mask_index).to(self.device, non_blocking=True)  # a recurring count for the networks
        local_crops = batch.local_crops.to(self.device, non_blocking=True) if batch.local_crops is not None else None
        if batch.global_params is not None:  # uint8 crops: the colour half of the augmentation, batched here
            mean, std = self.dataset.augmentation.mean, self.dataset.augmentation.std
            global_crops = apply_color(global_crops, batch.global_params, mean, std)
            if local_crops is not None:
                local_crops = apply_color(local_crops, batch.local_params, mean, std)

        with self._autocast():
            with torch.no_grad():  # patch targets at the masked tokens only, plus their mean for the centre
                teacher = self.teacher_step(global_crops, mask_index=rows)
            student = self.student_step(global_crops, masks, local_crops, mask_index=rows)
            # packed patch rows past m are padding (dense ones, of a plain wrapper, are read at the masks)
            student_patch, teacher_patch = (p[:m] if p.dim() == 2 else p for p in (student.patch, teacher.patch))
            losses = self.ibot_loss((student.cls, student_patch), (teacher.cls, teacher_patch, teacher.patch_mean),
                                    student.local_cls, masks, epoch, rows[:m])
            koleo_weight = self.cfg.loss.koleo_weight
            if koleo_weight > 0:  # per global crop, as DINOv2 does
                chunks = student.backbone_cls.chunk(self.cfg.data.global_crops_number)
                losses["koleo"] = koleo_weight * sum(koleo_loss(c) for c in chunks)
                losses["loss"] = losses["loss"] + losses["koleo"]

        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(losses["loss"]).backward()
        if self.cfg.optim.clip_grad > 0:
            self.scaler.unscale_(self.optimizer)
            clip_gradients_per_param(self.clip_params, self.cfg.optim.clip_grad)
        cancel_last_layer_gradients(self.student, epoch, self.cfg.optim.freeze_last_layer)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.ema.update(float(self.momentum_schedule[it]))
        return {k: v.detach() for k, v in losses.items()}

    def _check_finite(self, losses: dict[str, torch.Tensor], state: TrainState) -> None:
        if not math.isfinite(losses["loss"].item()):
            where = f"epoch {state.epoch}, step {state.step_in_epoch}"
            kept = f"; last good checkpoint: {self.checkpoint_path}" if self.checkpoint_path.exists() else ""
            raise NonFiniteLossError(f"loss is {losses['loss'].item()} at {where}: stopping{kept}. "
                                     f"Try a lower optim.lr, optim.clip_grad or run.precision=fp32")

    def fit(self, resume: str | Path | None = None) -> list[dict[str, Any]]:
        """Train to the end (or ``run.max_steps``); returns the logged records."""
        cfg = self.cfg
        state = self.load(resume) if resume else TrainState()
        logger = RunLogger(self.output_dir, enabled=self.dist.is_main, progress=cfg.run.progress,
                           tensorboard=cfg.run.tensorboard)
        if self.dist.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
            logger.info(f"iBOT pre-training: {cfg.model.arch}/{cfg.model.patch_size} on {cfg.data.data} "
                        f"({len(self.dataset)} images), {self.steps_per_epoch} steps x {cfg.optim.epochs} epochs, "
                        f"batch {self.global_batch} on {self.dist.world_size} x {self.device.type}"
                        + (f", resumed at epoch {state.epoch} step {state.step_in_epoch}" if resume else ""))
        self.student.train()
        steps_run, max_steps = 0, cfg.run.max_steps
        while state.epoch < cfg.optim.epochs:
            epoch = state.epoch
            self.sampler.epoch, self.sampler.start_step = epoch, state.step_in_epoch
            meter = logger.start_epoch(epoch, self.steps_per_epoch, state.step_in_epoch)
            tic = time.perf_counter()
            for batch in self.loader:
                data_time = time.perf_counter() - tic
                it = epoch * self.steps_per_epoch + state.step_in_epoch
                losses = self.train_step(batch, epoch, it)
                state.step_in_epoch += 1
                steps_run += 1
                stop = max_steps > 0 and steps_run >= max_steps
                log_now = (stop or state.step_in_epoch % cfg.run.log_every_steps == 0
                           or state.step_in_epoch == self.steps_per_epoch)
                if log_now or self.device.type == "cpu":
                    self._check_finite(losses, state)
                meter.update(losses, batch_size=self.global_batch, data_time=data_time,
                             compute_time=time.perf_counter() - tic - data_time, n_skipped=batch.n_skipped,
                             skipped_example=batch.skipped_example)
                if log_now:
                    logger.log_step(meter, {"epoch": epoch, "step": state.step_in_epoch, "global_step": it + 1,
                                            **self._schedule_values(epoch, it)})
                every = cfg.run.checkpoint_every_steps
                if stop or (every and state.step_in_epoch % every == 0 and state.step_in_epoch < self.steps_per_epoch):
                    self._checkpoint(state)
                if stop:
                    logger.close()
                    return logger.records
                tic = time.perf_counter()
            extra = {}
            if cfg.run.eval_every and (epoch + 1) % cfg.run.eval_every == 0 and self.dist.is_main:
                extra["knn_top1"] = self._knn_top1()
            logger.end_epoch(meter, {"epoch": epoch, **self._schedule_values(epoch, it), **extra})
            state = TrainState(epoch + 1, 0)
            self._checkpoint(state)
        logger.close()
        return logger.records

    def _knn_top1(self) -> float:
        """k-NN (k = 20) top-1 of the teacher on the dataset's val split, during training."""
        from ibot.eval.knn import backbone_knn

        result = backbone_knn(self.teacher.backbone, self.cfg.data.data, self.cfg.data.global_crops_size,
                              self.device, ks=(20,), progress=False)
        return next(iter(result.values()))["top1"]

    def _checkpoint(self, state: TrainState) -> None:
        if self.dist.is_main:
            self.save(state)
        barrier()

    def _schedule_values(self, epoch: int, it: int) -> dict[str, float]:
        return {"lr": float(self.lr_schedule[it]), "wd": float(self.wd_schedule[it]),
                "momentum": float(self.momentum_schedule[it]),
                "teacher_temp": float(self.ibot_loss.teacher_temp_schedule[epoch]),
                "teacher_patch_temp": float(self.ibot_loss.teacher_temp2_schedule[epoch])}
