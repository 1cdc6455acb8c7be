"""EMA update of the teacher (the online tokenizer): theta_t <- m theta_t + (1 - m) theta_s."""

from __future__ import annotations

import torch
from torch import nn

from ibot.train.sharding import local_tensors


class EMAUpdater:
    """Pairs the teacher's parameters with the student's of the same name once, then updates
    them with two foreach ops per step. Parameters only in the student (``masked_embed``) and
    buffers are not averaged (official). Sharded networks (``run.strategy=fsdp``) hold each
    parameter's shards alike, so the update runs on this process's shards, with no communication."""

    def __init__(self, student: nn.Module, teacher: nn.Module) -> None:
        student_params = dict(_unwrap(student).named_parameters())
        pairs = [(student_params[n], p) for n, p in _unwrap(teacher).named_parameters() if n in student_params]
        if not pairs:
            raise ValueError("student and teacher share no parameter names")
        self.student_params = [s for s, _ in pairs]
        self.teacher_params = [t for _, t in pairs]

    @torch.no_grad()
    def update(self, momentum: float) -> None:
        teacher = local_tensors(self.teacher_params)
        torch._foreach_mul_(teacher, momentum)
        torch._foreach_add_(teacher, local_tensors(s.detach() for s in self.student_params), alpha=1.0 - momentum)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model
