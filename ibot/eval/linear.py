"""Linear probing on frozen features: the official feature recipes and a learning-rate sweep that
trains many linear classifiers at once.

Features (official ``eval_linear.py``, from DINO), ``avgpool``:

- 0: the [CLS] tokens of the last ``n`` blocks, concatenated (ViT-S and Swin: n = 4);
- 1: the average-pooled patch tokens of the last block;
- 2: both, [CLS] of the last ``n`` blocks + pooled patch tokens (ViT-B/L: n = 1).

Protocols. The official run trains each classifier for 100 epochs with SGD (momentum 0.9, no
weight decay, lr x batch / 256, cosine to 0, batch 1024, weights N(0, 0.01), bias 0) on images
augmented with random resized crops and flips, so the frozen backbone runs again every epoch: the
``augmented`` protocol (:func:`train_linear_sweep_augmented`). The ``cached`` protocol
(:func:`train_linear_sweep`, the default) extracts the features of the center-cropped images once
and trains on them, so the backbone runs once instead of once per epoch; the price is the missing
crop augmentation, which on large datasets usually costs a little accuracy. Either way every learning
rate of the sweep trains on the same batches together: one stacked weight tensor (H, D, C), one
batched matrix product per step for all H heads. The reported accuracy is the best over heads and
epochs on the validation split (center crops), as the official script reports its best epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ibot.data.views import collate_skip_none
from ibot.eval.metrics import topk_hits
from ibot.progress import progress_bar
from ibot.schedules import cosine_schedule

# learning rates of the sweep, for a batch of 256 (scaled linearly with the batch, as officially)
DEFAULT_LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)
# one epoch's training batches: epoch index, batch-order generator -> (features (B, D), labels (B,))
Batches = Callable[[int, torch.Generator], Iterable[tuple[torch.Tensor, torch.Tensor]]]


def default_recipe(arch: str) -> tuple[int, int]:
    """``(n_last_blocks, avgpool)`` as the official scripts set them: ViT-B/L (1, 2), else (4, 0)."""
    return (1, 2) if arch in ("vit_base", "vit_large") else (4, 0)


def _num_blocks(backbone: nn.Module) -> int:
    if hasattr(backbone, "blocks"):
        return len(backbone.blocks)
    return sum(backbone.depths)  # Swin


class LinearFeatures(nn.Module):
    """``images (B, 3, H, W) -> features (B, F)`` of the recipe ``(n_last_blocks, avgpool)``;
    ``n_last_blocks`` is clamped to the number of blocks."""

    def __init__(self, backbone: nn.Module, n_last_blocks: int = 4, avgpool: int = 0) -> None:
        super().__init__()
        if avgpool not in (0, 1, 2):
            raise ValueError(f"avgpool must be 0 ([CLS]), 1 (pooled patches) or 2 (both), got {avgpool}")
        if n_last_blocks < 1:
            raise ValueError(f"n_last_blocks must be at least 1, got {n_last_blocks}")
        self.backbone = backbone
        self.n_last_blocks = min(n_last_blocks, _num_blocks(backbone))
        self.avgpool = avgpool

    @property
    def kind(self) -> str:
        """Names the recipe in the feature cache."""
        return f"linear-n{self.n_last_blocks}-avgpool{self.avgpool}"

    @property
    def dim(self) -> int:
        """Width of the features: ``n`` [CLS] tokens and / or one pooled token of ``embed_dim``."""
        tokens = {0: self.n_last_blocks, 1: 1, 2: self.n_last_blocks + 1}[self.avgpool]
        return tokens * self.backbone.embed_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = self.backbone.get_intermediate_layers(x, self.n_last_blocks)  # n x (B, 1 + N, D)
        pooled = [outputs[-1][:, 1:].mean(dim=1)]  # (B, N, D) -> (B, D)
        cls = [out[:, 0] for out in outputs]
        parts = {0: cls, 1: pooled, 2: cls + pooled}[self.avgpool]
        return torch.cat(parts, dim=-1)


@torch.no_grad()
def _accuracies(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-1 and top-5 accuracy (percent) of every head: two (H,) tensors."""
    hits1 = torch.zeros(weight.shape[0], device=weight.device)
    hits5 = torch.zeros_like(hits1)
    for start in range(0, len(x), chunk):
        logits = torch.einsum("bd,hdc->hbc", x[start:start + chunk], weight) + bias  # (H, b, C)
        batch1, batch5 = topk_hits(logits, y[start:start + chunk])  # (H,) each
        hits1 += batch1
        hits5 += batch5
    return 100.0 * hits1 / len(x), 100.0 * hits5 / len(x)


def train_linear_sweep(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
                       lrs: Sequence[float] = DEFAULT_LRS, epochs: int = 100, batch_size: int = 1024,
                       momentum: float = 0.9, weight_decay: float = 0.0, num_classes: int | None = None,
                       seed: int = 0, device: torch.device | str = "cpu", progress: bool = True) -> dict[str, Any]:
    """Train one linear classifier per learning rate on cached features, all at once (the
    ``cached`` protocol).

    ``lrs`` are per 256 images (scaled by ``batch_size / 256``). SGD with momentum, cosine
    schedule per epoch down to 0 (official ``CosineAnnealingLR``). Every head is evaluated on
    ``val_x`` after every epoch. Returns the best head (``top1``, ``top5``, ``lr``, ``epoch``,
    ``weight`` (C, D), ``bias`` (C,)) and ``per_lr``: each head's best and final top-1.
    """
    device = torch.device(device)
    num_classes = num_classes or int(max(train_y.max(), val_y.max())) + 1
    train_x, train_y = train_x.float().to(device), train_y.to(device)

    def batches(epoch: int, generator: torch.Generator):
        order = torch.randperm(len(train_x), generator=generator).to(device)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            yield train_x[idx], train_y[idx]

    return _train_heads(batches, train_x.shape[1], num_classes, val_x, val_y, lrs, epochs, batch_size, momentum,
                        weight_decay, seed, device, progress)


