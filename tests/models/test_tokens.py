"""Patch tokens as feature maps (ibot.models.tokens)."""

import pytest
import torch

from ibot.models import build_backbone
from ibot.models.tokens import TokenOutputs, patch_tokens, token_grid


def _vit():
    torch.manual_seed(0)
    return build_backbone("vit_tiny", patch_size=4, img_size=16, depth=3, embed_dim=32, num_heads=2).eval()


def test_patch_tokens_are_the_forward_tokens_on_their_grid():
    net, x = _vit(), torch.randn(2, 3, 16, 24)
    maps = patch_tokens(net, x)
    assert maps.shape == (2, 4, 6, 32) and token_grid(net, 16, 24) == (4, 6)
    all_tokens = net(x, return_all_tokens=True)
    # raster order: row r, column c is token 1 + r * w + c
    torch.testing.assert_close(maps[1, 2, 5], all_tokens[1, 1 + 2 * 6 + 5])


def test_last_blocks_are_concatenated_in_block_order():
    net, x = _vit(), torch.randn(1, 3, 16, 16)
    maps = patch_tokens(net, x, n_last_blocks=2)
    layers = net.get_intermediate_layers(x, 2)
    assert maps.shape == (1, 4, 4, 64)
    torch.testing.assert_close(maps[0, 1, 3, 32:], layers[1][0, 1 + 1 * 4 + 3])
    torch.testing.assert_close(maps[0, 1, 3, :32], layers[0][0, 1 + 1 * 4 + 3])


def test_swin_tokens_live_on_the_last_stage_grid():
    torch.manual_seed(0)
    net = build_backbone("swin_tiny", patch_size=2, img_size=32, window_size=2, embed_dim=8,
                         depths=(1, 1, 1, 2), num_heads=(1, 1, 1, 2)).eval()
    maps = patch_tokens(net, torch.randn(2, 3, 32, 32), n_last_blocks=2)
    assert maps.shape == (2, 2, 2, 2 * 64)
    with pytest.raises(ValueError, match="last stage"):
        patch_tokens(net, torch.randn(1, 3, 32, 32), n_last_blocks=3)


def test_sizes_off_the_token_grid_are_refused():
    with pytest.raises(ValueError, match="multiple of the backbone's token stride 4"):
        patch_tokens(_vit(), torch.randn(1, 3, 18, 16))


@pytest.mark.parametrize("tokens", ["cls", "patch", "all"])
def test_token_outputs(tokens):
    net, x = _vit(), torch.randn(2, 3, 16, 16)
    out = TokenOutputs(net, tokens)(x)
    if tokens == "cls":
        torch.testing.assert_close(out, net(x))
    elif tokens == "patch":
        torch.testing.assert_close(out, patch_tokens(net, x))
    else:
        torch.testing.assert_close(out[0], net(x))
        torch.testing.assert_close(out[1], patch_tokens(net, x))
