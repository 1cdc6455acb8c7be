"""Activation checkpointing of transformer blocks (``model.grad_checkpointing``): a block's
activations are recomputed in the backward instead of kept from the forward, for memory.

torch's non-reentrant ``checkpoint`` restores the RNG state for the recomputation (drop path
draws the same factors) and leaves the global RNG where the plain forward would, so a run's losses
and weights do not change. Nothing is checkpointed where no gradient is recorded (the teacher)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint


def run_block(fn: Callable[..., torch.Tensor], *args: object, checkpointed: bool) -> torch.Tensor:
    """``fn(*args)``, through ``checkpoint`` when ``checkpointed`` and gradients are recorded."""
    if checkpointed and torch.is_grad_enabled():
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)
