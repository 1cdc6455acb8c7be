"""Patch-to-patch correspondence between two images (the iBOT paper's part-level semantics figure).

Each patch is described by its final normed token, L2-normalised; two patches correspond when
each is the other's nearest neighbour by cosine similarity (mutual nearest neighbours). The
``top_k`` most similar pairs are drawn as lines across the two images side by side. With a ViT,
the matching can be limited to the foreground: the patches holding most of the [CLS] attention.
Pairs can also be drawn from a dataset: two different images of one class (:func:`same_class_pairs`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ibot.image_io import load_rgb
from ibot.models.tokens import patch_tokens
from ibot.visualize.grid import Cell, GridLayout, grid_figure, save_png
from ibot.visualize.images import display_scale, fit_to_patches, to_tensor, upscale

LINE_COLORS = "rainbow"


@torch.no_grad()
def patch_features(backbone: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Unit-length patch tokens: images (B, 3, H, W) -> (B, H / s, W / s, D), ``s`` the mask stride."""
    return F.normalize(patch_tokens(backbone, images).float(), dim=-1)


@dataclass
class Matches:
    """Mutual nearest neighbours, most similar first: flat patch indices into A and B, cosine similarity."""

    index_a: torch.Tensor  # (K,) long
    index_b: torch.Tensor  # (K,) long
    similarity: torch.Tensor  # (K,) float
    num_mutual: int  # mutual pairs before keeping the top k


def mutual_nearest_neighbours(a: torch.Tensor, b: torch.Tensor, top_k: int | None = None) -> Matches:
    """Pairs ``(i, j)`` with ``j = argmax_j <a_i, b_j>`` and ``i = argmax_i <a_i, b_j>``; a (N, D), b (M, D) unit."""
    if top_k is not None and top_k < 1:
        raise ValueError(f"top-k must be at least 1, got {top_k}")
    similarity = a @ b.T  # (N, M)
    a_to_b = similarity.argmax(dim=1)  # (N,)
    b_to_a = similarity.argmax(dim=0)  # (M,)
    index_a = torch.nonzero(b_to_a[a_to_b] == torch.arange(a.shape[0], device=a.device)).flatten()
    index_b = a_to_b[index_a]
    values = similarity[index_a, index_b]
    order = values.argsort(descending=True)[:top_k]
    return Matches(index_a[order], index_b[order], values[order], num_mutual=len(index_a))


@dataclass
class Correspondence:
    """Two resized images, their patch grids and the matches between them."""

    image_a: Image.Image
    image_b: Image.Image
    grid_a: tuple[int, int]
    grid_b: tuple[int, int]
    matches: Matches


def foreground_patches(backbone: nn.Module, images: torch.Tensor, mass: float) -> torch.Tensor:
    """Patches holding ``mass`` of the mean-over-heads [CLS] attention (ViT): (B, 3, H, W) -> (B, N) bool."""
    from ibot.visualize.attention import cls_attention, keep_mass

    return keep_mass(cls_attention(backbone, images).mean(1).flatten(1), mass)  # (B, heads, h, w) -> (B, N)


def correspond(backbone: nn.Module, image_a: Image.Image, image_b: Image.Image, image_size: int,
               top_k: int = 20, foreground: float | None = None) -> Correspondence:
    """Resize both images to multiples of the stride (shorter side ``image_size``) and match their patches.

    ``foreground`` (ViT only) restricts the matching to the patches holding that share of each
    image's [CLS] attention, leaving out the background.
    """
    stride = backbone.mask_stride
    device = next(backbone.parameters()).device
    fitted = [fit_to_patches(im, image_size, stride) for im in (image_a, image_b)]
    inputs = [to_tensor(im).to(device) for im in fitted]
    feats = [patch_features(backbone, x)[0].cpu() for x in inputs]  # 2 x (h, w, D)
    flat = [f.flatten(0, 1) for f in feats]  # 2 x (N, D)
    if foreground is None:
        keep = [torch.arange(len(f)) for f in flat]
    else:
        keep = [torch.nonzero(foreground_patches(backbone, x, foreground)[0].cpu()).flatten() for x in inputs]
    m = mutual_nearest_neighbours(flat[0][keep[0]], flat[1][keep[1]], top_k)
    matches = Matches(keep[0][m.index_a], keep[1][m.index_b], m.similarity, m.num_mutual)
    return Correspondence(fitted[0], fitted[1], tuple(feats[0].shape[:2]), tuple(feats[1].shape[:2]), matches)


