"""The pre-training loop. It orchestrates; the maths lives in the modules it calls.

dataset -> multi-crop + masks -> student / teacher -> IBOTLoss -> AdamW (+ schedules,
per-parameter clipping, frozen last layer) -> EMA teacher -> log / atomic checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ibot.build import build_augmentation, build_mask_generator, build_student_teacher, check_checkpoint_shapes
from ibot.config import PretrainConfig
from ibot.data.datasets import build_dataset
from ibot.data.pretrain import EpochBatchSampler, PretrainDataset, collate_pretrain
from ibot.files import write_text_atomically
from ibot.formats import ours as ckpt
from ibot.options import to_yaml
from ibot.runtime import resolve_device, resolve_precision
from ibot.schedules import cosine_schedule
from ibot.train.collapse import collapse_warnings
from ibot.train.distributed import (DistInfo, all_gather_objects, any_over_processes, barrier, init_distributed,
                                    union_over_processes)
from ibot.train.init_from import InitWeights, init_networks
from ibot.train.objective import IBOTObjective
from ibot.train.optim import build_optimizer, cancel_last_layer_gradients, clip_gradients_per_param
from ibot.train.run_dir import prune_snapshots, snapshot_path, snapshots
from ibot.train.run_logger import RunLogger
from ibot.train.sharding import (full_model_state, full_optimizer_state, is_sharded, load_full_model_state, local,
                                 shard_optimizer_state)

Checkpoint = tuple[dict[str, torch.Tensor], dict[str, Any]]  # tensors under our keys, metadata
EpochCallback = Callable[["Pretrainer", int], dict[str, Any]]  # (trainer, epoch) -> extra epoch-log fields
Gathered = tuple[dict[str, torch.Tensor], list[dict]]  # networks' and optimiser's whole tensors, param groups


class NonFiniteLossError(RuntimeError):
    """Raised when the loss or the weights become NaN or infinite; nothing diverged is ever saved, so
    the checkpoint on disk (and every snapshot) is the state before it."""


@dataclass
class TrainState:
    epoch: int = 0  # the epoch in progress (or the next to run)
    step_in_epoch: int = 0  # optimiser steps done within ``epoch``

    @property
    def done(self) -> tuple[int, int]:
        return self.epoch, self.step_in_epoch


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
        self.checkpoint_path = self.output_dir / ckpt.CHECKPOINT_NAME

        torch.manual_seed(cfg.run.seed)  # identical initial weights on every rank
        student, teacher = build_student_teacher(cfg)
        self._build_data(student.backbone.mask_stride)
        self.objective = IBOTObjective(cfg, student, teacher, self.device, self.amp_dtype, self.dist.world_size,
                                       self.dataset.augmentation)
        # the objective's networks (weights), loss (centres) and grad scaler, which checkpoints hold
        self.student, self.teacher = self.objective.student, self.objective.teacher
        self.ibot_loss, self.scaler = self.objective.loss, self.objective.scaler
        self._build_optimisation()
        # set on the device by any non-finite loss, read (one sync) at log steps and before each save
        self._nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
        self._checked_at = (0, 0)  # (epoch, step) of the last check that passed
        torch.manual_seed(cfg.run.seed + 1000 + self.dist.rank)  # drop path differs per rank

    # ------------------------------------------------------------------------------ set-up
    def _build_data(self, mask_stride: int) -> None:
        cfg, d = self.cfg, self.cfg.data
        augmentation, masks = build_augmentation(d), build_mask_generator(cfg.mask)
        base = build_dataset(d.data, split="train")
        self.dataset = PretrainDataset(base, augmentation, masks, mask_stride, cfg.run.seed)
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

    def _build_optimisation(self) -> None:
        o, n = self.cfg.optim, self.steps_per_epoch
        self.optimizer = build_optimizer(self.student, fused=o.fused)
        base_lr = o.lr * self.global_batch / 256.0  # linear scaling rule
        self.lr_schedule = cosine_schedule(base_lr, o.min_lr, o.epochs, n, warmup_epochs=o.warmup_epochs)
        self.wd_schedule = cosine_schedule(o.weight_decay, o.weight_decay_end, o.epochs, n)
        self.momentum_schedule = cosine_schedule(o.momentum_teacher, 1.0, o.epochs, n)
        self.clip_params = [p for p in self.student.parameters() if p.requires_grad]

    # ------------------------------------------------------------------------------ checkpoints
    @property
    def sharded(self) -> bool:
        """Whether the networks are sharded over the processes (``run.strategy=fsdp``)."""
        return is_sharded(self.student)

    def gather(self) -> Gathered:
        """The student's, teacher's and optimiser's whole tensors under our keys, and the optimiser's
        param groups. Sharded, they are gathered: every process calls it, rank 0 keeps them."""
        opt_tensors, param_groups = ckpt.optimizer_to_tensors(full_optimizer_state(self.optimizer))
        return {**ckpt.prefixed("student.", full_model_state(self.student)),
                **ckpt.prefixed("teacher.", full_model_state(self.teacher)), **opt_tensors}, param_groups

    def save(self, state: TrainState, path: Path | None = None, gathered: Gathered | None = None) -> Path:
        """Everything needed to continue exactly (weights, optimiser, centres, counters, RNG), to
        ``path`` (default: the rolling checkpoint); ``gathered``: :meth:`gather`'s, when sharded."""
        weights, param_groups = gathered or self.gather()
        tensors = {**weights, "loss.center": self.ibot_loss.center, "loss.center2": self.ibot_loss.center2,
                   "rng.torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        meta = {"epoch": state.epoch, "step_in_epoch": state.step_in_epoch,
                "global_step": state.epoch * self.steps_per_epoch + state.step_in_epoch,
                "config": self.cfg.to_dict(), "optimizer_param_groups": param_groups,
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
                "world_size": self.dist.world_size}
        return ckpt.save_checkpoint(path or self.checkpoint_path, tensors, meta, kind="pretrain")

    def load(self, checkpoint: str | Path | Checkpoint) -> TrainState:
        """Restore a run from one of our checkpoints (exactly; a path, e.g. a file written by ``ibot
        convert``) or from ``(tensors, meta)`` already under our keys: an official full
        ``checkpoint.pth`` read by :func:`ibot.convert.official_training_state` (weights, loss
        centres and epoch; AdamW moments start afresh since the official ones follow another
        parameter order)."""
        if isinstance(checkpoint, tuple):
            (tensors, meta), path = checkpoint, checkpoint[1].get("source", "the checkpoint")
        else:
            (tensors, meta), path = ckpt.load_checkpoint(checkpoint), checkpoint
        check_checkpoint_shapes(self.cfg, {k: v.shape for k, v in tensors.items()}, str(path))
        for name, network in (("student", self.student), ("teacher", self.teacher)):
            try:
                load_full_model_state(network, ckpt.strip_prefix(f"{name}.", tensors))
            except RuntimeError as exc:  # what shapes alone do not show: missing or extra keys
                raise ValueError(f"{path}: its {name} does not fit this run's {self.cfg.model.arch} networks: "
                                 f"{' '.join(str(exc).split())}") from None
        self.ibot_loss.center.copy_(tensors["loss.center"])
        self.ibot_loss.center2.copy_(tensors["loss.center2"])
        if "optimizer_param_groups" in meta:
            full = ckpt.optimizer_from_tensors(tensors, meta["optimizer_param_groups"])
            self.optimizer.load_state_dict(shard_optimizer_state(self.optimizer, full))
        if meta.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(meta["scaler"])
        if "rng.torch" in tensors and meta.get("world_size", 1) == self.dist.world_size:
            torch.set_rng_state(tensors["rng.torch"])  # drop path continues as if never stopped
            if "rng.cuda" in tensors and self.device.type == "cuda":
                torch.cuda.set_rng_state(tensors["rng.cuda"], self.device)
        return TrainState(meta["epoch"], meta.get("step_in_epoch", 0))

    def init_weights(self, weights: str | Path | InitWeights) -> list[str]:
        """Start a new run's networks from a checkpoint's weights (``run.init_from``: a path, or what
        :func:`ibot.train.init_from.read_init_weights` read), then :meth:`fit` without ``resume``:
        epoch 0, fresh optimiser and loss centres. Returns the lines to print about it."""
        return init_networks(self.student, self.teacher, self.cfg, weights)

    # ------------------------------------------------------------------------------ training
    def train_step(self, batch: Any, epoch: int, it: int) -> dict[str, torch.Tensor]:
        """One optimiser step at global iteration ``it``; returns the (device) loss terms."""
        for i, group in enumerate(self.optimizer.param_groups):
            group["lr"] = self.lr_schedule[it]
            if i == 0:  # only the decayed group follows the weight-decay schedule
                group["weight_decay"] = self.wd_schedule[it]
        self.optimizer.zero_grad(set_to_none=True)
        losses = self.objective.forward_backward(batch, epoch)
        if self.cfg.optim.clip_grad > 0:
            self.scaler.unscale_(self.optimizer)
            clip_gradients_per_param(self.clip_params, self.cfg.optim.clip_grad)
        cancel_last_layer_gradients(self.student, epoch, self.cfg.optim.freeze_last_layer)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.objective.update_teacher(float(self.momentum_schedule[it]))
        return losses

    def _weights_finite(self) -> torch.Tensor:
        params = [local(p) for net in (self.student, self.teacher) for p in net.parameters()]  # this process's shards
        return torch.stack([p.detach().isfinite().all() for p in params]).all()

    def _check_finite(self, state: TrainState, saving: bool = False) -> None:
        """Stop if a loss since the last check (or, before a save, a weight) is NaN or infinite: one
        sync. The message names the last good checkpoint and the command that resumes from it."""
        bad = self._nonfinite | ~self._weights_finite() if saving else self._nonfinite
        if not any_over_processes(bad):
            self._checked_at = state.done
            return
        where = (f"between epoch {self._checked_at[0]} step {self._checked_at[1]} and epoch {state.epoch} "
                 f"step {state.step_in_epoch}")
        what = "loss" if any_over_processes(self._nonfinite) else "weights"
        message = f"the {what} became NaN or infinite {where}: stopping, nothing of it saved"
        good = [p for p in (*reversed(snapshots(self.output_dir)), self.checkpoint_path) if p.exists()]
        if good:
            latest = max(good, key=lambda p: p.stat().st_mtime_ns)
            lr = self.cfg.optim.lr / 2
            message += (f". Last good checkpoint: {latest}; resume from it with a lower lr, e.g. 'ibot pretrain "
                        f"--output-dir {self.output_dir} --resume {latest} optim.lr={lr:g}' (or raise "
                        f"optim.clip_grad, run.precision=fp32)")
        else:
            message += "; no checkpoint was written before it. Try a lower optim.lr or run.precision=fp32"
        raise NonFiniteLossError(message)

    def fit(self, resume: str | Path | Checkpoint | None = None,
            on_epoch_end: EpochCallback | None = None) -> list[dict[str, Any]]:
        """Train to the end (or ``run.max_steps``); returns the logged records. ``resume``: what
        :meth:`load` takes; ``on_epoch_end(trainer, epoch)``, called on the main process after
        each epoch, returns extra fields for the epoch's log record (e.g. a k-NN accuracy)."""
        cfg = self.cfg
        state = self.load(resume) if resume else TrainState()
        if state.step_in_epoch >= self.steps_per_epoch:  # saved after an epoch's last step: the next one is due
            state = TrainState(state.epoch + 1, 0)
        done = state.epoch * self.steps_per_epoch + state.step_in_epoch
        logger = RunLogger(self.output_dir, enabled=self.dist.is_main, progress=cfg.run.progress,
                           tensorboard=cfg.run.tensorboard, resume_at=done if resume else None)
        if self.dist.is_main:
            write_text_atomically(self.output_dir / "config.yaml", to_yaml(cfg))
            logger.info(f"iBOT pre-training: {cfg.model.arch}/{cfg.model.patch_size} on {cfg.data.data} "
                        f"({len(self.dataset)} images), {self.steps_per_epoch} steps x {cfg.optim.epochs} epochs, "
                        f"batch {self.global_batch} on {self.dist.world_size} x {self.device.type}"
                        + (f", resumed at epoch {state.epoch} step {state.step_in_epoch}" if resume else ""))
        self.student.train()
        max_steps = cfg.run.max_steps
        if max_steps and done >= max_steps:  # in total, counting the steps before a resume
            logger.info(f"the run is at step {done}, run.max_steps={max_steps}: nothing to train "
                        f"(raise run.max_steps, or 0 for every epoch)")
            logger.close()
            return logger.records
        stop, warned = False, set()  # epochs with a collapse warning already (one each)
        while state.epoch < cfg.optim.epochs and not stop:
            epoch = state.epoch
            self.sampler.epoch, self.sampler.start_step = epoch, state.step_in_epoch
            meter = logger.start_epoch(epoch, self.steps_per_epoch, state.step_in_epoch)
            tic = time.perf_counter()
            for batch in self.loader:
                data_time = time.perf_counter() - tic
                it = epoch * self.steps_per_epoch + state.step_in_epoch
                losses = self.train_step(batch, epoch, it)
                state.step_in_epoch += 1
                stop = max_steps > 0 and it + 1 >= max_steps
                log_now = (stop or state.step_in_epoch % cfg.run.log_every_steps == 0
                           or state.step_in_epoch == self.steps_per_epoch)
                self._nonfinite |= ~torch.isfinite(losses["loss"].detach())  # no sync
                if log_now:
                    self._check_finite(state)
                meter.update(losses, batch_size=self.global_batch, data_time=data_time,
                             compute_time=time.perf_counter() - tic - data_time, skipped=batch.skipped)
                if log_now:
                    record = logger.log_step(meter, {"epoch": epoch, "step": state.step_in_epoch,
                                                     "global_step": it + 1, **self._schedule_values(epoch, it)})
                    for warning in collapse_warnings(record, epoch) if epoch not in warned else []:
                        warned.add(epoch)
                        logger.warn(f"epoch {epoch} step {state.step_in_epoch}: {warning}")
                every, in_epoch = cfg.run.checkpoint_every_steps, state.step_in_epoch < self.steps_per_epoch
                if in_epoch and (stop or (every and state.step_in_epoch % every == 0)):
                    self._checkpoint(state)
                if stop and in_epoch:  # (a stop on an epoch's last step ends that epoch first)
                    logger.close()
                    return logger.records
                tic = time.perf_counter()
            meter.skipped = dict.fromkeys(union_over_processes(meter.skipped))  # all processes' files, once each
            nmi = self.objective.prototypes.nmi(gather=all_gather_objects)
            extra = {} if nmi is None else {"nmi": nmi}
            if on_epoch_end is not None and self.dist.is_main:
                extra.update(on_epoch_end(self, epoch))
            logger.end_epoch(meter, {"epoch": epoch, **self._schedule_values(epoch, it), **extra})
            state = TrainState(epoch + 1, 0)
            self._checkpoint(state)
        logger.close()
        return logger.records

    def _checkpoint(self, state: TrainState) -> None:
        """The rolling checkpoint, and at the end of every ``run.saveckp_freq``-th epoch a snapshot
        beside it (the oldest beyond ``run.keep_snapshots`` removed); never a diverged state."""
        self._check_finite(state, saving=True)
        gathered = self.gather() if self.sharded or self.dist.is_main else None  # sharded: a collective for all
        if self.dist.is_main:
            self.save(state, gathered=gathered)
            freq = self.cfg.run.saveckp_freq
            if freq and state.step_in_epoch == 0 and state.epoch % freq == 0:
                self.save(state, snapshot_path(self.output_dir, state.epoch), gathered=gathered)
                prune_snapshots(self.output_dir, self.cfg.run.keep_snapshots)
        barrier()

    def _schedule_values(self, epoch: int, it: int) -> dict[str, float]:
        return {"lr": float(self.lr_schedule[it]), "wd": float(self.wd_schedule[it]),
                "momentum": float(self.momentum_schedule[it]),
                "teacher_temp": float(self.ibot_loss.teacher_temp_schedule[epoch]),
                "teacher_patch_temp": float(self.ibot_loss.teacher_temp2_schedule[epoch])}
