"""Vision Transformer backbone with iBOT's mask token, built from timm's blocks.

State-dict keys are those of the official iBOT / DINO / timm ViT (``cls_token``, ``pos_embed``,
``patch_embed.proj.*``, ``blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.*``, ``norm.*``)
plus ``masked_embed`` when ``masked_im_modeling=True``, so published checkpoints load unchanged.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import DropPath, drop_path, trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn

from ibot.models.checkpointing import run_block
from ibot.models.patch_embed import LinearPatchEmbed


class VisionTransformer(nn.Module):
    """Pre-norm ViT (Dosovitskiy et al.): LayerNorm eps 1e-6, qkv bias, MLP ratio 4, GELU.

    Args:
        img_size: side of the square image the position embedding is made for; other sizes
            interpolate it (bicubic, as DINO/iBOT do for the 96-px local crops).
        patch_size: side of a square patch; also the mask stride (one mask cell per patch).
        drop_path_rate: stochastic depth of the last block, ramped linearly from 0 at the first.
        masked_im_modeling: add the learned mask token ``masked_embed`` (1, D), zero-initialised.

    ``set_grad_checkpointing()`` recomputes each block's activations in the backward (the forward's
    results are the same).
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        masked_im_modeling: bool = False,
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.patch_size = patch_size
        self.mask_stride = patch_size
        self.grad_checkpointing = False
        norm_layer = partial(nn.LayerNorm, eps=1e-6)

        self.patch_embed = LinearPatchEmbed(img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                                            embed_dim=embed_dim)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop_path=rate,
                  norm_layer=norm_layer, act_layer=nn.GELU)
            for rate in rates
        ])
        self.norm = norm_layer(embed_dim)

        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        self.apply(init_weights)
        if masked_im_modeling:
            self.masked_embed = nn.Parameter(torch.zeros(1, embed_dim))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing of every block in the forwards that record gradients."""
        self.grad_checkpointing = enable

    def interpolate_pos_encoding(self, grid: tuple[int, int]) -> torch.Tensor:
        """Position embedding for a (h, w) patch grid: (1, 1 + h * w, D).

        DINO's recipe: bicubic with ``scale_factor = ((h + 0.1) / sqrt(N), (w + 0.1) / sqrt(N))``,
        which samples at slightly different points than resizing to (h, w) would.
        """
        n = self.pos_embed.shape[1] - 1
        side = math.isqrt(n)
        if grid == (side, side):
            return self.pos_embed
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        # (1, N, D) -> (1, D, sqrt(N), sqrt(N))
        patch_pos = patch_pos.reshape(1, side, side, -1).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(
            patch_pos, mode="bicubic",
            scale_factor=((grid[0] + 0.1) / math.sqrt(n), (grid[1] + 0.1) / math.sqrt(n)))
        if tuple(patch_pos.shape[-2:]) != grid:
            raise ValueError(f"position embedding interpolated to {tuple(patch_pos.shape[-2:])}, not {grid}")
        # (1, D, h, w) -> (1, h * w, D)
        patch_pos = patch_pos.permute(0, 2, 3, 1).flatten(1, 2)
        return torch.cat((cls_pos, patch_pos), dim=1)

    def prepare_tokens(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Images (B, 3, H, W) -> tokens (B, 1 + N, D) entering the first block.

        Where ``mask`` (B, H / p, W / p) is True the patch embedding is replaced by ``masked_embed``
        before [CLS] is prepended and before the position embedding is added (official order).
        """
        x = self.patch_embed(x)  # (B, h, w, D)
        grid = (x.shape[1], x.shape[2])
        if mask is not None:
            if not hasattr(self, "masked_embed"):
                raise ValueError("a mask was given but the backbone was built without masked_im_modeling")
            if tuple(mask.shape) != (x.shape[0], *grid):
                raise ValueError(f"mask has shape {tuple(mask.shape)}, expected {(x.shape[0], *grid)}")
            x = torch.where(mask.unsqueeze(-1), self.masked_embed.to(x.dtype), x)
        x = x.flatten(1, 2)  # (B, h, w, D) -> (B, N, D)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x), dim=1)
        return x + self.interpolate_pos_encoding(grid)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, return_all_tokens: bool = False,
                token_index: torch.Tensor | None = None) -> torch.Tensor:
        """Normed [CLS] (B, D); all normed tokens (B, 1 + N, D) with ``return_all_tokens``; or the
        normed tokens at ``token_index`` (R, 2) of (image, token) pairs, token 0 being [CLS]: (R, D).

        Only the tokens returned go through the last block's MLP and the final norm (its attention
        still reads every token): the same values for less work, e.g. the student's local crops,
        of which iBOT uses [CLS] alone, and its global crops, of which the loss reads [CLS] and the
        masked tokens."""
        if return_all_tokens and token_index is not None:
            raise ValueError("give return_all_tokens or token_index, not both")
        x = self.prepare_tokens(x, mask)
        checkpointed = self.grad_checkpointing
        for block in self.blocks[:-1]:
            x = run_block(block, x, checkpointed=checkpointed)
        if return_all_tokens:
            return self.norm(run_block(self.blocks[-1], x, checkpointed=checkpointed))
        return self.norm(run_block(block_at_tokens, self.blocks[-1], x, token_index, checkpointed=checkpointed))

    def get_intermediate_layers(self, x: torch.Tensor, n: int = 1) -> list[torch.Tensor]:
        """Outputs of the last ``n`` blocks, each through the final norm: n x (B, 1 + N, D)."""
        x = self.prepare_tokens(x)
        outputs = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i >= len(self.blocks) - n:
                outputs.append(self.norm(x))
        return outputs

    def get_last_selfattention(self, x: torch.Tensor) -> torch.Tensor:
        """Attention weights of the last block, softmax(q k^T / sqrt(d)): (B, heads, 1 + N, 1 + N)."""
        x = self.prepare_tokens(x)
        for block in self.blocks[:-1]:
            x = block(x)
        last = self.blocks[-1]
        attn = last.attn
        b, n, _ = x.shape
        # (B, N, 3 * D) -> (3, B, heads, N, head_dim)
        qkv = attn.qkv(last.norm1(x)).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k, _ = qkv.unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        return (q * attn.scale @ k.transpose(-2, -1)).softmax(dim=-1)


