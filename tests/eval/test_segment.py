"""The linear segmentation probe: a separable token map scores near 100, a constant one the
background's share; slide and whole inference agree where they must; the metrics by hand."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset

from ibot.eval.metrics import confusion_matrix, segmentation_scores
from ibot.eval.segment import PixelPatches, SegmentConfig, eval_view, run_probe

COLOURS = {0: (0, 0, 0), 1: (230, 40, 40), 2: (40, 230, 40)}


class Cells(Dataset):
    """16 x 16 images of 4 x 4-px cells, each black (class 0) or red / green (1 / 2): the class
    of every pixel is readable from its own cell."""

    classes = ["background", "red", "green"]

    def __init__(self, n: int, seed: int, width: int = 16) -> None:
        rng = np.random.default_rng(seed)
        self.masks = [np.kron(rng.choice(3, size=(4, width // 4), p=[0.6, 0.2, 0.2]), np.ones((4, 4), int))
                      for _ in range(n)]

    def __len__(self) -> int:
        return len(self.masks)

    def __getitem__(self, i):
        mask = self.masks[i]
        pixels = np.zeros((*mask.shape, 3), np.uint8)
        for c, colour in COLOURS.items():
            pixels[mask == c] = colour
        return Image.fromarray(pixels), mask


class Constant(torch.nn.Module):
    mask_stride = 4

    def forward(self, images):
        b, _, h, w = images.shape
        return torch.zeros(b, h // 4, w // 4, 8)


def _cfg(**kw):
    return SegmentConfig(**{"image_size": 16, "epochs": 15, "train_batch_size": 8, "num_workers": 0,
                            "progress": False, "lrs": (1e-2, 3e-2), **kw})


def test_separable_tokens_score_near_100():
    result = run_probe(PixelPatches(4), Cells(48, 0), Cells(16, 1), _cfg())
    assert result["miou"] > 90 and result["pixel_acc"] > 95
    assert result["cached_features"] and result["num_train"] == 48 and result["num_val"] == 16
    assert set(result["per_class_iou"]) == {"background", "red", "green"}


def test_a_constant_network_scores_the_background_share():
    val = Cells(16, 1)
    background = 100 * np.mean([(m == 0).mean() for m in val.masks])
    result = run_probe(Constant(), Cells(32, 0), val, _cfg(epochs=3))
    assert result["pixel_acc"] == pytest.approx(background, abs=0.01)
    assert result["miou"] == pytest.approx(background / 3, abs=0.01)  # IoU 0 for the two colours


def test_features_recomputed_every_epoch_when_they_do_not_fit():
    result = run_probe(PixelPatches(4), Cells(48, 0), Cells(16, 1), _cfg(cache_gb=0))
    assert not result["cached_features"] and result["miou"] > 90


def test_slide_inference_on_larger_images():
    """16 x 40-px images slid over with 16-px windows every 8 px (the last one at 24): still
    separable; a constant network scores the background share there too."""
    val = Cells(8, 1, width=40)
    result = run_probe(PixelPatches(4), Cells(48, 0), val, _cfg(eval_mode="slide", stride=8))
    assert result["miou"] > 90 and result["num_val"] == 8
    background = 100 * np.mean([(m == 0).mean() for m in val.masks])
    constant = run_probe(Constant(), Cells(16, 0), val, _cfg(eval_mode="slide", stride=8, epochs=2))
    assert constant["pixel_acc"] == pytest.approx(background, abs=0.01)


def test_eval_view_sizes():
    wide = Image.new("RGB", (40, 20))
    assert tuple(eval_view(wide, 16, 4, "whole").shape) == (3, 16, 32)
    assert tuple(eval_view(wide, 16, 4, "slide").shape) == (3, 16, 32)
    assert tuple(eval_view(Image.new("RGB", (20, 43)), 16, 4, "whole").shape) == (3, 36, 16)


def test_bad_options_are_one_line_errors():
    with pytest.raises(ValueError, match="multiple of the token stride 4"):
        run_probe(PixelPatches(4), Cells(4, 0), Cells(4, 1), _cfg(image_size=18))
    with pytest.raises(ValueError, match="--eval-mode"):
        run_probe(PixelPatches(4), Cells(4, 0), Cells(4, 1), _cfg(eval_mode="tiles"))


def test_scores_by_hand():
    target = torch.tensor([[0, 0, 1, 255], [2, 2, 1, 1]])
    pred = torch.tensor([[0, 1, 1, 2], [2, 0, 1, 1]])
    conf = confusion_matrix(pred, target, 4)
    assert conf.sum() == 7 and conf[0, 0] == 1 and conf[0, 1] == 1 and conf[2, 0] == 1
    scores = segmentation_scores(conf, ["a", "b", "c", "d"])
    # IoU: a 1/(2+2-1)=33.3, b 3/(4+3-3)=75, c 1/(2+1-1)=50, d absent -> left out
    assert scores["per_class_iou"] == {"a": 33.33, "b": 75.0, "c": 50.0, "d": None}
    assert scores["miou"] == pytest.approx((100 / 3 + 75 + 50) / 3)
    assert scores["pixel_acc"] == pytest.approx(500 / 7)


def test_official_vit_and_swin_backbones_feed_the_probe(fixtures_dir, official_vit):
    from ibot.eval.checkpoints import load_backbone
    from ibot.eval.segment import DenseFeatures
    from ibot.models import build_backbone

    vit = load_backbone(fixtures_dir / "vit_checkpoint_teacher.pth", arch="vit_tiny", **official_vit).backbone
    torch.manual_seed(0)
    swin = build_backbone("swin_tiny", patch_size=2, img_size=16, window_size=2, embed_dim=8,
                          depths=(1, 1, 2), num_heads=(1, 1, 2))
    for net, size, dim in ((vit, 32, official_vit["embed_dim"]), (swin, 16, 32)):
        result = run_probe(DenseFeatures(net), Cells(8, 0), Cells(4, 1), _cfg(image_size=size, epochs=1))
        assert result["feature_dim"] == dim and 0 <= result["miou"] <= 100
