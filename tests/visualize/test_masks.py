"""Sample masks over real crops: both shapes from the configured ratios, painted fractions read back."""

from __future__ import annotations

import numpy as np
from PIL import Image

from ibot.cli import main
from ibot.config import resolve_config
from ibot.visualize.masks import MASK_COLOR, mask_stride, paint_masks, sample_masks, save_mask_grid

# every crop masked at U(0.2, 0.4), on a 7 x 7 grid (patch 4 on the 28-px crops)
RATIOS = ["mask.pred_ratio=0.3", "mask.pred_ratio_var=0.1", "model.patch_size=4", "data.local_crops_size=12"]


def test_masks_follow_the_configured_ratio_and_shapes():
    cfg = resolve_config("cpu", None, RATIOS)  # the embedded Fashion-MNIST subset, 28-px crops, patch 4
    samples = sample_masks(cfg, num_images=3, seed=1)
    assert list(samples.masks) == ["block", "rand"] and samples.stride == 4
    assert len(samples.crops) == 6 and samples.crops[0].shape == (28, 28, 3)
    for shape, masks in samples.masks.items():
        assert len(masks) == 6 and all(m.shape == (7, 7) and m.dtype == bool for m in masks)
        fractions = np.array([m.mean() for m in masks])
        assert (fractions <= 0.4 + 1e-9).all() and fractions.max() > 0
    rand = np.array([m.sum() for m in samples.masks["rand"]])
    assert ((rand >= int(0.2 * 49)) & (rand <= int(0.4 * 49))).all()  # "rand" masks exactly int(ratio * 49)


def test_no_masks_before_pred_start_epoch():
    cfg = resolve_config("cpu", None, [*RATIOS, "mask.pred_start_epoch=2"])
    assert not any(m.any() for m in sample_masks(cfg, num_images=2, epoch=1).masks["block"])
    assert any(m.any() for m in sample_masks(cfg, num_images=2).masks["block"])  # default: the start epoch


def test_png_cells_show_each_masked_fraction(tmp_path):
    cfg = resolve_config("cpu", None, [*RATIOS, "mask.pred_shape=rand"])
    samples = sample_masks(cfg, num_images=2, seed=3)
    path, layout = save_mask_grid(samples, cfg, tmp_path / "masks.png")
    png = np.asarray(Image.open(path).convert("RGB"))
    assert png.shape[:2] == layout.size and (layout.rows, layout.cols) == (2, 4)
    side = layout.cell_h
    assert side == 28 * 4  # 28-px crops shown 4x
    for row, masks in enumerate(samples.masks.values()):  # configured shape ("rand") first
        for col, mask in enumerate(masks):
            top, left = layout.box(row, col)
            cell = png[top:top + side, left:left + side]
            painted = (cell == MASK_COLOR).all(-1)
            assert abs(painted.mean() - mask.mean()) < 1e-9  # grey crops: only masks have this colour
            assert painted[8::16, 8::16].tolist() == mask.tolist()  # 16 screen pixels per mask cell


def test_paint_masks_covers_whole_cells():
    crop = np.zeros((8, 8, 3), dtype=np.uint8)
    mask = np.array([[True, False], [False, False]])
    painted = paint_masks(crop, mask, 4)
    assert (painted[:4, :4] == MASK_COLOR).all() and (painted[4:] == 0).all() and (painted[:4, 4:] == 0).all()


def test_swin_masks_use_the_last_stage_stride():
    assert mask_stride(resolve_config("swin_tiny_7")) == 32


def test_command_uses_preset_and_overrides(tmp_path, capsys):
    out = tmp_path / "m.png"
    assert main(["visualize", "masks", "--output", str(out), "--num-images", "1", "mask.pred_shape=rand",
                 "--seed", "2", *RATIOS]) == 0
    assert "2 crops of fashion-mnist:subset, rand masks" in capsys.readouterr().out
    assert Image.open(out).size[0] > 2 * 96
