"""The fast paths (fused attention, fused AdamW, foreach EMA / clipping, masked-token-only heads and
last block, bf16) keep the loss trajectory."""

from __future__ import annotations

import pytest
import torch

from ibot.train import objective as objective_module
from ibot.train import trainer as trainer_module
from ibot.train.trainer import Pretrainer
from tests.dense_reference import use_dense_forward
from tests.train.helpers import tiny_config


def _losses(records):
    return [r["loss"] for r in records if r["type"] == "step"]


class LoopEMA:
    """Reference EMA: a Python loop over named parameters, as the official code writes it."""

    def __init__(self, student, teacher):
        self.student, self.teacher = student, teacher

    @torch.no_grad()
    def update(self, momentum):
        student = dict(self.student.named_parameters())
        for name, param in self.teacher.named_parameters():
            if name in student:
                param.mul_(momentum).add_((1 - momentum) * student[name].detach())


def loop_clip(parameters, clip):
    for p in parameters:
        if p.grad is not None:
            coef = clip / (p.grad.norm(2) + 1e-6)
            if coef < 1:
                p.grad.mul_(coef)


def _fused_attn_flags(trainer: Pretrainer) -> list[bool]:
    """timm's ``fused_attn`` of every attention layer of the student and the teacher."""
    nets = (trainer.student, trainer.teacher)
    return [m.fused_attn for net in nets for m in net.modules() if hasattr(m, "fused_attn")]


def test_plain_and_fast_paths_give_the_same_losses(tmp_path, image_folder, monkeypatch):
    steps = ["run.max_steps=4", "model.drop_path_rate=0.0", "run.precision=fp32"]  # auto is bf16 on some CPUs
    fast_trainer = Pretrainer(tiny_config(tmp_path / "fast", image_folder, *steps, "run.attention=fused"))
    assert set(_fused_attn_flags(fast_trainer)) == {True}
    fast = _losses(fast_trainer.fit())

    monkeypatch.setattr(objective_module, "EMAUpdater", LoopEMA)
    monkeypatch.setattr(trainer_module, "clip_gradients_per_param", loop_clip)
    # the explicit softmax(q k^T / sqrt(d)) v instead of scaled_dot_product_attention (auto's choice on the CPU)
    plain_trainer = Pretrainer(tiny_config(tmp_path / "plain", image_folder, *steps, "optim.fused=false"))
    assert set(_fused_attn_flags(plain_trainer)) == {False}
    for group in plain_trainer.optimizer.param_groups:
        group["foreach"] = False
    # every global-crop token through the last block and the heads, read at the masks for the loss (official;
    # the local crops' [CLS]-only last block is checked against all tokens in test_vision_transformer.py)
    use_dense_forward(plain_trainer.student, plain_trainer.teacher)
    plain = _losses(plain_trainer.fit())
    assert len(fast) == len(plain) == 4
    assert fast == pytest.approx(plain, rel=1e-5)


def test_bf16_autocast_stays_close_to_fp32(tmp_path, image_folder):
    """bf16 has an 8-bit mantissa: over a few steps losses agree to about 1e-2 relative."""
    steps = ["run.max_steps=3", "model.drop_path_rate=0.0"]
    fp32 = _losses(Pretrainer(tiny_config(tmp_path / "fp32", image_folder, *steps, "run.precision=fp32")).fit())
    bf16 = _losses(Pretrainer(tiny_config(tmp_path / "bf16", image_folder, *steps, "run.precision=bf16")).fit())
    assert bf16 == pytest.approx(fp32, rel=2e-2)
    assert bf16 != fp32  # autocast really ran in reduced precision
