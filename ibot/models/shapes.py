"""What a backbone or head is, read from tensor shapes alone: no network is built.

Checkpoints say what they hold twice: in their tensors and, for ours, in the config of their
metadata. Comparing the two (and what an ``arch`` name with size options would build) before
building anything gives a one-line error that names both architectures, where loading would fail
with a list of state-dict keys, or metadata that promises a huge network would allocate it first.
The functions take state dicts of tensors or of their shapes (a safetensors header's, say).
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from ibot.models.swin_transformer import SWIN_TINY_SIZES
from ibot.models.vision_transformer import VIT_SIZES


@dataclass(frozen=True)
class BackboneShape:
    """The sizes that fix a backbone's tensors; None where unknown (compares equal to anything)."""

    family: str  # "ViT" or "Swin"
    patch_size: int | None
    width: int | None  # of the patch embedding (Swin: the stem)
    depth: int | None  # blocks, over all stages
    grid: int | None = None  # ViT: side of the position-embedding grid (image size // patch size)
    out_width: int | None = None  # of the output tokens (Swin: the last stage's)

    def __str__(self) -> str:
        """E.g. ``ViT with patch 16, width 384, depth 12, position grid 14 x 14``."""
        sizes = [f"{name} {value}" for name, value in (("patch", self.patch_size), ("width", self.width),
                                                         ("depth", self.depth)) if value is not None]
        if self.grid is not None:
            sizes.append(f"position grid {self.grid} x {self.grid}")
        return f"{self.family} with {', '.join(sizes)}" if sizes else self.family

    def differences(self, other: BackboneShape) -> list[str]:
        """Names of the sizes known on both sides that differ."""
        return [f.name for f in fields(self) if None not in (getattr(self, f.name), getattr(other, f.name))
                and getattr(self, f.name) != getattr(other, f.name)]


def expected_backbone_shape(arch: str, patch_size: int | None = None, **kwargs: Any) -> BackboneShape:
    """The shape ``build_backbone(arch, patch_size, **kwargs)`` would give; other kwargs are ignored."""
    from ibot.models import BACKBONES

    if arch not in BACKBONES:
        raise ValueError(f"unknown arch {arch!r}; choose from {', '.join(BACKBONES)}")
    defaults = inspect.signature(BACKBONES[arch]).parameters
    patch = patch_size or defaults["patch_size"].default
    if arch in VIT_SIZES:
        sizes = {**VIT_SIZES[arch], **{k: v for k, v in kwargs.items() if k in ("embed_dim", "depth") and v}}
        image = kwargs.get("img_size") or 224
        return BackboneShape("ViT", patch, sizes["embed_dim"], sizes["depth"], image // patch, sizes["embed_dim"])
    sizes = {**SWIN_TINY_SIZES, **{k: v for k, v in kwargs.items() if k in ("embed_dim", "depths") and v}}
    depths = list(sizes["depths"])
    return BackboneShape("Swin", patch, sizes["embed_dim"], sum(depths),
                         out_width=sizes["embed_dim"] * 2 ** (len(depths) - 1))


def _shapes(state: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Tensors or shapes -> shapes."""
    return {k: tuple(v.shape) if hasattr(v, "shape") else tuple(v) for k, v in state.items()}


def backbone_shape_of(state: Mapping[str, Any]) -> BackboneShape | None:
    """The shape of the backbone whose (unprefixed) tensors, or their shapes, these are; None without one."""
    shapes = _shapes(state)
    stem = shapes.get("patch_embed.proj.weight")  # (width, 3, patch, patch)
    patch, width = (int(stem[-1]), int(stem[0])) if stem is not None and len(stem) == 4 else (None, None)
    if any(k.startswith("layers.") for k in shapes):
        blocks = {tuple(k.split(".")[:4]) for k in shapes if re.match(r"layers\.\d+\.blocks\.\d+\.", k)}
        norm = shapes.get("norm.weight")
        return BackboneShape("Swin", patch, width, len(blocks), out_width=int(norm[0]) if norm else None)
    if stem is None and not any(k.startswith("blocks.") for k in shapes):
        return None
    blocks = {k.split(".")[1] for k in shapes if k.startswith("blocks.")}
    pos_embed = shapes.get("pos_embed")  # (1, 1 + grid ** 2, width)
    grid = math.isqrt(int(pos_embed[1]) - 1) if pos_embed is not None and len(pos_embed) == 3 else None
    return BackboneShape("ViT", patch, width, len(blocks), grid, width)


def infer_head_kwargs(state: Mapping[str, Any]) -> dict[str, Any]:
    """``IBOTHead`` arguments read off a head's tensors or their shapes (ours and official ones)."""
    shapes = _shapes(state)
    if "mlp.weight" in shapes:  # nlayers = 1: the MLP is a single Linear
        linears, norm = [shapes["mlp.weight"]], None
    else:
        indices = sorted({int(k.split(".")[1]) for k in shapes if k.startswith("mlp.") and k.endswith(".weight")})
        weights = [shapes[f"mlp.{i}.weight"] for i in indices]
        linears = [w for w in weights if len(w) == 2]
        norm = "ln" if any(len(w) == 1 for w in weights) else None
    if not linears or "last_layer.weight_v" not in shapes:
        raise ValueError("the checkpoint's head has no mlp.* / last_layer.weight_v tensors")
    out_dim = shapes["last_layer.weight_v"][0]
    patch = shapes.get("last_layer2.weight_v")
    return dict(in_dim=linears[0][1], out_dim=out_dim, patch_out_dim=patch[0] if patch is not None else out_dim,
                norm=norm, nlayers=len(linears), hidden_dim=linears[0][0] if len(linears) > 1 else 2048,
                bottleneck_dim=linears[-1][0], shared_head=False)
