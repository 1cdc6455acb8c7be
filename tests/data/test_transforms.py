import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from torchvision.transforms import InterpolationMode, v2

from ibot.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MultiCropAugmentation,
    RandomGaussianBlur,
    ResizedCropFlip,
    eval_transform,
)


@pytest.fixture
def image():
    pixels = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _small(**kwargs):
    args = dict(global_crops_size=32, local_crops_size=16, local_crops_number=3)
    return MultiCropAugmentation(**(args | kwargs))


def test_output_count_sizes_and_dtype(image):
    crops = _small()(image)
    assert len(crops) == 5
    assert [tuple(c.shape) for c in crops] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 3
    assert all(c.dtype == torch.float32 for c in crops)
    assert len(_small(global_crops_number=3, local_crops_number=0)(image)) == 3


@pytest.mark.parametrize(("size", "scale"), [(32, (0.4, 1.0)), (16, (0.05, 0.4)), (48, (1.0, 1.0))])
def test_resized_crop_flip_is_torchvisions_crop_and_flip(image, size, scale):
    """The same draws and pixels as v2's RandomResizedCrop (bicubic), flip and PILToTensor in that
    order: up- and downscaled crops, and torchvision's fallback crop (the whole area asked for)."""
    ops = v2.Compose([v2.RandomResizedCrop(size, scale=scale, interpolation=InterpolationMode.BICUBIC),
                      v2.RandomHorizontalFlip(p=0.5), v2.PILToTensor()])
    lean = ResizedCropFlip(size, scale)
    gray = image.convert("L")
    for seed in range(40):
        for picture in (image, gray):
            torch.manual_seed(seed)
            expected = ops(picture)
            torch.manual_seed(seed)
            got = lean(picture)
            assert got.dtype == torch.uint8 and got.shape == expected.shape
            assert torch.equal(got, expected), f"seed {seed}, mode {picture.mode}"
        torch.manual_seed(seed)
        ops(image)
        after_ops = torch.rand(())
        torch.manual_seed(seed)
        lean(image)
        assert torch.rand(()) == after_ops  # as many draws as torchvision's ops


def test_gray_input_gives_three_channels():
    gray = Image.fromarray(np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)).convert("RGB")
    torch.manual_seed(0)
    assert all(c.shape[0] == 3 for c in _small()(gray))


def test_normalisation_ranges(image):
    torch.manual_seed(0)
    crops = torch.stack(_small(local_crops_number=0)(image))  # (2, 3, 32, 32)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    low, high = -mean / std, (1 - mean) / std
    assert torch.all(crops >= low - 1e-6) and torch.all(crops <= high + 1e-6)
    assert crops.amin() < low.max() + 0.5 and crops.amax() > high.min() - 0.5  # uses the range
    torch.manual_seed(0)
    raw = torch.stack(_small(local_crops_number=0, mean=(0, 0, 0), std=(1, 1, 1))(image))
    torch.testing.assert_close(crops, (raw - mean) / std)


def test_deterministic_under_a_seed(image):
    aug = _small()
    torch.manual_seed(3)
    first = aug(image)
    torch.manual_seed(3)
    second = aug(image)
    torch.manual_seed(4)
    other = aug(image)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not torch.equal(first[0], other[0])


def test_global_crops_follow_the_official_recipe(image):
    aug = _small()
    torch.manual_seed(0)
    crops = aug(image)
    assert not torch.equal(crops[0], crops[1])

    def ops(transform):
        return {type(op).__name__: op for op in transform.transforms}

    first, second = ops(aug.global_transform1), ops(aug.global_transform2)
    local = ops(aug.local_transform)
    assert (first["RandomGaussianBlur"].p, second["RandomGaussianBlur"].p) == (1.0, 0.1)
    assert local["RandomGaussianBlur"].p == 0.5
    assert "RandomSolarize" not in first and "RandomSolarize" not in local
    assert (second["RandomSolarize"].p, second["RandomSolarize"].threshold) == (0.2, 128)
    crop = first["RandomResizedCrop"]
    assert crop.scale == (0.25, 1.0) and crop.interpolation.value == "bicubic"
    jitter = first["RandomApply"]
    assert jitter.p == 0.8 and jitter.transforms[0].hue == (-0.1, 0.1)
    assert local["RandomResizedCrop"].scale == (0.05, 0.25)
    assert first["RandomGaussianBlur"].sigma == local["RandomGaussianBlur"].sigma == (0.1, 2.0)


def test_blur_sigma_reaches_every_crop_and_changes_the_output(image):
    small = _small(blur_sigma=(0.01, 0.02))
    assert {ops.transforms[4].sigma for ops in (small.global_transform1, small.global_transform2,
                                                 small.local_transform)} == {(0.01, 0.02)}
    torch.manual_seed(0)
    barely = small(image)[0]  # crop 1 is always blurred: with sigma <= 0.02 it stays sharp
    torch.manual_seed(0)
    official = _small()(image)[0]
    assert barely.std() > official.std()


def test_blur_is_pillows_blur_with_radius_sigma(image):
    blur = RandomGaussianBlur(p=1.0)
    for seed in range(3):
        torch.manual_seed(seed)
        radius = torch.empty(()).uniform_(0.1, 2.0).item()
        torch.manual_seed(seed)
        out = blur(image)
        expected = image.filter(ImageFilter.GaussianBlur(radius=radius))
        assert np.array_equal(np.asarray(out), np.asarray(expected))
        assert not np.array_equal(np.asarray(out), np.asarray(image))
    never = RandomGaussianBlur(p=0.0)
    assert never(image) is image


def test_bad_arguments():
    with pytest.raises(ValueError, match="global_crops_scale"):
        MultiCropAugmentation(global_crops_scale=(0.5, 0.2))
    with pytest.raises(ValueError, match="global_crops_number"):
        MultiCropAugmentation(global_crops_number=0)
    with pytest.raises(ValueError, match="blur_sigma"):
        MultiCropAugmentation(blur_sigma=(0.0, 1.0))
    with pytest.raises(ValueError, match="crop_pct"):
        eval_transform(224, crop_pct=1.5)


def test_eval_transform_resizes_then_center_crops():
    transform = eval_transform(32, crop_pct=0.875)  # short side -> 36, center 32 x 32
    constant = Image.new("RGB", (50, 40), (255, 0, 128))
    out = transform(constant)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    expected = (torch.tensor([1.0, 0.0, 128 / 255]) - torch.tensor(IMAGENET_MEAN)) / torch.tensor(
        IMAGENET_STD
    )
    torch.testing.assert_close(out[:, 16, 16], expected)
    ramp = Image.fromarray(np.tile(np.arange(72, dtype=np.uint8) * 3, (36, 1)))  # 72 x 36 gray
    centre = eval_transform(36, crop_pct=1.0)(ramp.convert("RGB"))
    assert centre.shape == (3, 36, 36)
    # the center crop keeps columns 18..53 of the ramp
    assert abs(centre[0, 0, 0].item() * IMAGENET_STD[0] + IMAGENET_MEAN[0] - 54 / 255) < 1e-6