def train_linear_sweep_augmented(features: LinearFeatures, train_set: Dataset, val_x: torch.Tensor,
                                 val_y: torch.Tensor, num_classes: int, lrs: Sequence[float] = DEFAULT_LRS,
                                 epochs: int = 100, batch_size: int = 1024, momentum: float = 0.9,
                                 weight_decay: float = 0.0, num_workers: int = 2, seed: int = 0,
                                 device: torch.device | str = "cpu", progress: bool = True) -> dict[str, Any]:
    """The official protocol: every epoch the frozen ``features`` run again on ``train_set``, an
    :class:`ibot.data.views.EvalDataset` under a random training transform
    (:func:`ibot.data.transforms.probe_train_transform`); otherwise as :func:`train_linear_sweep`
    (the same heads, schedule, validation on ``val_x`` and result).
    Unreadable images are skipped; the result's ``skipped_images`` lists them (once each)."""
    device = torch.device(device)
    skipped: dict[str, None] = {}  # ordered set
    features = features.to(device).eval()

    def batches(epoch: int, generator: torch.Generator):
        loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, generator=generator,
                            num_workers=num_workers, collate_fn=collate_skip_none, drop_last=False)
        for images, labels, why in loader:
            skipped.update(dict.fromkeys(why))
            if len(images):
                with torch.no_grad():  # closed before the yield: the heads' step needs grad mode
                    x = features(images.to(device)).float()
                yield x, labels.to(device)

    result = _train_heads(batches, features.dim, num_classes, val_x, val_y, lrs, epochs, batch_size, momentum,
                          weight_decay, seed, device, progress)
    return {**result, "skipped_images": list(skipped)}


def _train_heads(batches: Batches, dim: int, num_classes: int, val_x: torch.Tensor, val_y: torch.Tensor,
                 lrs: Sequence[float], epochs: int, batch_size: int, momentum: float, weight_decay: float, seed: int,
                 device: torch.device, progress: bool) -> dict[str, Any]:
    """The sweep itself: one head per lr on every batch of ``batches(epoch, generator)``."""
    if not lrs or min(lrs) <= 0:
        raise ValueError(f"learning rates must be positive, got {list(lrs)}")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch size must be positive, got {epochs}, {batch_size}")
    val_x, val_y = val_x.float().to(device), val_y.to(device)
    heads = len(lrs)
    init = torch.Generator().manual_seed(seed)  # head h starts the same whatever the other heads
    generator = torch.Generator().manual_seed(seed + 1)  # batch order, shared by all heads
    weight = torch.cat([torch.randn(1, dim, num_classes, generator=init) for _ in range(heads)]) * 0.01
    weight = weight.to(device).requires_grad_()  # (H, D, C), N(0, 0.01) as officially
    bias = torch.zeros(heads, 1, num_classes, device=device, requires_grad=True)
    velocity = [torch.zeros_like(weight), torch.zeros_like(bias)]
    scales = cosine_schedule(1.0, 0.0, epochs, 1)  # per epoch, as the official CosineAnnealingLR
    base_lrs = torch.tensor(lrs, dtype=torch.float32, device=device) * batch_size / 256.0  # linear scaling rule

    best1 = torch.full((heads,), -1.0)
    best5, best_epoch = torch.zeros(heads), torch.zeros(heads, dtype=torch.long)
    best_weight, best_bias = weight.detach().clone(), bias.detach().clone()  # the leading head at its best epoch
    for epoch in progress_bar(range(epochs), desc="linear sweep", unit="epoch", disable=not progress, leave=False):
        lr = base_lrs * float(scales[epoch])  # (H,)
        for x, y in batches(epoch, generator):
            logits = torch.einsum("bd,hdc->hbc", x, weight) + bias  # (H, B, C)
            # sum over heads of each head's mean loss: the heads' gradients stay independent
            loss = F.cross_entropy(logits.reshape(-1, num_classes), y.repeat(heads), reduction="sum") / len(y)
            grads = torch.autograd.grad(loss, (weight, bias))
            with torch.no_grad():
                for param, grad, buf in zip((weight, bias), grads, velocity):
                    buf.mul_(momentum).add_(grad + weight_decay * param)
                    param.sub_(lr.view(-1, 1, 1) * buf)
        top1, top5 = _accuracies(weight.detach(), bias.detach(), val_x, val_y)
        top1, top5 = top1.cpu(), top5.cpu()
        improved = top1 > best1
        best1 = torch.where(improved, top1, best1)
        best5 = torch.where(improved, top5, best5)
        best_epoch = torch.where(improved, torch.full_like(best_epoch, epoch), best_epoch)
        if improved[best1.argmax()]:  # the leader changed or improved: keep the weights of this epoch
            best_weight, best_bias = weight.detach().clone(), bias.detach().clone()
    final1 = top1
    h = int(best1.argmax())
    return {
        "top1": float(best1[h]), "top5": float(best5[h]), "lr": float(lrs[h]), "epoch": int(best_epoch[h]),
        "weight": best_weight[h].T.cpu().contiguous(), "bias": best_bias[h, 0].cpu().clone(),
        "per_lr": [{"lr": float(lr), "best_top1": float(b), "final_top1": float(f)}
                   for lr, b, f in zip(lrs, best1, final1)],
    }
