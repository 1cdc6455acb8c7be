"""End-to-end fine-tuning of a pre-trained backbone with a linear classifier (BEiT's recipe,
which the official iBOT fine-tuning uses).

- The model and its optimiser groups: :mod:`ibot.eval.finetune_model` (classifier on the [CLS],
  or with ``pool`` on the mean patch token or the token grid; layer-wise lr decay).
- AdamW (wd 0.05), lr x batch / 256, linear warm-up then cosine to ``min_lr``, per iteration.
- Drop path (0.1 for ViT-S), mixup 0.8 / cutmix 1.0 with label smoothing 0.1 (timm ``Mixup``),
  RandAugment ``rand-m9-mstd0.5-inc1`` (magnitude clipped at 9, see ``FinetuneConfig``) and random
  erasing 0.25 (timm ``create_transform``).
- ``head_lr_scale``: the top layer (classifier and final norm) learns that many times faster
  than layer decay alone gives (1 officially): a short run's fresh classifier needs more than the
  backbone's lr to catch up with the features.
- Optional linear-probe start (``head_init_epochs``, LP-FT): the classifier is first fitted on
  cached frozen features of the un-augmented train images (one extra pass of the backbone).
- Optional linear-probe warm-up (``freeze_backbone_epochs``): the first epochs train the
  classifier only, so that a random head does not pull the pre-trained features around.
- Optional EMA of the weights (timm ``ModelEmaV3``), evaluated alongside.
- Top-1 / top-5 on the val split after every epoch; an atomic checkpoint after every epoch,
  and ``resume`` continues from it (``log.jsonl`` rewritten from the checkpoint's history, so an
  epoch logged after the last save is not in it twice). Each epoch seeds every generator from
  ``(seed, epoch)``, so a resumed run repeats the epochs an uninterrupted one would have run.
- Under ``torchrun``: the model is wrapped in DDP and ``batch_size`` stays the global batch (each
  of N processes takes ``batch_size / N`` images of every step), so the steps, the lr schedule and
  its batch scaling are those of one process. Every epoch draws one order of the train set, the
  same on all processes, and each process takes its part of every batch; augmentation, mixup and
  drop path draw from generators seeded per process. The processes share the val batches and sum
  the hit counts (the one-process accuracies of the same weights, exactly); rank 0 alone writes
  the checkpoint, ``log.jsonl`` and the console lines.
"""

from __future__ import annotations

import dataclasses
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ibot.data.datasets import Holdout, build_dataset
from ibot.distributed import all_reduce_sum, any_over_processes, init_distributed, process_device, union_over_processes
from ibot.eval.features import EvalDataset, collate_skip_none
from ibot.eval.finetune_config import FinetuneConfig, default_layer_decay
from ibot.eval.finetune_model import FinetuneModel, layer_decay_param_groups
from ibot.eval.metrics import topk_hits
from ibot.eval.shards import gather_batch_objects, process_batches, process_slice
from ibot.files import write_text_atomically
from ibot.formats.ours import CHECKPOINT_NAME
from ibot.image_io import format_skipped
from ibot.progress import progress_bar, write


