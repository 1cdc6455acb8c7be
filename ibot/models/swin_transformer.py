"""Swin Transformer backbone (Liu et al., 2021) with iBOT's mask token, built from timm's layers.

State-dict keys follow the original Microsoft / official iBOT layout: ``patch_embed.{proj,norm}``,
``layers.N.blocks.M.{norm1,attn.relative_position_bias_table,attn.qkv,attn.proj,norm2,mlp.fc1,
mlp.fc2}``, ``layers.N.downsample.{norm,reduction}`` (merging at the end of stage N), ``norm`` and
``masked_embed``. The relative position index is derived, so it is not saved; official files
store it as ``...attn.relative_position_index``, which ``ibot.hub`` drops when loading.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp
from timm.models.swin_transformer import PatchMerging, WindowAttention, window_partition, window_reverse
from torch import nn

from ibot.models.checkpointing import run_block
from ibot.models.patch_embed import LinearPatchEmbed
from ibot.models.vision_transformer import init_weights


def shifted_window_mask(height: int, width: int, window: int, shift: int, device=None) -> torch.Tensor:
    """Additive mask (0 / -100) of shifted-window attention on a (height, width) map that is a
    whole number of windows: tokens brought together by the cyclic shift from regions that were
    not adjacent do not attend to each other. Returns (num_windows, window**2, window**2)."""
    region = torch.zeros(1, height, width, 1, device=device)
    cuts = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for i, (rows, cols) in enumerate(itertools.product(cuts, cuts)):
        region[:, rows, cols] = i
    windows = window_partition(region, (window, window)).flatten(1)  # (nW, window**2)
    diff = windows.unsqueeze(1) - windows.unsqueeze(2)
    return torch.zeros_like(diff).masked_fill(diff != 0, -100.0)


class SwinBlock(nn.Module):
    """(Shifted-)window attention + MLP, pre-norm, on (B, H, W, C) maps.

    The window is fixed at construction from the stage's resolution at ``img_size``: a stage no
    larger than the window is a single unshifted window (official clamp, which sets the size of
    ``relative_position_bias_table``). Other input sizes are zero-padded to whole windows after
    ``norm1`` and before the shift, as in the official code (padded cells take part in attention).
    """

    def __init__(self, dim: int, num_heads: int, resolution: int, window_size: int, shifted: bool,
                 mlp_ratio: float, drop_path: float, norm_layer) -> None:
        super().__init__()
        if resolution <= window_size:
            window_size, shifted = resolution, False
        self.window_size = window_size
        self.shift_size = window_size // 2 if shifted else 0
        self.norm1 = norm_layer(dim)
        self.attn = WindowAttention(dim, num_heads=num_heads, window_size=window_size, qkv_bias=True)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, height, width, dim = x.shape
        win, shift = self.window_size, self.shift_size
        y = F.pad(self.norm1(x), (0, 0, 0, -width % win, 0, -height % win))
        padded_h, padded_w = y.shape[1], y.shape[2]
        mask = None
        if shift:
            y = torch.roll(y, shifts=(-shift, -shift), dims=(1, 2))
            mask = shifted_window_mask(padded_h, padded_w, win, shift, device=y.device)
        windows = window_partition(y, (win, win)).flatten(1, 2)  # (B * nW, win * win, C)
        windows = self.attn(windows, mask=mask).view(-1, win, win, dim)
        y = window_reverse(windows, (win, win), padded_h, padded_w)  # (B, Hp, Wp, C)
        if shift:
            y = torch.roll(y, shifts=(shift, shift), dims=(1, 2))
        x = x + self.drop_path(y[:, :height, :width])
        return x + self.drop_path(self.mlp(self.norm2(x)))


class SwinStage(nn.Module):
    """``depth`` blocks alternating plain and shifted windows, then (optionally) patch merging."""

    def __init__(self, dim: int, depth: int, num_heads: int, resolution: int, window_size: int,
                 mlp_ratio: float, drop_path: Sequence[float], norm_layer, downsample: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([
            SwinBlock(dim, num_heads, resolution, window_size, i % 2 == 1, mlp_ratio, drop_path[i], norm_layer)
            for i in range(depth)
        ])
        # (B, H, W, C) -> (B, H / 2, W / 2, 2C)
        self.downsample = PatchMerging(dim, norm_layer=norm_layer) if downsample else None
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = run_block(block, x, checkpointed=self.grad_checkpointing)
        return x if self.downsample is None else self.downsample(x)


class SwinTransformer(nn.Module):
    """Hierarchical backbone; its "[CLS]" is the average of the normed last-stage tokens.

    Args:
        img_size: image side the windows are sized for (see ``SwinBlock``); other sizes pad.
        patch_size: stem stride; the mask stride is ``patch_size * 2 ** (len(depths) - 1)``
            (32 for Swin-T), i.e. masks live on the last stage's grid (7 x 7 at 224).
        embed_dim: stem width (official meaning); the attribute ``embed_dim`` is the output width
            ``embed_dim * 2 ** (len(depths) - 1)`` (768 for Swin-T), as for every backbone here.
        masked_im_modeling: add ``masked_embed`` (1, stem width), zero-initialised.

    ``set_grad_checkpointing()`` recomputes each block's activations in the backward.
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        masked_im_modeling: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(depths, int) or isinstance(num_heads, int) or len(depths) != len(num_heads):
            raise ValueError(f"Swin needs one depth and one head count per stage, got depths={depths}, "
                             f"num_heads={num_heads}")
        num_stages = len(depths)
        self.depths = tuple(depths)
        self.patch_size = patch_size
        self.window_size = window_size
        self.mask_stride = patch_size * 2 ** (num_stages - 1)
        self.embed_dim = embed_dim * 2 ** (num_stages - 1)
        norm_layer = partial(nn.LayerNorm, eps=1e-6)

        # (B, 3, H, W) -> (B, H / p, W / p, C), LayerNorm'd
        self.patch_embed = LinearPatchEmbed(img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                                            embed_dim=embed_dim, norm_layer=norm_layer)
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        resolution = img_size // patch_size
        self.layers = nn.ModuleList()
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            start = sum(depths[:i])
            self.layers.append(SwinStage(
                embed_dim * 2 ** i, depth, heads, resolution // 2 ** i, window_size, mlp_ratio,
                rates[start:start + depth], norm_layer, downsample=i < num_stages - 1))
        self.norm = norm_layer(self.embed_dim)
        self.apply(init_weights)
        if masked_im_modeling:
            self.masked_embed = nn.Parameter(torch.zeros(1, embed_dim))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing of every block in the forwards that record gradients."""
        for stage in self.layers:
            stage.grad_checkpointing = enable

    def embed(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Images (B, 3, H, W) -> normed patch embeddings (B, H / p, W / p, C).

        ``mask`` (B, h, w) on the last-stage grid (or on the embedding grid) is repeated up to the
        embedding grid; masked cells are replaced by ``masked_embed`` after the stem's LayerNorm.
        """
        x = self.patch_embed(x)
        if mask is None:
            return x
        if not hasattr(self, "masked_embed"):
            raise ValueError("a mask was given but the backbone was built without masked_im_modeling")
        batch, grid_h, grid_w = x.shape[:3]
        if mask.dim() != 3 or mask.shape[0] != batch or grid_h % mask.shape[1] or grid_w % mask.shape[2]:
            raise ValueError(f"mask of shape {tuple(mask.shape)} does not tile the {grid_h} x {grid_w} "
                             f"patch grid of a batch of {batch}")
        mask = mask.repeat_interleave(grid_h // mask.shape[1], 1).repeat_interleave(grid_w // mask.shape[2], 2)
        return torch.where(mask.unsqueeze(-1), self.masked_embed.to(x.dtype), x)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, return_all_tokens: bool = False,
                token_index: torch.Tensor | None = None) -> torch.Tensor:
        """Pooled token (B, D); (B, 1 + N, D) = [pooled, normed last-stage tokens] with
        ``return_all_tokens``; or those at ``token_index`` (R, 2) of (image, token) pairs: (R, D)."""
        if return_all_tokens and token_index is not None:
            raise ValueError("give return_all_tokens or token_index, not both")
        x = self.embed(x, mask)
        for layer in self.layers:
            x = layer(x)
        tokens = self.norm(x.flatten(1, 2))  # (B, h, w, D) -> (B, N, D)
        pooled = tokens.mean(dim=1)
        if not return_all_tokens and token_index is None:
            return pooled
        tokens = torch.cat((pooled.unsqueeze(1), tokens), dim=1)
        return tokens if token_index is None else tokens[token_index[:, 0], token_index[:, 1]]

    def get_intermediate_layers(self, x: torch.Tensor, n: int = 1) -> list[torch.Tensor]:
        """[pooled, tokens] after each of the last ``n`` blocks, counted over all stages.

        As in the official code: blocks of the last stage go through the final norm (so ``n=1``
        matches ``forward``), blocks of earlier stages have no norm of their width and are
        returned as they are; widths and token counts then differ from entry to entry.
        """
        total = sum(self.depths)
        if not 1 <= n <= total:
            raise ValueError(f"n={n} is not between 1 and the number of blocks ({total})")
        x = self.embed(x)
        outputs, index = [], 0
        for i, layer in enumerate(self.layers):
            for block in layer.blocks:
                x = block(x)
                index += 1
                if index > total - n:
                    tokens = x.flatten(1, 2)
                    if i == len(self.layers) - 1:
                        tokens = self.norm(tokens)
                    outputs.append(torch.cat((tokens.mean(dim=1, keepdim=True), tokens), dim=1))
            if layer.downsample is not None:
                x = layer.downsample(x)
        return outputs


# stem width, blocks per stage and heads per stage of Swin-T (Liu et al.); keyword arguments override them
SWIN_TINY_SIZES: dict[str, Any] = dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24))


def swin_tiny(patch_size: int = 4, window_size: int = 7, **kwargs) -> SwinTransformer:
    """Swin-T: stem width 96, depths (2, 2, 6, 2), heads (3, 6, 12, 24); iBOT uses windows 7 and 14."""
    return SwinTransformer(patch_size=patch_size, window_size=window_size, **{**SWIN_TINY_SIZES, **kwargs})
