import pytest
import torch
from torch import nn

from ibot.hub import head_from_file
from ibot.models import IBOTHead
from ibot.models.head import WeightNormLinear

SMALL = dict(in_dim=32, out_dim=64, hidden_dim=16, bottleneck_dim=8)


def test_output_shapes_for_tokens_and_cls():
    head = IBOTHead(patch_out_dim=48, **SMALL)
    cls, patch = head(torch.randn(3, 1 + 5, 32))
    assert cls.shape == (3, 64) and patch.shape == (3, 5, 48)
    assert head(torch.randn(3, 32)).shape == (3, 64)
    assert (head.out_dim, head.patch_out_dim) == (64, 48)


def test_bottleneck_is_l2_normalised():
    head = IBOTHead(**SMALL)
    seen = []
    head.last_layer.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    head.last_layer2.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    head(torch.randn(2, 4, 32) * 10)
    assert [t.shape for t in seen] == [(2, 8), (2, 3, 8)]
    for t in seen:
        torch.testing.assert_close(t.norm(dim=-1), torch.ones(t.shape[:-1]))


def test_weight_norm_matches_torch_and_g_is_frozen_with_norm_last_layer():
    layer = WeightNormLinear(8, 5, freeze_g=True)
    assert torch.equal(layer.weight_g, torch.ones(5, 1)) and not layer.weight_g.requires_grad
    assert layer.weight_v.requires_grad
    with torch.no_grad():
        layer.weight_g.uniform_(0.5, 2.0)
    reference = nn.utils.parametrizations.weight_norm(nn.Linear(8, 5, bias=False))
    with torch.no_grad():
        reference.parametrizations.weight.original0.copy_(layer.weight_g)
        reference.parametrizations.weight.original1.copy_(layer.weight_v)
    x = torch.randn(4, 8)
    torch.testing.assert_close(layer(x), reference(x))
    torch.testing.assert_close(layer.weight.norm(dim=1), layer.weight_g.squeeze(1))

    assert not IBOTHead(norm_last_layer=True, **SMALL).last_layer2.weight_g.requires_grad
    free = IBOTHead(norm_last_layer=False, **SMALL)
    assert free.last_layer.weight_g.requires_grad and free.last_layer2.weight_g.requires_grad


def test_shared_head_ties_last_layers_under_both_names():
    head = IBOTHead(shared_head=True, **SMALL)
    assert head.last_layer2 is head.last_layer
    expected = {f"mlp.{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")} | {
        f"{layer}.{p}" for layer in ("last_layer", "last_layer2") for p in ("weight_g", "weight_v")}
    assert set(head.state_dict()) == expected  # the official key names, both last layers included
    assert sum(1 for _ in head.parameters()) == 8  # but one set of parameters
    separate = IBOTHead(shared_head=False, patch_out_dim=48, **SMALL)
    assert separate.last_layer2 is not separate.last_layer
    assert separate.last_layer2.weight_v.shape == (48, 8)
    with pytest.raises(ValueError, match="patch_out_dim"):
        IBOTHead(shared_head=True, patch_out_dim=48, **SMALL)


def test_mlp_layout_init_and_options():
    head = IBOTHead(**SMALL)
    assert [type(m) for m in head.mlp] == [nn.Linear, nn.GELU, nn.Linear, nn.GELU, nn.Linear]
    big = IBOTHead(in_dim=256, out_dim=8, hidden_dim=512, bottleneck_dim=8)
    assert big.mlp[0].weight.std().item() == pytest.approx(0.02, rel=0.05)  # trunc_normal_(std=.02)
    assert torch.equal(big.mlp[0].bias, torch.zeros(512))
    single = IBOTHead(nlayers=1, **SMALL)
    assert isinstance(single.mlp, nn.Linear) and set(single.state_dict()) >= {"mlp.weight", "mlp.bias"}
    assert single(torch.randn(2, 3, 32))[1].shape == (2, 2, 64)
    normed = IBOTHead(norm="ln", act="relu", **SMALL)
    assert [type(m) for m in normed.mlp][:3] == [nn.Linear, nn.LayerNorm, nn.ReLU]
    with pytest.raises(ValueError, match="head norm 'bn'"):
        IBOTHead(norm="bn", **SMALL)
    with pytest.raises(ValueError, match="nlayers"):
        IBOTHead(nlayers=0, **SMALL)


@torch.no_grad()
def test_teacher_head_matches_official(fixtures_dir, official_head):
    reference = torch.load(fixtures_dir / "vit_reference_outputs.pt", weights_only=True)
    head = head_from_file(fixtures_dir / "vit_full_checkpoint.pth", key="teacher", **official_head)
    cls, patch = head(reference["tokens_global"])
    torch.testing.assert_close(cls, reference["teacher_head_cls"], atol=1e-5, rtol=0)
    torch.testing.assert_close(patch, reference["teacher_head_patch"], atol=1e-5, rtol=0)
