"""EMA update of the teacher (the online tokenizer): theta_t <- m theta_t + (1 - m) theta_s."""

from __future__ import annotations

import torch
from torch import nn


class EMAUpdater:
    """Pairs the teacher's parameters with the student's of the same name once, then updates
    them with two foreach ops per step. Parameters only in the student (``masked_embed``) and
    buffers are not averaged (official)."""

    def __init__(self, student: nn.Module, teacher: nn.Module) -> None:
        student_params = dict(_unwrap(student).named_parameters())
        pairs = [(student_params[n], p) for n, p in _unwrap(teacher).named_parameters() if n in student_params]
        if not pairs:
            raise ValueError("student and teacher share no parameter names")
        self.student_params = [s for s, _ in pairs]
        self.teacher_params = [t for _, t in pairs]

    @torch.no_grad()
    def update(self, momentum: float) -> None:
        torch._foreach_mul_(self.teacher_params, momentum)
        torch._foreach_add_(self.teacher_params, [s.detach() for s in self.student_params], alpha=1.0 - momentum)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model
