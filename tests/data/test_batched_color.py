"""The batched colour path against the per-crop Pillow path it replaces."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter, ImageOps
from torchvision.transforms.v2 import functional as TF

from ibot.data.batched_color import (BRIGHTNESS, GRAY, JITTER, NUM_PARAMS, ORDER, SIGMA, SOLARIZE,
                                     ColorParamSampler, apply_color)
from ibot.data.transforms import MultiCropAugmentation

UNIT = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # no normalisation: outputs in [0, 1]


def photo(seed: int = 0, size: tuple[int, int] = (48, 40)) -> Image.Image:
    """Smooth colour blobs, photo-like enough for blur and hue to matter."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (6, 6, 3)).astype(np.uint8)).resize(size, Image.BICUBIC)


def as_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)


def identity(n: int = 1) -> torch.Tensor:
    params = torch.zeros(n, NUM_PARAMS)
    params[:, BRIGHTNESS:BRIGHTNESS + 4] = torch.tensor([1.0, 1.0, 1.0, 0.0])
    params[:, ORDER:ORDER + 4] = torch.arange(4.0)
    return params


def jitter(op: int, value: float) -> torch.Tensor:
    params = identity()
    params[0, JITTER], params[0, BRIGHTNESS + op] = 1.0, value
    return params


PIL_OPS = {0: TF.adjust_brightness, 1: TF.adjust_contrast, 2: TF.adjust_saturation, 3: TF.adjust_hue}


@pytest.mark.parametrize(("op", "value", "mean_tol", "max_tol"), [
    (0, 1.3, 1.0, 1.5), (0, 0.7, 1.0, 1.5), (1, 0.65, 1.0, 1.5), (1, 1.35, 1.0, 1.5),
    (2, 1.2, 1.0, 1.5), (2, 0.8, 1.0, 1.5),
    # Pillow rotates hue on uint8 HSV: a coarse hue of dark, grey pixels, hence the larger maximum
    (3, 0.08, 1.5, 16.0), (3, -0.07, 1.5, 16.0)])
def test_jitter_operations_match_pillow(op, value, mean_tol, max_tol):
    image = photo()
    ours = apply_color(as_tensor(image)[None], jitter(op, value), *UNIT)[0]
    theirs = as_tensor(PIL_OPS[op](image, value)).float() / 255
    diff = (ours - theirs).abs() * 255  # in grey levels
    assert diff.mean() < mean_tol and diff.max() < max_tol


def test_grayscale_blur_and_solarisation_match_pillow():
    image, u8 = photo(1), as_tensor(photo(1))[None]

    def grey_levels(params, reference):
        return (apply_color(u8, params, *UNIT)[0] - as_tensor(reference).float() / 255).abs() * 255

    gray = identity()
    gray[0, GRAY] = 1
    assert grey_levels(gray, image.convert("L").convert("RGB")).max() <= 0.5 + 1e-4  # rounding only
    solarise = identity()
    solarise[0, SOLARIZE] = 1
    assert grey_levels(solarise, ImageOps.solarize(image, 128)).max() < 1e-3
    for sigma in (0.3, 1.0, 2.0):  # an exact Gaussian against Pillow's three box blurs
        blur = identity()
        blur[0, SIGMA] = sigma
        diff = grey_levels(blur, image.filter(ImageFilter.GaussianBlur(radius=sigma)))
        assert diff.mean() < 1.0 and diff.max() < 4.0


def test_jitter_follows_each_crops_order():
    u8 = as_tensor(photo(2))[None]
    params = identity()
    params[0, JITTER] = 1
    params[0, BRIGHTNESS:BRIGHTNESS + 4] = torch.tensor([1.3, 0.6, 1.2, 0.05])
    x = u8.float() / 255
    for order in ([0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2]):
        params[0, ORDER:ORDER + 4] = torch.tensor(order, dtype=torch.float32)
        want = x
        for op in order:  # one operation at a time, in this order
            want = apply_color(want, jitter(op, float(params[0, BRIGHTNESS + op])), *UNIT)
        torch.testing.assert_close(apply_color(u8, params, *UNIT), want, atol=1e-5, rtol=0)


