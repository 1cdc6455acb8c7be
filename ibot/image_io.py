"""Reading one image file as RGB: the single reader of training, evaluation, inference and the
visualisations, so that a file is decoded the same way everywhere. Torch-free (``ibot infer``
runs on onnxruntime alone).

Every Pillow mode becomes RGB as torchvision's ImageFolder loader makes it (``convert("RGB")``,
alpha dropped), except that 16-bit grayscale is scaled by its bit depth (65535 -> 255) instead of
clipped to white, and palette transparency goes through RGBA as Pillow asks.

:func:`format_skipped` is the one way every command reports the images it could not read.
"""

from __future__ import annotations

import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["CorruptImageError", "format_skipped", "load_rgb", "to_rgb"]

# Pillow's modes for 16-bit grayscale: I;16* (PNG, TIFF) and I (PGM, whose decoder stretches any
# maxval to 0..65535; also 32-bit integer TIFFs, whose values above 65535 are clipped)
_16_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class CorruptImageError(OSError, ValueError):
    """An image file that cannot be decoded; ``path`` names it. Both an ``OSError`` (a file
    problem) and a ``ValueError`` (bad input), so either kind of handler reports it."""

    def __init__(self, path: str | Path, reason: str = "") -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot decode image {self.path}" + (f": {reason}" if reason else ""))

    def __reduce__(self):  # pickled back from DataLoader workers with its path
        return type(self), (self.path, self.reason)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB; 16-bit images are divided by 257 (their bit depth, whatever their
    largest value: a dark image stays dark), float ones clipped to 0..255."""
    if image.mode in (*_16_BIT_MODES, "F"):
        pixels = np.asarray(image, dtype=np.float64)
        if image.mode in _16_BIT_MODES:
            pixels = pixels / 257.0  # 0..65535 -> 0..255
        image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image if image.mode == "RGB" else image.convert("RGB")


def load_rgb(path: str | Path) -> Image.Image:
    """Open and fully decode ``path`` (``Image.verify`` misses truncated files) as RGB;
    :class:`CorruptImageError` naming the file if it cannot be."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's warnings on odd palettes / EXIF of valid files
            with Image.open(path) as image:
                image.load()
                return to_rgb(image)
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError) as exc:
        raise CorruptImageError(path, " ".join(str(exc).split()) or type(exc).__name__) from None


def format_skipped(count: int, example: str | None = None) -> str:
    """The one report of unreadable images: ``skipped N unreadable images (e.g. PATH)``."""
    if count == 1:
        return "skipped 1 unreadable image" + (f" ({example})" if example else "")
    return f"skipped {count} unreadable images" + (f" (e.g. {example})" if example else "")
