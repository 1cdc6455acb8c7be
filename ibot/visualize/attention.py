"""[CLS] self-attention of the last block, per head, as heat-maps over the image (DINO/iBOT figures).

For head ``h`` the map is ``softmax(q_cls k_j^T / sqrt(d))`` over the patches ``j`` (the [CLS]
row of the last block's attention, the [CLS] column dropped). The thresholded map keeps the
smallest set of patches holding ``mass`` (official figures: 60%) of that head's attention.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import torch
from PIL import Image
from torch import nn

from ibot.visualize.grid import Cell, GridLayout, grid_figure, save_png
from ibot.image_io import load_rgb
from ibot.visualize.images import display_scale, fit_to_patches, to_tensor, upscale

HEATMAP = "inferno"
KEPT_COLOR = (255, 90, 30)  # kept patches: half image, half this colour; the others: half brightness


def check_vit(backbone: nn.Module, arch: str = "") -> None:
    """One-line error for backbones without [CLS] self-attention (Swin)."""
    if not hasattr(backbone, "get_last_selfattention"):
        name = arch or type(backbone).__name__
        raise ValueError(f"attention maps need a ViT backbone; {name} has no [CLS] self-attention "
                         "(Swin is unsupported): use a ViT checkpoint")


@torch.no_grad()
def cls_attention(backbone: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Last block's [CLS]-to-patch attention: images (B, 3, H, W) -> (B, heads, H / p, W / p)."""
    check_vit(backbone)
    p = backbone.patch_size
    b, _, height, width = images.shape
    if height % p or width % p:
        raise ValueError(f"image size {height}x{width} is not a multiple of the patch size {p}")
    attn = backbone.get_last_selfattention(images)  # (B, heads, 1 + N, 1 + N)
    # [CLS] row without the [CLS] column: (B, heads, N) -> (B, heads, h, w)
    return attn[:, :, 0, 1:].reshape(b, attn.shape[1], height // p, width // p).float()


def keep_mass(attention: torch.Tensor, mass: float = 0.6) -> torch.Tensor:
    """Bool mask over the last dim: the highest entries whose sum first reaches ``mass`` of the total."""
    if not 0 < mass <= 1:
        raise ValueError(f"mass must be in (0, 1], got {mass}")
    values, order = attention.sort(dim=-1, descending=True)
    before = (values.cumsum(-1) - values) / values.sum(-1, keepdim=True)  # share held by higher entries
    return torch.zeros_like(before, dtype=torch.bool).scatter(-1, order, before < mass)


def heatmap(values: np.ndarray, cmap: str = HEATMAP) -> np.ndarray:
    """(h, w) floats -> (h, w, 3) uint8 colours, min-max scaled: the maximum gets the top colour."""
    low, high = float(values.min()), float(values.max())
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    return np.uint8(np.round(matplotlib.colormaps[cmap](scaled)[..., :3] * 255))


@dataclass
class AttentionMaps:
    """Attention of one image: ``maps`` (heads, h, w), ``kept`` (heads, h, w) bool, the resized image."""

    image: Image.Image
    maps: torch.Tensor
    kept: torch.Tensor
    mass: float


def attention_maps(backbone: nn.Module, image: Image.Image, image_size: int, mass: float = 0.6) -> AttentionMaps:
    """Resize ``image`` to a multiple of the patch size (shorter side ``image_size``) and read its maps."""
    check_vit(backbone)
    fitted = fit_to_patches(image, image_size, backbone.patch_size)
    device = next(backbone.parameters()).device
    maps = cls_attention(backbone, to_tensor(fitted).to(device))[0].cpu()  # (heads, h, w)
    kept = keep_mass(maps.flatten(1), mass).view_as(maps)
    return AttentionMaps(fitted, maps, kept, mass)


def attention_cells(result: AttentionMaps, heads_per_row: int = 6, min_side: int = 112) -> list[list[Cell | None]]:
    """Rows in pairs: [image | heat-map of each head], then [mean of heads | kept mass of each head]."""
    pixels = np.asarray(result.image)
    scale = display_scale(*pixels.shape[:2], min_side)
    zoom = scale * pixels.shape[0] // result.maps.shape[1]  # screen pixels per patch
    shown = upscale(pixels, scale)
    heads = result.maps.shape[0]
    per_row = max(1, min(heads_per_row, heads))
    percent = f"{result.mass:.0%}"
    mean_map = upscale(heatmap(result.maps.mean(0).numpy()), zoom)
    rows: list[list[Cell | None]] = []
    for start in range(0, heads, per_row):
        heads_here = range(start, min(start + per_row, heads))
        heat = [Cell(pixels=shown, title="image")] if start == 0 else [None]
        kept = [Cell(pixels=mean_map, title="mean of heads")] if start == 0 else [None]
        for h in heads_here:
            heat.append(Cell(upscale(heatmap(result.maps[h].numpy()), zoom), f"head {h}"))
            mask = upscale(result.kept[h].numpy(), zoom)[..., None]  # (H, W, 1)
            tinted = np.where(mask, (shown.astype(np.uint16) + KEPT_COLOR) // 2, shown // 2).astype(np.uint8)
            kept.append(Cell(tinted, f"head {h}: {percent} in {int(result.kept[h].sum())}"))
        rows += [heat, kept]
    return rows


def save_attention(result: AttentionMaps, path: str | Path, title: str = "",
                   heads_per_row: int = 6) -> tuple[Path, GridLayout]:
    """One PNG grid of heat-maps and thresholded maps; returns its path and pixel layout."""
    fig, _, layout = grid_figure(attention_cells(result, heads_per_row), header=title)
    return save_png(fig, path), layout


def visualize_attention(backbone: nn.Module, image_path: str | Path, output: str | Path, image_size: int,
                        mass: float = 0.6, heads_per_row: int = 6) -> AttentionMaps:
    """Read ``image_path``, draw its attention grid to ``output`` (PNG)."""
    result = attention_maps(backbone, load_rgb(image_path), image_size, mass)
    h, w = result.maps.shape[1:]
    save_attention(result, output, f"{Path(image_path).name}: last-block [CLS] attention, {h}x{w} patches, "
                                    f"kept {mass:.0%} of each head's mass", heads_per_row)
    return result