def train_transform(cfg: FinetuneConfig):
    """timm's training transform at ``cfg.image_size`` (no 224 assumption): random resized crop,
    flip, RandAugment, ImageNet normalisation, random erasing."""
    from timm.data import create_transform

    return create_transform(input_size=cfg.image_size, is_training=True, scale=(cfg.min_crop_scale, 1.0),
                            color_jitter=cfg.color_jitter or None, auto_augment=cfg.auto_augment,
                            interpolation="bicubic", re_prob=cfg.reprob,
                            re_mode="pixel", re_count=1)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, skipped: list[str] | None = None,
             sharded: bool = False) -> dict[str, float]:
    """Top-1 / top-5 accuracy (percent) and mean cross-entropy over ``loader``; the unreadable
    images it passed over are added to ``skipped``. ``sharded``: ``loader`` holds this process's
    share of the batches (:func:`ibot.eval.shards.process_batches`); the counts are summed over
    the processes."""
    model.eval()
    hits1 = hits5 = total = 0
    loss = 0.0
    passed: list[list[str]] = []  # per batch
    for images, labels, why in loader:
        passed.append(why)
        if len(images) == 0:
            continue
        images, labels = images.to(device), labels.to(device)
        logits = model(images)
        batch1, batch5 = topk_hits(logits, labels)
        hits1 += int(batch1)
        hits5 += int(batch5)
        loss += float(F.cross_entropy(logits, labels, reduction="sum"))
        total += len(labels)
    if sharded:  # whole counts in float64: exact sums
        hits1, hits5, loss, total = all_reduce_sum(torch.tensor([hits1, hits5, loss, total], dtype=torch.float64))
        hits1, hits5, loss, total = int(hits1), int(hits5), float(loss), int(total)
    if skipped is not None:
        skipped.extend(why for batch in gather_batch_objects(passed, sharded) for why in batch)
    if total == 0:
        raise ValueError("no readable image in the validation split")
    return {"top1": 100.0 * hits1 / total, "top5": 100.0 * hits5 / total, "loss": loss / total}


