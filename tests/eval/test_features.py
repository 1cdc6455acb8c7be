import pytest
import torch
from torch.utils.data import Dataset

from ibot.data.datasets import CorruptImageError
from ibot.eval.features import EvalDataset, FeatureCache, PatchGrid, extract_features, image_features
from ibot.models import build_backbone


class Points(Dataset):
    """Item i is (tensor [i, 2i], i % 3); item 2 is an unreadable image."""

    def __len__(self):
        return 6

    def __getitem__(self, i):
        if i == 2:
            raise CorruptImageError(f"/data/img{i}.png", "truncated")
        return torch.tensor([float(i), 2.0 * i]), i % 3


class CountingForward:
    def __init__(self):
        self.calls = 0

    def __call__(self, x):
        self.calls += 1
        return x * 10


def test_extract_features_skips_unreadable_images():
    features, labels, skipped = extract_features(lambda x: x, EvalDataset(Points(), lambda t: t), batch_size=4,
                                                 progress=False)
    assert labels.tolist() == [0, 1, 0, 1, 2]
    assert features[:, 0].tolist() == [0, 1, 3, 4, 5]
    assert len(skipped) == 1 and "/data/img2.png" in skipped[0]


def test_feature_cache_extracts_once_per_key(tmp_path):
    cache = FeatureCache(tmp_path / "features")
    dataset = EvalDataset(Points(), lambda t: t)
    forward = CountingForward()
    parts = {"checkpoint": "/x.safetensors", "mtime_ns": 1, "split": "train"}
    first = cache.load_or_extract(parts, forward, dataset, batch_size=2, progress=False)
    calls = forward.calls
    second = cache.load_or_extract(parts, forward, dataset, batch_size=2, progress=False)
    assert forward.calls == calls  # served from disk
    torch.testing.assert_close(first[0], second[0])
    assert first[1].tolist() == second[1].tolist() and second[2] == first[2]
    cache.load_or_extract({**parts, "mtime_ns": 2}, forward, dataset, batch_size=2, progress=False)
    assert forward.calls == 2 * calls  # a newer checkpoint file is a different key
    assert len(list((tmp_path / "features").glob("*.pt"))) == 2


def test_disabled_cache_writes_nothing(tmp_path):
    forward = CountingForward()
    FeatureCache(None).load_or_extract({"a": 1}, forward, EvalDataset(Points(), lambda t: t), progress=False)
    FeatureCache(None).load_or_extract({"a": 1}, forward, EvalDataset(Points(), lambda t: t), progress=False)
    assert forward.calls == 2 and not any(tmp_path.iterdir())


def test_damaged_cache_file_is_replaced(tmp_path):
    cache = FeatureCache(tmp_path)
    parts = {"checkpoint": "/x.safetensors"}
    cache.path(parts).write_bytes(b"not a torch file")
    forward = CountingForward()
    features, _, _ = cache.load_or_extract(parts, forward, EvalDataset(Points(), lambda t: t), progress=False)
    assert forward.calls == 1 and features.shape == (5, 2)
    assert cache.load_or_extract(parts, forward, EvalDataset(Points(), lambda t: t), progress=False)[0].shape == (5, 2)
    assert forward.calls == 1


def test_patch_grid_keeps_each_token_in_grid_order():
    backbone = build_backbone("vit_tiny", patch_size=7, img_size=28, depth=1, embed_dim=16, num_heads=2).eval()
    images = torch.randn(3, 3, 28, 28)
    with torch.no_grad():
        tokens = backbone(images, return_all_tokens=True)  # (3, 1 + 16, 16)
        grid = image_features(backbone, "patch-grid")(images)
    assert grid.shape == (3, 16 * 16)
    torch.testing.assert_close(grid.view(3, 16, 16), tokens[:, 1:])  # token i of the raster at i * D
    assert image_features(backbone, "cls") is backbone and isinstance(image_features(backbone, "patch-grid"),
                                                                      PatchGrid)
    with pytest.raises(ValueError, match="features must be one of cls, patch-grid"):
        image_features(backbone, "pooled")
