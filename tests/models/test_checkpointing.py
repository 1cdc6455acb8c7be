"""Activation checkpointing of the ViT and Swin blocks: the same outputs and gradients, drop path
included, with fewer activations kept for the backward."""

from __future__ import annotations

import pytest
import torch

from ibot.models import swin_tiny, vit_tiny


def _backbones():
    return {
        "vit": lambda: vit_tiny(patch_size=4, img_size=16, embed_dim=32, depth=3, num_heads=2, drop_path_rate=0.3,
                                masked_im_modeling=True),
        "swin": lambda: swin_tiny(patch_size=2, window_size=2, img_size=32, embed_dim=8, depths=(2, 2, 2, 2),
                                  num_heads=(1, 1, 2, 2), drop_path_rate=0.3, masked_im_modeling=True),
    }


def _step(backbone: torch.nn.Module, images: torch.Tensor, token_index: torch.Tensor | None):
    """Output and gradients of one training forward and backward (drop path drawn from seed 1), and
    how many tensors the autograd graph kept for the backward."""
    kept = []
    torch.manual_seed(1)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t) or t, lambda t: t):
        out = backbone(images, token_index=token_index)
    out.square().sum().backward()
    return out.detach(), {n: p.grad for n, p in backbone.named_parameters() if p.grad is not None}, len(kept)


@pytest.mark.parametrize("arch", ["vit", "swin"])
def test_checkpointed_blocks_give_the_same_outputs_and_gradients(arch):
    torch.manual_seed(0)
    plain = _backbones()[arch]().train()
    checkpointed = _backbones()[arch]().train()
    checkpointed.load_state_dict(plain.state_dict())
    checkpointed.set_grad_checkpointing()
    size = 16 if arch == "vit" else 32
    images = torch.randn(3, 3, size, size)
    token_index = torch.tensor([[0, 0], [1, 0], [2, 0], [0, 3], [2, 4]])  # [CLS] and two patch tokens
    want, want_grads, want_kept = _step(plain, images, token_index)
    got, got_grads, got_kept = _step(checkpointed, images, token_index)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert got_grads.keys() == want_grads.keys()
    for name, grad in want_grads.items():
        torch.testing.assert_close(got_grads[name], grad, rtol=1e-6, atol=1e-7, msg=name)
    assert got_kept < want_kept / 2  # the blocks' inputs only, not their insides


def test_nothing_is_checkpointed_without_gradients(monkeypatch):
    """The teacher's forward (no_grad) runs its blocks plainly."""
    backbone = _backbones()["vit"]()
    backbone.set_grad_checkpointing()
    monkeypatch.setattr("ibot.models.checkpointing.checkpoint", lambda *a, **k: pytest.fail("checkpointed"))
    with torch.no_grad():
        backbone(torch.ones(2, 3, 16, 16), return_all_tokens=True)
