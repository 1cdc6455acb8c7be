"""Linear probing on frozen features: the official feature recipes and a learning-rate sweep that
trains many linear classifiers at once.

Features (official ``eval_linear.py``, from DINO), ``avgpool``:

- 0: the [CLS] tokens of the last ``n`` blocks, concatenated (ViT-S and Swin: n = 4);
- 1: the average-pooled patch tokens of the last block;
- 2: both, [CLS] of the last ``n`` blocks + pooled patch tokens (ViT-B/L: n = 1).

Protocol. The official run trains each classifier for 100 epochs with SGD (momentum 0.9, no
weight decay, lr x batch / 256, cosine to 0, batch 1024, weights N(0, 0.01), bias 0) on images
augmented with random resized crops and flips, so the frozen backbone runs again every epoch.
Here (the fast protocol) the features of the center-cropped images are extracted once and cached,
and every learning rate of the sweep trains on them together: one stacked weight tensor
(H, D, C), one batched matrix product per step for all H heads. The backbone then runs once
instead of once per epoch; the price is the missing crop augmentation, which on large datasets
usually costs a little accuracy. The reported accuracy is the best over heads and epochs on the
validation split, as the official script reports its best epoch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ibot.eval.metrics import topk_hits
from ibot.progress import progress_bar
from ibot.schedules import cosine_schedule

# learning rates of the sweep, for a batch of 256 (scaled linearly with the batch, as officially)
DEFAULT_LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)


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
    """Train one linear classifier per learning rate on the same features, all at once.

    ``lrs`` are per 256 images (scaled by ``batch_size / 256``). SGD with momentum, cosine
    schedule per epoch down to 0 (official ``CosineAnnealingLR``). Every head is evaluated on
    ``val_x`` after every epoch. Returns the best head (``top1``, ``top5``, ``lr``, ``epoch``,
    ``weight`` (C, D), ``bias`` (C,)) and ``per_lr``: each head's best and final top-1.
    """
    if not lrs or min(lrs) <= 0:
        raise ValueError(f"learning rates must be positive, got {list(lrs)}")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch size must be positive, got {epochs}, {batch_size}")
    device = torch.device(device)
    num_classes = num_classes or int(max(train_y.max(), val_y.max())) + 1
    train_x, train_y = train_x.float().to(device), train_y.to(device)
    val_x, val_y = val_x.float().to(device), val_y.to(device)
    heads, dim = len(lrs), train_x.shape[1]
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
        order = torch.randperm(len(train_x), generator=generator).to(device)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            logits = torch.einsum("bd,hdc->hbc", train_x[idx], weight) + bias  # (H, B, C)
            # sum over heads of each head's mean loss: the heads' gradients stay independent
            loss = F.cross_entropy(logits.reshape(-1, num_classes), train_y[idx].repeat(heads),
                                   reduction="sum") / len(idx)
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
