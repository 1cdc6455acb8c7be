"""ibot.models.patch_embed: the convolution's map, as a matrix product."""

import pytest
import torch
from timm.layers import PatchEmbed

from ibot.models.patch_embed import LinearPatchEmbed


@pytest.mark.parametrize("patch, size, norm", [(7, (28, 35), None), (16, (32, 48), torch.nn.LayerNorm)])
def test_same_outputs_gradients_and_keys_as_the_convolution(patch, size, norm):
    torch.manual_seed(0)
    conv = PatchEmbed(img_size=224, patch_size=patch, in_chans=3, embed_dim=24, norm_layer=norm,
                      output_fmt="NHWC", strict_img_size=False)
    linear = LinearPatchEmbed(img_size=224, patch_size=patch, in_chans=3, embed_dim=24, norm_layer=norm)
    assert linear.state_dict().keys() == conv.state_dict().keys()
    linear.load_state_dict(conv.state_dict())
    x = torch.randn(3, 3, *size)
    want, got = conv(x), linear(x)
    assert got.shape == (3, size[0] // patch, size[1] // patch, 24)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)  # fp32, summation order differs
    weights = torch.randn_like(want)
    (want * weights).sum().backward()
    (got * weights).sum().backward()
    for mine, theirs in zip(linear.parameters(), conv.parameters(), strict=True):
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-4, atol=1e-4)


def test_sizes_off_the_patch_grid_are_refused():
    embed = LinearPatchEmbed(img_size=28, patch_size=7, in_chans=3, embed_dim=8)
    with pytest.raises(ValueError, match="image size 30 x 28 is not a multiple of the patch size 7 x 7"):
        embed(torch.randn(1, 3, 30, 28))
