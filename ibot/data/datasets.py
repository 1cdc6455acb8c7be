"""Datasets from a spec string, and skipping of unreadable images.

``build_dataset(spec, split)`` returns a dataset of ``(PIL RGB image, int label)`` with a
``classes`` attribute. Specs:

- ``fashion-mnist`` (or ``fashion-mnist:FOLDER`` / ``fashion-mnist:subset``): see
  :mod:`ibot.data.fashion_mnist`.
- ``cifar10:PATH``, ``cifar100:PATH``, ``stl10:PATH``: torchvision's readers, never downloading;
  PATH is the folder holding ``cifar-10-batches-py`` / ``cifar-100-python`` / ``stl10_binary``
  (or that folder itself).
- anything else: an ImageFolder tree (``class/image.ext``). If ``PATH/<split>`` exists it is used
  (ImageNet layout; ``val`` and ``test`` stand in for each other), else PATH itself.

Split names: ``train``, ``val`` (= ``test`` where a dataset has no validation split), ``test``;
STL-10 also takes ``unlabeled`` and ``train+unlabeled`` (label -1 for unlabeled images).

Images of an ImageFolder are decoded on load; one that cannot be decoded raises
:class:`CorruptImageError`. :func:`safe_getitem`, :class:`SkipCorrupt` and
:func:`collate_skip_corrupt` let callers skip such images and report them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset, default_collate
from torchvision import datasets as tv_datasets

from ibot.data.fashion_mnist import FashionMNIST
from ibot.image_io import CorruptImageError, load_rgb

__all__ = [
    "CorruptImageError",
    "SkipCorrupt",
    "build_dataset",
    "collate_skip_corrupt",
    "format_skipped",
    "load_rgb",
    "safe_getitem",
]

SPLITS = ("train", "val", "test")
STL10_EXTRA_SPLITS = ("unlabeled", "train+unlabeled")
# spec prefix -> (torchvision class, folder it expects under PATH, display name)
TORCHVISION_DATASETS = {
    "cifar10": (tv_datasets.CIFAR10, "cifar-10-batches-py", "CIFAR-10"),
    "cifar100": (tv_datasets.CIFAR100, "cifar-100-python", "CIFAR-100"),
    "stl10": (tv_datasets.STL10, "stl10_binary", "STL-10"),
}
# requested split -> sub-folders tried in an ImageFolder tree, in order
SPLIT_FOLDERS = {"train": ("train",), "val": ("val", "test"), "test": ("test", "val")}


def safe_getitem(dataset: Dataset, index: int) -> tuple[Any | None, str | None]:
    """``(dataset[index], None)``, or ``(None, path)`` when that image is unreadable."""
    try:
        return dataset[index], None
    except CorruptImageError as e:
        return None, e.path


class SkipCorrupt(Dataset):
    """Wraps a dataset so that item ``i`` is ``safe_getitem(dataset, i)``.

    Use with ``DataLoader(..., collate_fn=collate_skip_corrupt)``.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any | None, str | None]:
        return safe_getitem(self.dataset, index)


def collate_skip_corrupt(
    items: Sequence[tuple[Any | None, str | None]],
    collate: Callable[[list[Any]], Any] = default_collate,
) -> tuple[Any | None, list[str]]:
    """Collate the readable items of a :class:`SkipCorrupt` batch.

    Returns ``(batch, skipped_paths)``; ``batch`` is None when every image was unreadable.
    """
    kept = [item for item, skipped in items if skipped is None]
    skipped = [path for _, path in items if path is not None]
    return (collate(kept) if kept else None), skipped


def format_skipped(n_skipped: int, example: str | None) -> str:
    """The one-line report: ``skipped N unreadable images (e.g. PATH)``."""
    noun = "image" if n_skipped == 1 else "images"
    return f"skipped {n_skipped} unreadable {noun}" + (f" (e.g. {example})" if example else "")


def _check_split(split: str, dataset: str, extra: tuple[str, ...] = ()) -> None:
    if split not in SPLITS + extra:
        raise ValueError(f"unknown split {split!r} for {dataset}; expected one of {SPLITS + extra}")


def _torchvision_dataset(kind: str, path: str, split: str) -> Dataset:
    cls, base_folder, name = TORCHVISION_DATASETS[kind]
    _check_split(split, name, STL10_EXTRA_SPLITS if kind == "stl10" else ())
    root = Path(path).expanduser()
    if root.name == base_folder:  # the extracted folder itself was given
        root = root.parent
    if not (root / base_folder).is_dir():
        raise FileNotFoundError(
            f"{name} files not found: expected the folder {root / base_folder} (no download)"
        )
    try:
        if kind == "stl10":
            return cls(str(root), split="test" if split == "val" else split, download=False)
        return cls(str(root), train=split == "train", download=False)
    except (RuntimeError, OSError, ValueError) as e:
        raise ValueError(f"cannot read {name} from {root / base_folder}: {e}") from None


def _image_folder(path: str, split: str) -> Dataset:
    _check_split(split, "an image folder")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    candidates = [root / name for name in SPLIT_FOLDERS[split]]
    folder = next((c for c in candidates if c.is_dir()), None)
    if folder is None:
        if any((root / name).is_dir() for name in SPLITS):
            tried = " or ".join(f"{c.name}/" for c in candidates)
            raise FileNotFoundError(f"no {tried} folder for split {split!r} in {root}")
        folder = root
    try:
        return tv_datasets.ImageFolder(str(folder), loader=load_rgb)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"no usable images in {folder}: {e}") from None


def build_dataset(spec: str, split: str = "train") -> Dataset:
    """A dataset of ``(PIL RGB image, int label)`` for ``spec`` (see the module docstring)."""
    kind, sep, path = spec.partition(":")
    if kind == "fashion-mnist":
        _check_split(split, "fashion-mnist")
        return FashionMNIST("train" if split == "train" else "test", root=path or None)
    if sep and kind in TORCHVISION_DATASETS:
        if not path:
            raise ValueError(f"dataset spec {spec!r} needs a folder: {kind}:PATH")
        return _torchvision_dataset(kind, path, split)
    if not spec:
        raise ValueError("empty dataset spec")
    return _image_folder(spec, split)