def patch_centres(indices: torch.Tensor, grid: tuple[int, int], patch_px: float, top: int,
                  left: int) -> np.ndarray:
    """Flat patch indices -> (K, 2) pixel (x, y) of the patch centres in a picture placed at (top, left)."""
    rows, cols = (indices // grid[1]).numpy(), (indices % grid[1]).numpy()
    return np.stack([left + (cols + 0.5) * patch_px, top + (rows + 0.5) * patch_px], axis=1)


def save_correspondence(result: Correspondence, path: str | Path, title: str = "",
                        min_side: int = 224) -> tuple[Path, GridLayout, np.ndarray, np.ndarray]:
    """Both images side by side with a line per match; returns the path, the layout and the
    (K, 2) pixel end points in A and in B."""
    pictures = [np.asarray(im) for im in (result.image_a, result.image_b)]
    scale = max(display_scale(*p.shape[:2], min_side) for p in pictures)
    shown = [upscale(p, scale) for p in pictures]
    gap = max(16, shown[0].shape[1] // 4)
    fig, ax, layout = grid_figure([[Cell(shown[0], "A"), Cell(shown[1], "B")]], header=title, gap=gap)
    m = result.matches
    ends = []
    for index, grid, picture, col in ((m.index_a, result.grid_a, shown[0], 0), (m.index_b, result.grid_b, shown[1], 1)):
        ends.append(patch_centres(index, grid, picture.shape[0] / grid[0], *layout.box(0, col)))
    colors = matplotlib.colormaps[LINE_COLORS](np.linspace(0, 1, max(len(m.similarity), 1)))
    for (xa, ya), (xb, yb), color in zip(ends[0], ends[1], colors):
        ax.plot([xa, xb], [ya, yb], color=color, linewidth=1.2, alpha=0.9)
        ax.plot([xa, xb], [ya, yb], "o", color=color, markersize=3)
    return save_png(fig, path), layout, ends[0], ends[1]


def draw_correspondence(backbone: nn.Module, image_a: Image.Image, image_b: Image.Image, output: str | Path,
                        image_size: int, top_k: int = 20, foreground: float | None = None,
                        names: tuple[str, str] = ("A", "B")) -> Correspondence:
    """Match the patches of two images, draw the matches to ``output`` (PNG) under a title naming them."""
    result = correspond(backbone, image_a, image_b, image_size, top_k, foreground)
    m = result.matches
    if len(m.similarity):
        detail = f"cosine {float(m.similarity.min()):.2f} to {float(m.similarity.max()):.2f}"
    else:
        detail = "none found"
    where = "" if foreground is None else f" in the {foreground:.0%}-attention foreground"
    save_correspondence(result, output, f"{names[0]} - {names[1]}: top {len(m.similarity)} of "
                                        f"{m.num_mutual} mutual nearest patches{where} ({detail})")
    return result


def visualize_correspondence(backbone: nn.Module, path_a: str | Path, path_b: str | Path, output: str | Path,
                             image_size: int, top_k: int = 20, foreground: float | None = None) -> Correspondence:
    """Read two images, match their patches, draw the matches to ``output`` (PNG)."""
    return draw_correspondence(backbone, load_rgb(path_a), load_rgb(path_b), output, image_size, top_k, foreground,
                               (Path(path_a).name, Path(path_b).name))


def same_class_pairs(labels: Sequence[int], num_pairs: int, seed: int = 0) -> list[tuple[int, int, int]]:
    """``num_pairs`` seeded ``(label, index a, index b)``: a class drawn uniformly among those with
    two images or more (negative labels are unlabelled), then two different images of it."""
    if num_pairs < 1:
        raise ValueError(f"--pairs must be at least 1, got {num_pairs}")
    labels = np.asarray(labels)
    members = {int(c): np.flatnonzero(labels == c) for c in np.unique(labels) if c >= 0}
    classes = sorted(c for c, found in members.items() if len(found) >= 2)
    if not classes:
        raise ValueError("no class of the dataset has two images to pair")
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(num_pairs):
        label = classes[int(rng.integers(len(classes)))]
        a, b = rng.choice(members[label], size=2, replace=False)
        pairs.append((label, int(a), int(b)))
    return pairs
