import pytest
import torch

from ibot.eval.finetune_config import default_layer_decay
from ibot.eval.finetune_model import FinetuneModel, layer_decay_param_groups
from ibot.models import build_backbone


def rates(model, groups):
    """parameter name -> (lr scale, weight decay)"""
    by_id = {id(p): (g["lr_scale"], g["weight_decay"]) for g in groups for p in g["params"]}
    return {name: by_id[id(p)] for name, p in model.named_parameters()}


def test_vit_layer_decay_groups_have_beit_rates():
    vit = build_backbone("vit_tiny", patch_size=4, img_size=16, depth=2, embed_dim=16, num_heads=2)
    model = FinetuneModel(vit, num_classes=3)
    got = rates(model, layer_decay_param_groups(model, weight_decay=0.05, layer_decay=0.5))
    # 2 blocks: embeddings are layer 0, blocks 1..2, norm + classifier layer 3; scale 0.5 ** (3 - layer)
    assert got["backbone.cls_token"] == (0.125, 0.0)
    assert got["backbone.pos_embed"] == (0.125, 0.0)
    assert got["backbone.patch_embed.proj.weight"] == (0.125, 0.05)
    assert got["backbone.patch_embed.proj.bias"] == (0.125, 0.0)
    assert got["backbone.blocks.0.attn.qkv.weight"] == (0.25, 0.05)
    assert got["backbone.blocks.0.norm1.weight"] == (0.25, 0.0)
    assert got["backbone.blocks.1.mlp.fc2.weight"] == (0.5, 0.05)
    assert got["backbone.norm.weight"] == (1.0, 0.0)
    assert got["head.weight"] == (1.0, 0.05) and got["head.bias"] == (1.0, 0.0)
    assert len(got) == len(list(model.parameters()))


def test_swin_layer_decay_counts_blocks_across_stages():
    swin = build_backbone("swin_tiny", patch_size=4, img_size=32, window_size=4, embed_dim=8, depths=(1, 2),
                          num_heads=(1, 2))
    model = FinetuneModel(swin, num_classes=3)
    got = rates(model, layer_decay_param_groups(model, weight_decay=0.05, layer_decay=0.5))
    assert got["backbone.patch_embed.proj.weight"][0] == 1 / 16
    assert got["backbone.layers.0.blocks.0.attn.qkv.weight"][0] == 1 / 8
    assert all(v[0] == 1 / 8 for k, v in got.items() if ".downsample." in k)  # joins the block before it
    assert got["backbone.layers.1.blocks.0.attn.qkv.weight"][0] == 1 / 4
    assert got["backbone.layers.1.blocks.1.attn.qkv.weight"][0] == 1 / 2
    assert got["backbone.norm.weight"][0] == 1.0 and got["head.weight"][0] == 1.0
    assert all(v[1] == 0.0 for k, v in got.items() if "relative_position_bias_table" in k)


def test_official_layer_decay_defaults_and_bad_value():
    assert default_layer_decay("vit_base") == 0.65
    assert default_layer_decay("vit_small") == default_layer_decay("vit_large") == 0.75
    model = FinetuneModel(build_backbone("vit_tiny", patch_size=4, img_size=16, depth=1, embed_dim=16, num_heads=2), 2)
    with pytest.raises(ValueError, match="layer decay"):
        layer_decay_param_groups(model, 0.05, 1.5)


def test_head_lr_scale_multiplies_the_top_layer_only():
    vit = build_backbone("vit_tiny", patch_size=4, img_size=16, depth=2, embed_dim=16, num_heads=2)
    model = FinetuneModel(vit, num_classes=3)
    plain = rates(model, layer_decay_param_groups(model, weight_decay=0.05, layer_decay=0.5))
    scaled = rates(model, layer_decay_param_groups(model, weight_decay=0.05, layer_decay=0.5, head_lr_scale=10))
    top = {"head.weight", "head.bias", "backbone.norm.weight", "backbone.norm.bias"}
    for name, (scale, decay) in plain.items():
        assert scaled[name] == ((scale * 10 if name in top else scale), decay)
    with pytest.raises(ValueError, match="head lr scale"):
        layer_decay_param_groups(model, 0.05, 0.5, head_lr_scale=0)


def test_pool_chooses_the_classifier_input():
    vit = build_backbone("vit_tiny", patch_size=4, img_size=16, depth=1, embed_dim=16, num_heads=2).eval()
    images = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        tokens = vit(images, return_all_tokens=True)  # (3, 1 + 16, 16), through the final norm
        cls = FinetuneModel(vit, 5).eval()
        mean = FinetuneModel(vit, 5, pool="mean").eval()
        grid = FinetuneModel(vit, 5, pool="grid", image_size=16).eval()
        torch.testing.assert_close(cls.features(images), tokens[:, 0])
        torch.testing.assert_close(mean.features(images), tokens[:, 1:].mean(dim=1))
        torch.testing.assert_close(grid.features(images), tokens[:, 1:].reshape(3, 16 * 16))
        assert grid.head.in_features == 16 * 16 and mean.head.in_features == cls.head.in_features == 16
        assert grid(images).shape == (3, 5)
        with pytest.raises(ValueError, match="4x4 patch grid.*36 patch tokens"):
            grid(torch.zeros(1, 3, 24, 24))
    with pytest.raises(ValueError, match="--pool must be one of cls, mean, grid"):
        FinetuneModel(vit, 5, pool="max")
    with pytest.raises(ValueError, match="needs the patch-token grid"):
        FinetuneModel(vit, 5, pool="grid")
