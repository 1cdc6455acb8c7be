"""Semantic-segmentation datasets: ``(RGB image, mask)`` pairs for the linear segmentation probe.

A mask is an (H, W) int64 array of class indices ``0 .. C - 1``; :data:`IGNORE_INDEX` (255) marks
pixels that count nowhere. Layouts are read as they are distributed:

- **ADE20K** (SceneParsing, 150 classes): ``ROOT/images/{training,validation}/*.jpg`` and
  ``ROOT/annotations/{training,validation}/*.png``; the PNG holds ``0`` (ignored) or ``1 .. 150``,
  read as classes ``0 .. 149`` (mmseg's ``reduce_zero_label``).
- **Pascal VOC 2012** (21 classes with the background): ``ROOT/JPEGImages/ID.jpg``,
  ``ROOT/SegmentationClass/ID.png`` (palette PNG of class indices, 255 ignored),
  ``ROOT/ImageSets/Segmentation/{train,val}.txt``; ``ROOT`` may also be the folder above
  ``VOC2012`` or ``VOCdevkit``.
- **fashion-mnist-scenes** (built in, 11 classes): canvases of embedded Fashion-MNIST items; see
  :class:`FashionMNISTScenes`.

Bad annotations are one-line errors naming the file: a missing mask (when the dataset is opened),
a mask whose size differs from its image's or that holds a class index out of range (when the
pair is read).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ibot.data.fashion_mnist import CLASSES as FASHION_CLASSES
from ibot.data.fashion_mnist import FashionMNIST
from ibot.image_io import load_rgb

__all__ = ["ADE20K", "IGNORE_INDEX", "SCENES_SPEC", "VOC_CLASSES", "FashionMNISTScenes", "MaskedImages",
           "PascalVOC", "build_segmentation_dataset"]

IGNORE_INDEX = 255
SCENES_SPEC = "fashion-mnist-scenes"
VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")
_SPLITS = ("train", "val")


def _check_split(split: str) -> None:
    if split not in _SPLITS:
        raise ValueError(f"segmentation split must be 'train' or 'val', got {split!r}")


def _read_mask(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as png:
            return np.asarray(png, dtype=np.int64)
    except (OSError, ValueError, SyntaxError) as exc:
        raise ValueError(f"cannot read mask {path}: {' '.join(str(exc).split())}") from None


class MaskedImages(Dataset):
    """Image files and their mask files; subclasses map the stored values to class indices."""

    classes: list[str]
    ignore_index = IGNORE_INDEX

    def __init__(self, root: Path, pairs: list[tuple[Path, Path]], split: str) -> None:
        if not pairs:
            raise FileNotFoundError(f"no images for the {split} split in {root}")
        missing = [image for image, mask in pairs if not mask.is_file()]
        if missing:
            raise FileNotFoundError(f"no mask for {missing[0]}" + (f" (and {len(missing) - 1} more images)"
                                                                    if len(missing) > 1 else ""))
        self.root, self.pairs, self.split = root, pairs, split

    def __len__(self) -> int:
        return len(self.pairs)

    def labels(self, stored: np.ndarray, path: Path) -> np.ndarray:
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[Image.Image, np.ndarray]:
        image_path, mask_path = self.pairs[index]
        image = load_rgb(image_path)
        mask = _read_mask(mask_path)
        if mask.ndim != 2:
            raise ValueError(f"mask {mask_path} has {mask.ndim} dimensions; expected one class index per pixel")
        if mask.shape != (image.height, image.width):
            raise ValueError(f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} but its image {image_path} is "
                             f"{image.width}x{image.height}")
        return image, self.labels(mask, mask_path)


class ADE20K(MaskedImages):
    """ADE20K SceneParsing: stored 0 is ignored, 1 .. 150 are classes 0 .. 149."""

    classes = [f"class_{i}" for i in range(1, 151)]

    def __init__(self, root: str | Path, split: str = "train") -> None:
        _check_split(split)
        root = Path(root)
        sub = "training" if split == "train" else "validation"
        images = sorted((root / "images" / sub).glob("*.jpg"))
        super().__init__(root, [(p, root / "annotations" / sub / f"{p.stem}.png") for p in images], split)

    def labels(self, stored: np.ndarray, path: Path) -> np.ndarray:
        if stored.min() < 0 or stored.max() > len(self.classes):
            raise ValueError(f"mask {path} holds class index {int(stored.max())}, outside 0..{len(self.classes)}")
        return np.where(stored == 0, IGNORE_INDEX, stored - 1)


class PascalVOC(MaskedImages):
    """Pascal VOC 2012 segmentation: indices 0 .. 20, 255 ignored (the object boundaries)."""

    classes = list(VOC_CLASSES)

    def __init__(self, root: str | Path, split: str = "train") -> None:
        _check_split(split)
        root = voc_root(Path(root))
        listing = root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not listing.is_file():
            raise FileNotFoundError(f"Pascal VOC split list not found: {listing}")
        ids = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
        pairs = [(root / "JPEGImages" / f"{i}.jpg", root / "SegmentationClass" / f"{i}.png") for i in ids]
        absent = [image for image, _ in pairs if not image.is_file()]
        if absent:
            raise FileNotFoundError(f"{listing} lists {absent[0]}, which does not exist")
        super().__init__(root, pairs, split)

    def labels(self, stored: np.ndarray, path: Path) -> np.ndarray:
        bad = (stored >= len(self.classes)) & (stored != IGNORE_INDEX)
        if bad.any() or stored.min() < 0:
            value = int(stored[bad][0]) if bad.any() else int(stored.min())
            raise ValueError(f"mask {path} holds class index {value}, outside 0..{len(self.classes) - 1} and 255")
        return stored


def voc_root(root: Path) -> Path:
    """The ``VOC2012`` folder at or under ``root``."""
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir() and (candidate / "SegmentationClass").is_dir():
            return candidate
    return root


class FashionMNISTScenes(Dataset):
    """Scenes of ``2-4`` Fashion-MNIST items on a black ``size`` x ``size`` canvas, each pixel
    labelled with the class of the item drawn there (class 0 is the background, item class ``c``
    is ``c + 1``).

    Scene ``i`` is a function of ``(seed, split, i)`` alone: its items (drawn from the embedded
    subset's train items for ``train``, its test items for ``val``), their sides (uniform in
    ``scale`` x ``size``, resized bicubically), positions (inside the canvas) and drawing order
    (later items cover earlier ones). An item covers the pixels where its resized image is brighter
    than ``threshold`` (its silhouette; Fashion-MNIST items sit on black)."""

    classes = ["background", *FASHION_CLASSES]
    ignore_index = IGNORE_INDEX

    def __init__(self, split: str = "train", num_scenes: int | None = None, size: int = 56,
                 items: tuple[int, int] = (2, 4), scale: tuple[float, float] = (0.3, 0.6), seed: int = 0,
                 threshold: int = 20) -> None:
        _check_split(split)
        if not (1 <= items[0] <= items[1] and 0 < scale[0] <= scale[1] <= 1 and size >= 8):
            raise ValueError(f"fashion-mnist-scenes: bad sizes (size {size}, items {items}, scale {scale})")
        self.split, self.size, self.items, self.scale, self.seed = split, size, items, scale, seed
        self.threshold = threshold
        self.source = FashionMNIST("train" if split == "train" else "test", root="subset")
        self.num_scenes = num_scenes or (3000 if split == "train" else 1000)
        self.root = f"{SCENES_SPEC} ({split}, {self.num_scenes} scenes of {size} px, seed {seed})"

    def __len__(self) -> int:
        return self.num_scenes

    def __getitem__(self, index: int) -> tuple[Image.Image, np.ndarray]:
        if not 0 <= index < self.num_scenes:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, _SPLITS.index(self.split), index])
        canvas = np.zeros((self.size, self.size), np.uint8)
        mask = np.zeros((self.size, self.size), np.int64)
        for _ in range(int(rng.integers(self.items[0], self.items[1] + 1))):
            item = int(rng.integers(len(self.source.targets)))
            side = max(4, int(round(rng.uniform(*self.scale) * self.size)))
            pixels = np.asarray(Image.fromarray(self.source.images[item]).resize((side, side), Image.Resampling.BICUBIC))
            top, left = (int(v) for v in rng.integers(0, self.size - side + 1, size=2))
            covered = pixels > self.threshold
            canvas[top:top + side, left:left + side][covered] = pixels[covered]
            mask[top:top + side, left:left + side][covered] = self.source.targets[item] + 1
        return Image.fromarray(canvas).convert("RGB"), mask


def build_segmentation_dataset(spec: str, split: str = "train") -> Dataset:
    """``fashion-mnist-scenes`` (built in), or a folder in the ADE20K or Pascal VOC layout."""
    _check_split(split)
    if spec == SCENES_SPEC:
        return FashionMNISTScenes(split)
    root = Path(spec)
    if not root.is_dir():
        raise FileNotFoundError(f"segmentation data not found: {spec} (a folder in the ADE20K or Pascal VOC layout, "
                                f"or {SCENES_SPEC})")
    if (root / "images").is_dir() and (root / "annotations").is_dir():
        return ADE20K(root, split)
    if (voc_root(root) / "JPEGImages").is_dir():
        return PascalVOC(root, split)
    raise ValueError(f"{root} is neither in the ADE20K layout (images/, annotations/) nor in the Pascal VOC "
                     "layout (JPEGImages/, SegmentationClass/, ImageSets/Segmentation/)")