def test_a_batch_equals_its_crops_one_by_one_and_normalises():
    crops = torch.stack([as_tensor(photo(i)) for i in range(6)])
    sampler = ColorParamSampler(blur_p=0.5, blur_sigma=(0.1, 2.0), solarize_p=0.5)
    torch.manual_seed(4)
    params = torch.stack([sampler(c)[1] for c in crops])
    params[0] = identity()[0]
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    batch = apply_color(crops, params, mean, std)
    for i in range(6):
        torch.testing.assert_close(batch[i], apply_color(crops[i:i + 1], params[i:i + 1], mean, std)[0])
    m, s = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    torch.testing.assert_close(batch[0], (crops[0].float() / 255 - m) / s)  # identity row: normalised only
    with pytest.raises(ValueError, match="params"):
        apply_color(crops, params[:, :5], mean, std)


def test_parameters_follow_the_official_probabilities():
    torch.manual_seed(5)
    sampler = ColorParamSampler(blur_p=0.5, blur_sigma=(0.2, 1.0), solarize_p=0.2)
    rows = torch.stack([sampler(torch.zeros(3, 2, 2, dtype=torch.uint8))[1] for _ in range(4000)])
    assert rows[:, JITTER].mean().item() == pytest.approx(0.8, abs=0.025)
    assert rows[:, GRAY].mean().item() == pytest.approx(0.2, abs=0.025)
    assert (rows[:, SIGMA] > 0).float().mean().item() == pytest.approx(0.5, abs=0.03)
    assert rows[:, SOLARIZE].mean().item() == pytest.approx(0.2, abs=0.025)
    on = rows[rows[:, JITTER] > 0]
    for i, (low, high) in enumerate([(0.6, 1.4), (0.6, 1.4), (0.8, 1.2), (-0.1, 0.1)]):
        values = on[:, BRIGHTNESS + i]
        assert low <= values.min() and values.max() <= high and values.std() > (high - low) / 4
    assert (on[:, ORDER:ORDER + 4].sort(dim=1).values == torch.arange(4.0)).all()
    blurred = rows[rows[:, SIGMA] > 0, SIGMA]
    assert 0.2 <= blurred.min() and blurred.max() <= 1.0


def test_batched_multicrop_keeps_the_pillow_paths_crops_and_statistics():
    image = photo(6, (64, 56))
    kwargs = dict(global_crops_size=32, local_crops_size=16, local_crops_number=2)
    batched, pillow = MultiCropAugmentation(**kwargs, batched_color=True), MultiCropAugmentation(**kwargs)
    torch.manual_seed(7)
    pairs = batched(image)
    assert len(pairs) == 4 and all(c.dtype == torch.uint8 and p.shape == (NUM_PARAMS,) for c, p in pairs)
    assert [tuple(c.shape) for c, _ in pairs] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 2
    # over many draws, the two paths give crops of the same pixel statistics
    stats = {"batched": [], "pillow": []}
    torch.manual_seed(8)
    for _ in range(150):
        crops, params = zip(*batched(image))
        stats["batched"].append(apply_color(torch.stack(crops[:2]), torch.stack(params[:2]),
                                            batched.mean, batched.std))
        stats["pillow"].append(torch.stack(pillow(image)[:2]))
    b, p = torch.stack(stats["batched"]), torch.stack(stats["pillow"])
    torch.testing.assert_close(b.mean(dim=(0, 3, 4)), p.mean(dim=(0, 3, 4)), atol=0.08, rtol=0)
    torch.testing.assert_close(b.std(dim=(0, 3, 4)), p.std(dim=(0, 3, 4)), atol=0.08, rtol=0)
