"""Optimiser set-up and gradient handling, as the official code does it.

- Two parameter groups: weights (decayed) and biases + norm parameters (1-d, not decayed);
  ``cls_token``, ``pos_embed`` and ``masked_embed`` stay in the decayed group (official).
- Gradient clipping is per parameter: each gradient is scaled to norm <= ``clip``; a sharded
  gradient (``DTensor``, ``run.strategy=fsdp``) by the norm of the whole gradient.
- The head's last layer gets no update during the first ``freeze_last_layer`` epochs.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from ibot.train.sharding import local_tensors


def param_groups_weight_decay(model: nn.Module) -> list[dict]:
    """``[{decayed params}, {bias/norm params, weight_decay=0}]`` (official ``get_params_groups``)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if name.endswith(".bias") or param.ndim == 1 else decay).append(param)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, fused: bool = True) -> torch.optim.AdamW:
    """AdamW over the two groups; lr and weight decay are set every step by the schedules."""
    device_type = next(model.parameters()).device.type
    # fused kernels exist for CUDA and (torch >= 2.4) CPU, where fused is about 5x foreach's speed
    kwargs = {"fused": True} if fused and device_type in ("cuda", "cpu") else {"foreach": True}
    return torch.optim.AdamW(param_groups_weight_decay(model), lr=0.0, **kwargs)


@torch.no_grad()
def clip_gradients_per_param(parameters: list[nn.Parameter], clip: float) -> torch.Tensor:
    """Scale each gradient to norm <= ``clip`` (official ``clip_gradients``) with foreach ops.

    Sharded gradients: each shard's norm is a partial one, the stack of them reduced over the
    processes into the whole gradients' norms (one all-reduce), and each process scales its own
    shards. Returns the per-parameter norms before clipping, (P,)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(0)
    norms = torch.stack(torch._foreach_norm(grads))
    if isinstance(norms, DTensor):
        norms = norms.full_tensor()
    # official: clip_coef = clip / (norm + 1e-6), applied only where it is < 1
    coefs = torch.clamp(clip / (norms + 1e-6), max=1.0)
    torch._foreach_mul_(local_tensors(grads), list(coefs.unbind()))
    return norms


def cancel_last_layer_gradients(model: nn.Module, epoch: int, freeze_last_layer: int) -> None:
    """Drop the gradients of ``last_layer`` parameters while ``epoch < freeze_last_layer``."""
    if epoch >= freeze_last_layer:
        return
    for name, param in model.named_parameters():
        if "last_layer" in name:
            param.grad = None
