"""The one image reader: every Pillow mode to RGB, corrupt files named."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ibot.image_io import CorruptImageError, load_rgb


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "LA", "CMYK", "I;16", "1"])
def test_every_mode_becomes_rgb(mode, tmp_path):
    rng = np.random.default_rng(2)
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65536, (12, 14), dtype=np.uint16))
    else:
        image = Image.fromarray(rng.integers(0, 256, (12, 14, 3), dtype=np.uint8)).convert(mode)
    path = tmp_path / ("x.tiff" if mode in ("I;16", "CMYK") else "x.png")
    image.save(path)
    rgb = load_rgb(path)
    assert rgb.mode == "RGB" and rgb.size == (14, 12)
    if mode == "I;16":  # scaled to 8 bits, not clipped to white
        assert 30 < np.asarray(rgb).mean() < 225


def test_palette_with_transparency_loads(tmp_path):
    image = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).convert("P")
    image.info["transparency"] = 0
    image.save(tmp_path / "t.png", transparency=0)
    assert load_rgb(tmp_path / "t.png").mode == "RGB"


def test_corrupt_file_is_a_value_error_naming_it(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with pytest.raises(ValueError, match="bad.jpg"):
        load_rgb(tmp_path / "bad.jpg")


def test_rgba_drops_alpha_like_torchvision_loader(tmp_path):
    pixels = np.random.default_rng(3).integers(0, 256, (6, 5, 4), dtype=np.uint8)
    Image.fromarray(pixels, mode="RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(np.asarray(load_rgb(tmp_path / "a.png")), pixels[..., :3])


def test_corrupt_error_is_both_kinds_and_pickles_with_its_path(tmp_path):
    import pickle

    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(CorruptImageError) as excinfo:
        load_rgb(tmp_path / "bad.png")
    error = excinfo.value
    assert isinstance(error, OSError) and isinstance(error, ValueError)
    again = pickle.loads(pickle.dumps(error))
    assert again.path == str(tmp_path / "bad.png") and str(again) == str(error)


@pytest.mark.parametrize("fmt", ["png", "tiff", "pgm"])  # Pillow modes I;16 (PNG, TIFF) and I (16-bit PGM)
@pytest.mark.parametrize("top", [255, 65535])  # a dark image, whose largest value fits in 8 bits, and a full one
def test_16_bit_images_are_scaled_by_their_bit_depth(fmt, top, tmp_path):
    values = np.linspace(0, top, 12 * 14).round().astype(np.uint16).reshape(12, 14)
    Image.fromarray(values).save(tmp_path / f"x.{fmt}")
    gray = np.asarray(load_rgb(tmp_path / f"x.{fmt}"))
    assert gray.shape == (12, 14, 3) and (gray == gray[..., :1]).all()
    np.testing.assert_array_equal(gray[..., 0], np.rint(values / 257.0).astype(np.uint8))  # 65535 -> 255