def block_at_tokens(block: Block, x: torch.Tensor, token_index: torch.Tensor | None) -> torch.Tensor:
    """``block(x)`` (B, T, D) at some tokens only: the rows ``token_index`` (R, 2) of (image, token)
    pairs, (R, D), or [CLS] (B, D) when it is None.

    The attention reads every token; the residual adds, the MLP and its norm run on the R rows.
    Drop path draws its per-image factors with the same RNG calls as timm's ``DropPath``, so in
    training too the result is ``block(x)`` at those rows."""
    if token_index is None:
        images = None

        def pick(t: torch.Tensor) -> torch.Tensor:
            return t[:, 0]
    else:
        images, tokens = token_index.unbind(1)

        def pick(t: torch.Tensor) -> torch.Tensor:
            return t[images, tokens]
    batch = x.shape[0]
    attended = block.ls1(pick(block.attn(block.norm1(x))))  # (B, T, D) -> (R, D)
    y = pick(x) + _drop_path_rows(block.drop_path1, attended, images, batch)
    return y + _drop_path_rows(block.drop_path2, block.ls2(block.mlp(block.norm2(y))), images, batch)


def _drop_path_rows(module: nn.Module, rows: torch.Tensor, images: torch.Tensor | None, batch: int) -> torch.Tensor:
    """timm's per-image drop path (B factors, drawn as it draws them) applied to rows of images ``images``."""
    if not isinstance(module, DropPath) or not module.training or module.drop_prob == 0.0:
        return rows
    factor = drop_path(rows.new_ones(batch, 1), module.drop_prob, True, module.scale_by_keep)  # (B, 1)
    return rows * (factor if images is None else factor[images])


def init_weights(module: nn.Module) -> None:
    """Official ViT and Swin init: Linear weights trunc_normal(std .02), biases 0; LayerNorm (1, 0)."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


# width, depth and heads of the named ViTs (Dosovitskiy et al.; DeiT's ViT-Ti); keyword arguments override them
VIT_SIZES: dict[str, dict[str, int]] = {
    "vit_tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "vit_small": dict(embed_dim=384, depth=12, num_heads=6),
    "vit_base": dict(embed_dim=768, depth=12, num_heads=12),
    "vit_large": dict(embed_dim=1024, depth=24, num_heads=16),
}


def _vit(name: str, patch_size: int, kwargs: dict) -> VisionTransformer:
    return VisionTransformer(patch_size=patch_size, **{**VIT_SIZES[name], **kwargs})


def vit_tiny(patch_size: int = 16, **kwargs) -> VisionTransformer:
    """ViT-Ti: width 192, depth 12, 3 heads (``embed_dim``/``depth``/``num_heads`` override)."""
    return _vit("vit_tiny", patch_size, kwargs)


def vit_small(patch_size: int = 16, **kwargs) -> VisionTransformer:
    """ViT-S: width 384, depth 12, 6 heads."""
    return _vit("vit_small", patch_size, kwargs)


def vit_base(patch_size: int = 16, **kwargs) -> VisionTransformer:
    """ViT-B: width 768, depth 12, 12 heads."""
    return _vit("vit_base", patch_size, kwargs)


def vit_large(patch_size: int = 16, **kwargs) -> VisionTransformer:
    """ViT-L: width 1024, depth 24, 16 heads."""
    return _vit("vit_large", patch_size, kwargs)
