import pytest
import torch
from PIL import Image

from ibot.data.transforms import eval_transform, probe_train_transform
from ibot.data.views import EvalDataset
from ibot.eval.linear import LinearFeatures, default_recipe, train_linear_sweep, train_linear_sweep_augmented
from ibot.image_io import CorruptImageError
from ibot.models import build_backbone


def separable(n_per_class=40, dim=8, classes=3, seed=0):
    """Gaussian blobs around fixed centres; ``seed`` draws the noise."""
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(123)) * 3
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    return centres[labels] + 0.3 * torch.randn(len(labels), dim, generator=g), labels


def test_sweep_picks_the_learning_rate_that_learns():
    x, y = separable()
    vx, vy = separable(seed=1)
    # lr 1e-7 cannot move the N(0, 0.01) weights in 5 epochs; lr 1 separates the classes
    result = train_linear_sweep(x, y, vx, vy, lrs=[1e-7, 1.0], epochs=5, batch_size=32, progress=False)
    assert result["lr"] == 1.0 and result["top1"] == 100.0
    assert result["per_lr"][0]["best_top1"] < 80.0
    assert result["weight"].shape == (3, 8) and result["bias"].shape == (3,)
    logits = vx @ result["weight"].T + result["bias"]
    assert (logits.argmax(1) == vy).float().mean() == 1.0


def test_heads_of_a_sweep_train_independently():
    # a head trained next to others ends where it would alone (same init, same batches)
    x, y = separable()
    vx, vy = separable(seed=1)
    both = train_linear_sweep(x, y, vx, vy, lrs=[0.5, 1e-6], epochs=3, batch_size=16, progress=False)
    alone = train_linear_sweep(x, y, vx, vy, lrs=[0.5], epochs=3, batch_size=16, progress=False)
    assert both["lr"] == alone["lr"] == 0.5 and both["epoch"] == alone["epoch"]
    torch.testing.assert_close(both["weight"], alone["weight"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(both["bias"], alone["bias"], rtol=1e-5, atol=1e-6)


def test_sweep_rejects_bad_learning_rates():
    x, y = separable()
    with pytest.raises(ValueError, match="learning rates"):
        train_linear_sweep(x, y, x, y, lrs=[0.0], epochs=1, progress=False)


@pytest.mark.parametrize("avgpool, blocks, width", [(0, 2, 2 * 16), (1, 2, 16), (2, 1, 2 * 16), (2, 2, 3 * 16)])
def test_linear_feature_recipes(avgpool, blocks, width):
    torch.manual_seed(0)
    backbone = build_backbone("vit_tiny", patch_size=4, img_size=16, depth=3, embed_dim=16, num_heads=2).eval()
    x = torch.randn(2, 3, 16, 16)
    features = LinearFeatures(backbone, blocks, avgpool)
    out = features(x)
    assert out.shape == (2, width) and features.dim == width
    with torch.no_grad():
        layers = backbone.get_intermediate_layers(x, blocks)
        if avgpool == 0:
            torch.testing.assert_close(out, torch.cat([t[:, 0] for t in layers], dim=1))
        if avgpool in (1, 2):
            torch.testing.assert_close(out[:, -16:], layers[-1][:, 1:].mean(1))
        # the last block's [CLS] is the normed [CLS] of forward()
        if avgpool != 1:
            torch.testing.assert_close(out[:, (blocks - 1) * 16:blocks * 16], backbone(x))


def test_recipe_by_architecture_and_clamped_blocks():
    assert default_recipe("vit_small") == (4, 0) and default_recipe("swin_tiny") == (4, 0)
    assert default_recipe("vit_base") == (1, 2) and default_recipe("vit_large") == (1, 2)
    backbone = build_backbone("vit_tiny", patch_size=4, img_size=16, depth=2, embed_dim=16, num_heads=2)
    assert LinearFeatures(backbone, 4, 0).n_last_blocks == 2
    with pytest.raises(ValueError, match="avgpool"):
        LinearFeatures(backbone, 4, 3)


class ShadedImages(torch.utils.data.Dataset):
    """16-px images whose class is their grey level (kept by any crop or flip); ``unreadable``
    indices raise as a corrupt file does; ``calls`` counts reads."""

    def __init__(self, n: int = 24, classes: int = 3, unreadable: tuple[int, ...] = ()) -> None:
        self.labels = [i % classes for i in range(n)]
        self.classes = [str(c) for c in range(classes)]
        self.unreadable, self.calls = unreadable, 0

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        self.calls += 1
        if index in self.unreadable:
            raise CorruptImageError(f"img{index}.png", "truncated")
        grey = 40 + 80 * self.labels[index] + index % 5
        return Image.new("RGB", (16, 16), (grey, grey, grey)), self.labels[index]


def tiny_features(seed: int = 0) -> LinearFeatures:
    torch.manual_seed(seed)
    backbone = build_backbone("vit_tiny", patch_size=4, img_size=16, depth=2, embed_dim=16, num_heads=2)
    return LinearFeatures(backbone.eval(), 2, 2)


def test_augmented_protocol_with_fixed_views_trains_the_cached_heads():
    # a deterministic transform and one batch per epoch (order cannot matter): both protocols
    # see the same features every epoch, so the heads must end the same
    features, base = tiny_features(), ShadedImages()
    transform = eval_transform(16, crop_pct=1.0)
    with torch.no_grad():
        x = torch.stack([features(transform(base[i][0])[None])[0] for i in range(len(base))])
    y = torch.tensor(base.labels)
    sweep = dict(lrs=[0.01, 1.0], epochs=4, batch_size=len(base), progress=False)
    cached = train_linear_sweep(x, y, x, y, **sweep)
    augmented = train_linear_sweep_augmented(features, EvalDataset(base, transform), x, y, num_classes=3,
                                             num_workers=0, **sweep)
    assert augmented["skipped_images"] == []
    assert [r["best_top1"] for r in augmented["per_lr"]] == [r["best_top1"] for r in cached["per_lr"]]
    torch.testing.assert_close(augmented["weight"], cached["weight"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(augmented["bias"], cached["bias"], rtol=1e-4, atol=1e-5)


def test_augmented_protocol_reads_the_images_every_epoch_and_skips_unreadable_ones():
    base = ShadedImages(unreadable=(5,))
    val = ShadedImages(n=9)
    features = tiny_features()
    transform = eval_transform(16, crop_pct=1.0)
    with torch.no_grad():
        vx = torch.stack([features(transform(val[i][0])[None])[0] for i in range(len(val))])
    result = train_linear_sweep_augmented(features, EvalDataset(base, probe_train_transform(16, (0.5, 1.0))), vx,
                                          torch.tensor(val.labels), num_classes=3, lrs=[1.0], epochs=3, batch_size=8,
                                          num_workers=0, progress=False)
    assert base.calls == 3 * len(base)  # the backbone saw fresh crops of every image each epoch
    assert result["skipped_images"] == ["img5.png"]  # listed once, not once per epoch
    assert result["weight"].shape == (3, features.dim) and 0 <= result["top1"] <= 100


def test_probe_train_transform_crops_and_flips_at_the_size():
    image = Image.new("RGB", (40, 30), (10, 200, 30))
    out = probe_train_transform(24)(image)
    assert out.shape == (3, 24, 24) and out.dtype == torch.float32
    with pytest.raises(ValueError, match="crop scale"):
        probe_train_transform(24, (0.0, 1.0))
