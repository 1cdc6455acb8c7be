import pytest
import torch

from ibot.models import build_backbone, swin_tiny
from ibot.models.swin_transformer import shifted_window_mask

# numerics were checked once against the official models/swin_transformer.py (identical outputs at
# 224, 96 and 160 px, windows 7 and 14, with masks); these tests pin the layout and the behaviour


def narrow(**kwargs):
    """Swin-T's structure (4 stages, windows, merging) at a width that runs in milliseconds."""
    return swin_tiny(embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2), **kwargs).eval()


@pytest.mark.parametrize("window", [7, 14])
def test_state_dict_follows_official_layout(window):
    with torch.device("meta"):
        model = build_backbone("swin_tiny", window_size=window, masked_im_modeling=True)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    # the official file has these 172 entries plus 12 derived relative_position_index buffers
    assert len(shapes) == 172
    stage3 = (2 * window - 1) ** 2
    expected = {
        "patch_embed.proj.weight": (96, 3, 4, 4),
        "patch_embed.norm.weight": (96,),
        "masked_embed": (1, 96),
        "layers.0.blocks.1.attn.relative_position_bias_table": ((2 * window - 1) ** 2, 3),
        "layers.0.blocks.0.attn.qkv.weight": (288, 96),
        "layers.0.blocks.0.mlp.fc2.weight": (96, 384),
        "layers.0.downsample.norm.weight": (384,),
        "layers.0.downsample.reduction.weight": (192, 384),
        "layers.2.blocks.5.attn.relative_position_bias_table": (stage3, 12),
        "layers.2.downsample.reduction.weight": (768, 1536),
        # the last stage (7 x 7 at 224) is smaller than a 14-window: clamped to 7
        "layers.3.blocks.1.attn.relative_position_bias_table": (169, 24),
        "norm.weight": (768,),
    }
    assert {k: shapes[k] for k in expected} == expected
    assert not any(k.startswith("layers.3.downsample") for k in shapes)
    assert (model.embed_dim, model.mask_stride, model.patch_size) == (768, 32, 4)


def test_windows_are_clamped_and_shifted_like_the_official_code():
    with torch.device("meta"):
        model = swin_tiny(window_size=14)
    windows = [[(b.window_size, b.shift_size) for b in stage.blocks] for stage in model.layers]
    # stages of 56, 28, 14, 7 tokens: only stages larger than the window are split and shifted
    assert windows[0] == windows[1] == [(14, 0), (14, 7)]
    assert windows[2] == [(14, 0)] * 6
    assert windows[3] == [(7, 0)] * 2


@torch.no_grad()
def test_forward_shapes_at_224_and_96():
    model = narrow(window_size=7)
    for size, tokens in ((224, 49), (96, 9)):
        x = torch.randn(1, 3, size, size)
        all_tokens = model(x, return_all_tokens=True)
        assert all_tokens.shape == (1, 1 + tokens, 64)
        torch.testing.assert_close(all_tokens[:, 0], all_tokens[:, 1:].mean(dim=1))
        torch.testing.assert_close(model(x), all_tokens[:, 0])


@torch.no_grad()
def test_full_swin_tiny_output_size():
    model = swin_tiny(window_size=14).eval()
    assert model(torch.randn(1, 3, 224, 224), return_all_tokens=True).shape == (1, 50, 768)


@torch.no_grad()
def test_mask_changes_output_only_where_given():
    model = narrow(masked_im_modeling=True)
    model.masked_embed.normal_()
    x = torch.randn(2, 3, 64, 64)
    mask = torch.zeros(2, 2, 2, dtype=torch.bool)  # last-stage grid of a 64-px crop
    plain = model(x, return_all_tokens=True)
    torch.testing.assert_close(model(x, mask=mask, return_all_tokens=True), plain)
    mask[0, 1, 0] = True
    masked = model(x, mask=mask, return_all_tokens=True)
    assert not torch.allclose(masked[0], plain[0])
    torch.testing.assert_close(masked[1], plain[1])


@torch.no_grad()
def test_mask_is_repeated_up_to_the_patch_grid():
    model = narrow(masked_im_modeling=True)
    model.masked_embed.normal_()
    x = torch.randn(1, 3, 64, 64)
    mask = torch.tensor([[[True, False], [False, False]]])
    tokens = model.embed(x, mask)  # (1, 16, 16, 8): one mask cell covers 8 x 8 patches
    assert torch.equal(tokens[0, :8, :8], model.masked_embed.expand(8, 8, -1))
    torch.testing.assert_close(tokens[0, 8:], model.embed(x)[0, 8:])
    fine = mask.repeat_interleave(8, 1).repeat_interleave(8, 2)
    torch.testing.assert_close(model(x, mask=fine), model(x, mask=mask))
    with pytest.raises(ValueError, match="does not tile"):
        model(x, mask=torch.zeros(1, 3, 3, dtype=torch.bool))


@torch.no_grad()
def test_intermediate_layers_span_stages():
    model = narrow()
    x = torch.randn(1, 3, 64, 64)
    last, = model.get_intermediate_layers(x, n=1)
    torch.testing.assert_close(last, model(x, return_all_tokens=True))
    # n=3: the last block of stage 3 (width 32, 4 x 4 tokens, unnormed), then the 2 of stage 4
    assert [t.shape for t in model.get_intermediate_layers(x, n=3)] == [(1, 17, 32), (1, 5, 64), (1, 5, 64)]
    with pytest.raises(ValueError, match="n=9"):
        model.get_intermediate_layers(x, n=9)


def test_shifted_window_mask_separates_wrapped_regions():
    mask = shifted_window_mask(4, 4, window=2, shift=1)
    assert mask.shape == (4, 4, 4)
    assert (mask[0] == 0).all()  # the top-left window holds no wrapped tokens
    assert (mask[3] != 0).sum() == 12  # the corner window mixes 4 regions: each token sees only itself
    assert set(mask.unique().tolist()) == {0.0, -100.0}