def fit_head_on_features(head: nn.Linear, features: torch.Tensor, labels: torch.Tensor, epochs: int,
                         seed: int, lr: float = 1e-3, batch_size: int = 256) -> float:
    """Train ``head`` (a linear classifier) on cached ``features`` (N, D) for ``epochs`` (AdamW,
    no weight decay, constant lr, seeded shuffling); returns the last epoch's mean loss. The
    linear-probe start of LP-FT: fine-tuning then begins from a classifier that already fits the
    frozen features instead of from a random one."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.0)
    total = 0.0
    for _ in range(epochs):
        order, total = torch.randperm(len(features), generator=generator), 0.0
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            loss = F.cross_entropy(head(features[batch]), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
    return total / max(len(features), 1)


def _seed_epoch(seed: int, epoch: int, rank: int = 0) -> torch.Generator:
    """Seed torch, numpy and random (timm's augmentations and Mixup use all three) for epoch
    ``epoch`` on process ``rank``; returns a generator seeded the same way (the loader's)."""
    value = seed * 100_003 + epoch + rank * 1_000_000_007
    torch.manual_seed(value)
    np.random.seed(value % 2**32)
    random.seed(value)
    return torch.Generator().manual_seed(value)


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, sharded: bool = True) -> list[list[int]]:
    """The ``n // batch_size`` batches of epoch ``epoch`` (one shuffle of ``range(n)`` seeded from
    ``(seed, epoch)``, the last partial batch dropped: mixup pairs the images of full batches);
    ``sharded``: this process's part of each (:func:`ibot.eval.shards.process_slice`)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
    return [process_slice(order[start:start + batch_size], sharded)
            for start in range(0, n // batch_size * batch_size, batch_size)]


class Finetuner:
    """Fine-tunes ``backbone`` (built with the wanted drop path) on dataset spec ``data``."""

    def __init__(self, backbone: nn.Module, arch: str, data: str, cfg: FinetuneConfig, output_dir: str | Path,
                 backbone_info: dict[str, Any] | None = None, holdout: Holdout | None = None) -> None:
        from timm.data import Mixup
        from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

        from ibot.eval.features import evaluation_transform
        from ibot.runtime import resolve_device, resolve_precision
        from ibot.schedules import cosine_schedule

        self.cfg, self.data, self.arch = cfg, data, arch
        self.output_dir = Path(output_dir)
        self.checkpoint_path = self.output_dir / CHECKPOINT_NAME
        self.backbone_info = backbone_info or {}
        self.dist = init_distributed(resolve_device(cfg.device).type)
        self.device = process_device(resolve_device(cfg.device))
        self.progress = cfg.progress and self.dist.is_main
        # bf16 on GPU; fp32 on every CPU (bf16 fine-tuning on CPUs with native bf16 is unmeasured)
        self.amp_dtype = resolve_precision("bf16" if self.device.type == "cuda" else "fp32", self.device)
        train_base = build_dataset(data, split="train", holdout=holdout)
        val_base = build_dataset(data, split="val", holdout=holdout)
        self.classes = list(train_base.classes)
        num_classes = len(self.classes)
        world = self.dist.world_size
        if cfg.batch_size % world:
            raise ValueError(f"batch size {cfg.batch_size} is not a multiple of the {world} processes; it is "
                             "the global batch, shared out over them")
        if (cfg.mixup > 0 or cfg.cutmix > 0) and (cfg.batch_size // world) % 2:
            raise ValueError(f"batch size {cfg.batch_size} gives {cfg.batch_size // world} images per process, an "
                             "odd number; mixup/cutmix pair the images of a batch")
        if len(train_base) < cfg.batch_size:
            raise ValueError(f"{data} has {len(train_base)} training images, fewer than one batch of "
                             f"{cfg.batch_size}; lower the batch size")
        self.train_set = EvalDataset(train_base, train_transform(cfg))
        self.val_set = EvalDataset(val_base, evaluation_transform(cfg.image_size, cfg.crop_pct))

        torch.manual_seed(cfg.seed)
        self.model = FinetuneModel(backbone, num_classes, pool=cfg.pool, image_size=cfg.image_size).to(self.device)
        decay = cfg.layer_decay if cfg.layer_decay is not None else default_layer_decay(arch)
        self.layer_decay = decay
        groups = layer_decay_param_groups(self.model, cfg.weight_decay, decay, head_lr_scale=cfg.head_lr_scale)
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999))
        self.steps_per_epoch = len(self.train_set) // cfg.batch_size  # drop_last: mixup needs full pairs
        base_lr = cfg.lr * cfg.batch_size / 256.0
        self.lr_schedule = cosine_schedule(base_lr, cfg.min_lr, cfg.epochs, self.steps_per_epoch,
                                           warmup_epochs=min(cfg.warmup_epochs, cfg.epochs))
        self.mixup = None
        if cfg.mixup > 0 or cfg.cutmix > 0:
            self.mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.label_smoothing,
                               num_classes=num_classes)
            self.criterion: nn.Module = SoftTargetCrossEntropy()
        elif cfg.label_smoothing > 0:
            self.criterion = LabelSmoothingCrossEntropy(smoothing=cfg.label_smoothing)
        else:
            self.criterion = nn.CrossEntropyLoss()
        self.ema = None
        if cfg.ema:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.model, decay=cfg.ema_decay)
        self.val_loader = DataLoader(self.val_set, batch_sampler=process_batches(len(self.val_set), cfg.batch_size),
                                     num_workers=cfg.num_workers, collate_fn=collate_skip_none)
        self._ddp: tuple[bool, nn.Module] | None = None  # (backbone trained, the DDP wrapper)

    # -------------------------------------------------------------------------- checkpoints
    def save(self, epoch: int, history: list[dict[str, Any]]) -> Path:
        from ibot.formats import ours as ckpt

        opt_tensors, param_groups = ckpt.optimizer_to_tensors(self.optimizer.state_dict())
        tensors = {**ckpt.prefixed("model.", self.model.state_dict()), **opt_tensors}
        if self.ema is not None:
            tensors.update(ckpt.prefixed("ema.", self.ema.module.state_dict()))
        meta = {"epoch": epoch, "finetune": dataclasses.asdict(self.cfg), "data": self.data,
                "arch": self.arch, "backbone": self.backbone_info, "classes": self.classes,
                "optimizer_param_groups": param_groups, "history": history}
        return ckpt.save_checkpoint(self.checkpoint_path, tensors, meta, kind="finetune")

    def load(self, path: str | Path) -> tuple[int, list[dict[str, Any]]]:
        from ibot.formats import ours as ckpt

        tensors, meta = ckpt.load_checkpoint(path)
        if ckpt.checkpoint_kind(meta, path) != "finetune":
            raise ValueError(f"--resume: {path} is not a fine-tuning checkpoint")
        try:
            self.model.load_state_dict(ckpt.strip_prefix("model.", tensors))
            if self.ema is not None:
                ema = ckpt.strip_prefix("ema.", tensors)
                self.ema.module.load_state_dict(ema or ckpt.strip_prefix("model.", tensors))
        except RuntimeError as exc:
            raise ValueError(f"--resume: {path} does not fit this model: {str(exc).splitlines()[0]}") from None
        self.optimizer.load_state_dict(ckpt.optimizer_from_tensors(tensors, meta["optimizer_param_groups"]))
        return meta["epoch"], meta["history"]

    # -------------------------------------------------------------------------- training
    @torch.no_grad()
    def _train_features(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The classifier's input features (N, F) and labels of the train split, un-augmented."""
        from ibot.eval.features import evaluation_transform, extract_features

        dataset = EvalDataset(self.train_set.base, evaluation_transform(self.cfg.image_size, self.cfg.crop_pct))
        features, labels, _ = extract_features(self.model.eval().features, dataset, batch_size=self.cfg.batch_size,
                                               num_workers=self.cfg.num_workers, device=self.device,
                                               desc="head-init features", progress=self.progress, sharded=True)
        return features, labels

    def init_head(self) -> None:
        """LP-FT: fit the classifier on the frozen backbone's features before fine-tuning."""
        features, labels = self._train_features()
        head = nn.Linear(features.shape[1], self.model.head.out_features)
        head.load_state_dict({k: v.cpu() for k, v in self.model.head.state_dict().items()})
        with torch.enable_grad():
            loss = fit_head_on_features(head, features, labels, self.cfg.head_init_epochs, self.cfg.seed)
        self.model.head.load_state_dict(head.state_dict())
        if self.dist.is_main:
            write(f"classifier fitted on frozen features ({self.cfg.head_init_epochs} epochs): loss {loss:.4f}")

    def _trained_model(self, backbone_trained: bool) -> nn.Module:
        """The model the step runs: itself in one process, else a DDP wrapper over the parameters
        that learn (made again, the old one dropped, when the backbone starts or stops learning)."""
        if self.dist.world_size == 1:
            return self.model
        if self._ddp is None or self._ddp[0] != backbone_trained:
            from torch.nn.parallel import DistributedDataParallel

            self._ddp = None  # its reducer's hooks go with it
            ids = [self.device.index] if self.device.type == "cuda" else None
            self._ddp = (backbone_trained, DistributedDataParallel(self.model, device_ids=ids))
        return self._ddp[1]

    def train_epoch(self, epoch: int, skipped: list[str]) -> dict[str, float]:
        """One epoch of training; the unreadable images it passed over are added to ``skipped``."""
        cfg = self.cfg
        generator = _seed_epoch(cfg.seed, epoch, self.dist.rank)
        batches = epoch_batches(len(self.train_set), cfg.batch_size, cfg.seed, epoch)
        loader = DataLoader(self.train_set, batch_sampler=batches, num_workers=cfg.num_workers,
                            collate_fn=collate_skip_none, generator=generator)
        # linear-probe warm-up (LP-FT): the head learns on frozen features before the backbone moves
        backbone_trained = epoch >= cfg.freeze_backbone_epochs
        self.model.backbone.requires_grad_(backbone_trained)
        model = self._trained_model(backbone_trained).train()
        total, count, lr = 0.0, 0, 0.0
        passed: list[str] = []
        bar = progress_bar(loader, desc=f"fine-tune epoch {epoch}", unit="step", disable=not self.progress, leave=False)
        for step, (images, labels, why) in enumerate(bar):
            passed.extend(why)
            if any_over_processes(torch.tensor(len(images) < 2)):  # every process skips the step
                continue
            if len(images) % 2:  # a skipped unreadable image left an odd batch; mixup pairs images
                images, labels = images[:-1], labels[:-1]
            it = epoch * self.steps_per_epoch + step
            lr = float(self.lr_schedule[it])
            for group in self.optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            images, labels = images.to(self.device), labels.to(self.device)
            if self.mixup is not None:
                images, labels = self.mixup(images, labels)
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                loss = self.criterion(model(images), labels)
            if any_over_processes(~torch.isfinite(loss)):
                raise RuntimeError(f"fine-tuning loss is {loss.item()} at epoch {epoch}, step {step}; "
                                   "try a lower --lr")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip_grad > 0:
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad)
            self.optimizer.step()
            if self.ema is not None:
                self.ema.update(self.model, step=it)
            total += loss.item()
            count += 1
            bar.set_postfix(loss=f"{loss.item():.4f}")
        skipped.extend(union_over_processes(passed))
        total, count = all_reduce_sum(torch.tensor([total, count], dtype=torch.float64)).tolist()
        return {"train_loss": total / max(count, 1), "lr": lr}

    def fit(self, resume: str | Path | None = None, max_epochs: int | None = None) -> dict[str, Any]:
        """Train to ``cfg.epochs`` (or for at most ``max_epochs`` in this call, then stop with a
        checkpoint); returns the results (best and last top-1/top-5, history)."""
        start, history = self.load(resume) if resume else (0, [])
        log = self.output_dir / "log.jsonl"
        if self.dist.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            if resume:  # the log as the checkpoint knows it: no epoch logged after the save, no torn line
                write_text_atomically(log, "".join(json.dumps(record) + "\n" for record in history))
        if start == 0 and self.cfg.head_init_epochs > 0:
            self.init_head()
        end = self.cfg.epochs if max_epochs is None else min(self.cfg.epochs, start + max_epochs)
        for epoch in range(start, end):
            tic = time.perf_counter()
            skipped: list[str] = []  # unreadable images met this epoch, train then val
            record = {"epoch": epoch, **self.train_epoch(epoch, skipped), "skipped_images": len(skipped)}
            record.update({f"val_{k}": v for k, v in evaluate(self.model, self.val_loader, self.device,
                                                              skipped, sharded=True).items()})
            record["val_skipped_images"] = len(skipped) - record["skipped_images"]
            if self.ema is not None:
                record.update({f"ema_val_{k}": v for k, v in evaluate(self.ema.module, self.val_loader,
                                                                      self.device, sharded=True).items()})
            record["seconds"] = time.perf_counter() - tic
            history.append(record)
            if not self.dist.is_main:
                continue
            with log.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
            write(f"fine-tune epoch {epoch}: loss {record['train_loss']:.4f}, val top-1 {record['val_top1']:.2f}%"
                       f" top-5 {record['val_top5']:.2f}%"
                       + (f", EMA top-1 {record['ema_val_top1']:.2f}%" if self.ema is not None else "")
                       + (f", {format_skipped(len(skipped), skipped[0])}" if skipped else ""), file=sys.stdout)
            self.save(epoch + 1, history)
        return self.results(history)

    def results(self, history: list[dict[str, Any]]) -> dict[str, Any]:
        if not history:
            raise ValueError("no fine-tuning epoch was run (is --epochs 0, or the run already finished?)")
        keys = ["val"] + (["ema_val"] if self.ema is not None else [])
        key, best = max(((k, r) for k in keys for r in history), key=lambda kr: kr[1][f"{kr[0]}_top1"])
        last = history[-1]
        return {"top1": best[f"{key}_top1"], "top5": best[f"{key}_top5"], "best_epoch": best["epoch"],
                "best_from": "ema" if key == "ema_val" else "model",
                "last_top1": last["val_top1"], "last_top5": last["val_top5"], "epochs": len(history),
                "layer_decay": self.layer_decay, "history": history}
