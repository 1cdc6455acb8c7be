"""Per-iteration schedules (learning rate, weight decay, EMA momentum), official DINO/iBOT style."""

from __future__ import annotations

import numpy as np


def cosine_schedule(base_value: float, final_value: float, epochs: int, steps_per_epoch: int,
                    warmup_epochs: int = 0, start_warmup_value: float = 0.0) -> np.ndarray:
    """One value per iteration: linear warm-up from ``start_warmup_value`` over ``warmup_epochs``,
    then ``final + (base - final) / 2 * (1 + cos(pi * t / T))`` over the remaining iterations."""
    warmup_iters = warmup_epochs * steps_per_epoch
    warmup = np.linspace(start_warmup_value, base_value, warmup_iters) if warmup_iters > 0 else np.array([])
    iters = np.arange(epochs * steps_per_epoch - warmup_iters)
    cosine = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * iters / max(len(iters), 1)))
    schedule = np.concatenate((warmup, cosine))
    assert len(schedule) == epochs * steps_per_epoch
    return schedule

