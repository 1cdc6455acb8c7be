"""[CLS] attention maps: a hand-built ViT whose attention is known, the PNG read back, official parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from ibot.cli import main
from ibot.models import build_backbone
from ibot.visualize.attention import (
    KEPT_COLOR,
    attention_maps,
    check_vit,
    cls_attention,
    heatmap,
    keep_mass,
    save_attention,
)
from ibot.visualize.grid import GridLayout
from tests.visualize.helpers import BRIGHT, SIDE, bright_patch_image, noise_image, pointing_vit, tiny_checkpoint


def test_cls_attention_peaks_on_the_bright_patch():
    result = attention_maps(pointing_vit(), bright_patch_image(), image_size=SIDE)
    maps = result.maps
    assert maps.shape == (2, 4, 4)
    assert np.unravel_index(int(maps[0].argmax()), (4, 4)) == BRIGHT and maps[0][BRIGHT] > 0.9
    assert np.unravel_index(int(maps[1].argmin()), (4, 4)) == BRIGHT and maps[1][BRIGHT] < 1e-3
    # head 0: one patch holds 60%; head 1: uniform over the 15 dark patches, 8 of them pass 50%
    assert result.kept[0].sum() == 1 and result.kept[0][BRIGHT]
    half = keep_mass(maps[1].flatten(), 0.5).view(4, 4)
    assert half.sum() == 8 and not half[BRIGHT] and not result.kept[1][BRIGHT]


def test_cls_attention_is_the_cls_row_of_the_last_block():
    torch.manual_seed(0)
    vit = build_backbone("vit_tiny", patch_size=4, img_size=16, depth=2, embed_dim=16, num_heads=2).eval()
    x = torch.randn(2, 3, 16, 24)
    full = vit.get_last_selfattention(x)  # (2, heads, 1 + 24, 1 + 24)
    torch.testing.assert_close(cls_attention(vit, x), full[:, :, 0, 1:].reshape(2, 2, 4, 6))
    with pytest.raises(ValueError, match="not a multiple of the patch size 4"):
        cls_attention(vit, torch.randn(1, 3, 16, 18))


def test_keep_mass_is_the_smallest_top_set_reaching_the_mass():
    attn = torch.tensor([[0.1, 0.5, 0.1, 0.3], [0.25, 0.25, 0.25, 0.25]])
    assert keep_mass(attn, 0.6).tolist() == [[False, True, False, True], [True, True, True, False]]
    assert keep_mass(attn, 0.5).tolist()[0] == [False, True, False, False]
    assert keep_mass(attn * 7, 0.6).tolist() == keep_mass(attn, 0.6).tolist()  # mass is relative
    with pytest.raises(ValueError, match="mass"):
        keep_mass(attn, 0.0)


def test_png_shows_the_peak_in_the_heat_map_and_tints_only_the_kept_patch(tmp_path):
    result = attention_maps(pointing_vit(), bright_patch_image(), image_size=SIDE)
    path, layout = save_attention(result, tmp_path / "attn.png", title="synthetic")
    png = np.asarray(Image.open(path).convert("RGB"))
    assert png.shape[:2] == layout.size and layout.rows == 2 and layout.cols == 3
    zoom = layout.cell_w // 4  # screen pixels per patch

    def patch_colours(row: int, col: int) -> np.ndarray:  # (4, 4, 3) colour at each patch's centre
        top, left = layout.box(row, col)
        centres = (np.arange(4) + 0.5) * zoom
        return png[(top + centres).astype(int)[:, None], (left + centres).astype(int)[None, :]]

    heat = patch_colours(0, 1).astype(int).sum(-1)  # head 0: the top colour of the map on the bright patch
    assert np.unravel_index(heat.argmax(), heat.shape) == BRIGHT
    assert tuple(patch_colours(0, 1)[BRIGHT]) == tuple(heatmap(np.array([[0.0, 1.0]]))[0, 1])
    kept = patch_colours(1, 1)  # head 0 thresholded: white patch tinted, black ones stay black
    assert tuple(kept[BRIGHT]) == tuple((255 + np.array(KEPT_COLOR)) // 2)
    assert (np.delete(kept.reshape(16, 3), BRIGHT[0] * 4 + BRIGHT[1], axis=0) == 0).all()
    shown = patch_colours(0, 0)  # the image itself, zoomed
    assert (shown[BRIGHT] == 255).all() and shown.sum() == 255 * 3


def test_swin_is_refused_in_one_line():
    with pytest.raises(ValueError, match="need a ViT backbone; swin_tiny .*unsupported"):
        check_vit(nn.Linear(2, 2), "swin_tiny")


def test_command_writes_one_grid_per_image_of_any_size_and_mode(tmp_path, capsys):
    ckpt = tiny_checkpoint(tmp_path / "ckpt.safetensors")  # cpu preset made tiny: patch 4, 28-px crops, 2 heads
    images = [noise_image(tmp_path / "a.png", (50, 30), "L"), noise_image(tmp_path / "b.png", (28, 28), "RGBA")]
    out = tmp_path / "out"
    assert main(["visualize", "attention", *map(str, images), "-c", str(ckpt), "--output-dir", str(out)]) == 0
    # shorter side to 28 px, the other rounded to a multiple of 4 (50 x 30 -> 48 x 28), shown 4x
    for name, width in (("a", 48), ("b", 28)):
        layout = GridLayout(rows=2, cols=3, cell_h=112, cell_w=4 * width, header_h=22)  # image + 2 heads
        assert Image.open(out / f"{name}_attention.png").size == layout.size[::-1]
    assert capsys.readouterr().out.split() == [str(out / "a_attention.png"), str(out / "b_attention.png")]


def test_command_skips_an_unreadable_image_and_draws_the_rest(tmp_path, capsys):
    ckpt = tiny_checkpoint(tmp_path / "ckpt.safetensors")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    images = [noise_image(tmp_path / "a.png"), tmp_path / "broken.png", noise_image(tmp_path / "b.png")]
    out = tmp_path / "out"
    assert main(["visualize", "attention", *map(str, images), "-c", str(ckpt), "--output-dir", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.out.split() == [str(out / "a_attention.png"), str(out / "b_attention.png")]
    (line,) = captured.err.strip().splitlines()
    assert line.startswith(f"skipped 1 unreadable image (cannot decode image {tmp_path / 'broken.png'}: ")
    assert sorted(p.name for p in out.iterdir()) == ["a_attention.png", "b_attention.png"]


def test_official_checkpoint_matches_the_official_attention(fixtures_dir, official_arch, official_vit):
    from ibot.eval.checkpoints import load_backbone

    loaded = load_backbone(fixtures_dir / "vit_checkpoint_teacher.pth", arch="vit_tiny", **official_vit)
    ref = torch.load(fixtures_dir / "vit_reference_outputs.pt", weights_only=True)
    maps = cls_attention(loaded.backbone, ref["x_global"])  # (B, heads, grid, grid)
    grid = official_arch["img_size"] // official_arch["patch_size"]
    expected = ref["last_attn"][:, :, 0, 1:].unflatten(-1, (grid, grid))
    torch.testing.assert_close(maps, expected, rtol=1e-4, atol=1e-6)
