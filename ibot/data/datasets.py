"""Datasets from a spec string, and skipping of unreadable images.

``build_dataset(spec, split)`` returns a dataset of ``(PIL RGB image, int label)`` with a
``classes`` attribute. Specs:

- ``fashion-mnist`` (or ``fashion-mnist:FOLDER`` / ``fashion-mnist:subset``): see
  :mod:`ibot.data.fashion_mnist`.
- ``cifar10:PATH``, ``cifar100:PATH``, ``stl10:PATH``: torchvision's readers, never downloading;
  PATH is the folder holding ``cifar-10-batches-py`` / ``cifar-100-python`` / ``stl10_binary``
  (or that folder itself).
- a folder: an ImageFolder tree (``class/image.ext``), in the ImageNet layout
  ``PATH/train``, ``PATH/val`` (``val`` and ``test`` stand in for each other). A split folder
  itself (``PATH/train``, as the official scripts pass it) finds its siblings: its val split is
  ``PATH/val``. A tree of class folders with no split folders is a train split only: asking it
  for val or test is an error (evaluating on it would score the training images), unless a
  :class:`Holdout` is given.
  A folder whose image files lie directly in it (not only in class folders; as ``PATH`` or as a
  split folder) holds unlabelled images: label -1, no classes (:mod:`ibot.data.unlabelled`).
- a text file listing image paths: unlabelled images, a train split only.

Split names: ``train``, ``val`` (= ``test`` where a dataset has no validation split), ``test``;
STL-10 also takes ``unlabeled`` and ``train+unlabeled`` (label -1 for unlabeled images). With a
:class:`Holdout`, val and test are a seeded share of the train split and train is the rest.

Images of an ImageFolder are decoded on load; one that cannot be decoded raises
:class:`CorruptImageError`; a class folder with no image files is skipped with a warning naming
it. :func:`safe_getitem` and :func:`collate_skip_corrupt` let callers skip unreadable images,
and :func:`format_skipped` reports them.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset, Subset, default_collate
from torchvision import datasets as tv_datasets

from ibot.data.fashion_mnist import FashionMNIST
from ibot.data.unlabelled import holds_images, image_list, unlabelled_folder
from ibot.image_io import CorruptImageError, format_skipped, load_rgb

__all__ = [
    "CorruptImageError",
    "Holdout",
    "HoldoutSplit",
    "build_dataset",
    "collate_skip_corrupt",
    "dataset_labels",
    "format_skipped",
    "load_rgb",
    "safe_getitem",
    "val_split_problem",
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


def collate_skip_corrupt(
    items: Sequence[tuple[Any | None, str | None]],
    collate: Callable[[list[Any]], Any] = default_collate,
) -> tuple[Any | None, list[str]]:
    """Collate the readable items of a batch of ``(item, None)`` / ``(None, path)`` pairs
    (:func:`safe_getitem`'s results).

    Returns ``(batch, skipped_paths)``; ``batch`` is None when every image was unreadable.
    """
    kept = [item for item, skipped in items if skipped is None]
    skipped = [path for _, path in items if path is not None]
    return (collate(kept) if kept else None), skipped


@dataclass(frozen=True)
class Holdout:
    """Evaluate on a seeded share of the train split: ``fraction`` of its images (a uniform draw
    seeded by ``seed``) become the val / test split, the rest the train split."""

    fraction: float
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.fraction < 1:
            raise ValueError(f"--holdout must be a fraction in (0, 1), got {self.fraction}")

    def describe(self) -> str:
        return f"{self.fraction:.0%} of the train split held out as val (seed {self.seed})"


class HoldoutSplit(Subset):
    """One side of a :class:`Holdout` of a dataset; keeps its ``classes``, says what it is."""

    def __init__(self, dataset: Dataset, indices: list[int], description: str) -> None:
        super().__init__(dataset, indices)
        self.classes = dataset.classes
        self.description = description


def _holdout_split(train: Dataset, split: str, holdout: Holdout) -> HoldoutSplit:
    n = len(train)
    if n < 2:
        raise ValueError(f"--holdout needs at least 2 training images, found {n}")
    num_held = min(max(round(holdout.fraction * n), 1), n - 1)
    order = np.random.default_rng(holdout.seed).permutation(n)
    held = order[:num_held] if split in ("val", "test") else order[num_held:]
    return HoldoutSplit(train, sorted(int(i) for i in held), holdout.describe())


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


def _split_folder(root: Path, split: str) -> Path:
    """The folder of ``split`` in the ImageFolder tree ``root`` (see the module docstring)."""
    hint = ("" if split == "train" else
            " (or give the evaluations --holdout FRACTION to hold out a share of the train split)")
    if any((root / name).is_dir() for name in SPLITS):
        layout = root  # ROOT holding train/, val/, ...
    elif root.name in SPLITS:
        layout = root.parent  # ROOT/train given: its siblings are the other splits
    elif split == "train":
        return root  # class folders directly under ROOT: the train split
    elif holds_images(root):
        raise FileNotFoundError(f"{root} has no val/ or test/ folder: a folder of unlabelled images (image files "
                                f"directly in it) is a train split only, with no labels to evaluate on")
    else:
        raise FileNotFoundError(
            f"{root} has no val/ or test/ folder: a tree of class folders is a train split only, and "
            f"evaluating on it would score the training images; use a folder holding train/ and val/{hint}")
    candidates = [layout / name for name in SPLIT_FOLDERS[split]]
    folder = next((c for c in candidates if c.is_dir()), None)
    if folder is None:
        tried = " or ".join(f"{c.name}/" for c in candidates)
        beside = f" (beside {root})" if root != layout else ""
        raise FileNotFoundError(f"no {tried} folder for split {split!r} in {layout}{beside}{hint}")
    return folder


class _ImageFolder(tv_datasets.ImageFolder):
    """ImageFolder read with :func:`load_rgb`, keeping empty class folders; ``classes`` given
    (a val split takes its train split's) make a label mean the same class in every split."""

    def __init__(self, folder: Path, classes: list[str] | None = None) -> None:
        self._train_classes = classes
        super().__init__(str(folder), loader=load_rgb, allow_empty=True)

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        found, class_to_idx = super().find_classes(directory)
        if self._train_classes is None:
            return found, class_to_idx
        unknown = sorted(set(found) - set(self._train_classes))
        if unknown:
            raise ValueError(f"{directory}: class folder{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
                             "not in the train split, whose labels this split must share")
        return list(self._train_classes), {name: i for i, name in enumerate(self._train_classes)}


def _image_folder(path: str, split: str) -> Dataset:
    _check_split(split, "an image folder")
    root = Path(path).expanduser()
    if root.is_file():
        if split != "train":
            raise FileNotFoundError(f"{root} is a list of unlabelled images: a train split only, with no labels to "
                                    f"evaluate on")
        return image_list(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    folder = _split_folder(root, split)
    if holds_images(folder):
        return unlabelled_folder(folder)
    train_classes = None
    if split != "train":
        try:
            train_classes = tv_datasets.folder.find_classes(str(_split_folder(root, "train")))[0]
        except FileNotFoundError:  # no train split: this split's own class folders
            pass
    try:
        dataset = _ImageFolder(folder, train_classes)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"no usable images in {folder}: {e}") from None
    if not dataset.samples:
        raise FileNotFoundError(f"no usable images in {folder}: no image files in its class folders")
    present = {dataset.classes[t] for t in set(dataset.targets)}
    empty = [name for name in dataset.classes if name not in present and (folder / name).is_dir()]
    if empty:
        warnings.warn(f"{folder}: skipping {len(empty)} class folder{'s' if len(empty) > 1 else ''} "
                      f"without image files: {', '.join(empty)}", stacklevel=3)
    return dataset


def build_dataset(spec: str, split: str = "train", holdout: Holdout | None = None) -> Dataset:
    """A dataset of ``(PIL RGB image, int label)`` for ``spec`` (see the module docstring); with
    ``holdout``, val / test are a seeded share of the train split and train is the rest."""
    if holdout is not None:
        _check_split(split, f"--holdout on {spec}")
        return _holdout_split(build_dataset(spec, "train"), split, holdout)
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


def dataset_labels(dataset: Dataset) -> np.ndarray:
    """The label of every image of a :func:`build_dataset` dataset: its ``targets`` or ``labels``
    (STL-10) when it has them, else read item by item (decoding the images)."""
    for name in ("targets", "labels"):
        labels = getattr(dataset, name, None)
        if labels is not None and len(labels) == len(dataset):
            return np.asarray(labels, dtype=np.int64)
    if isinstance(dataset, Subset):
        return dataset_labels(dataset.dataset)[np.asarray(dataset.indices, dtype=np.int64)]
    return np.asarray([dataset[i][1] for i in range(len(dataset))], dtype=np.int64)


def val_split_problem(spec: str) -> str | None:
    """Why ``spec`` has no labelled val split for a k-NN check (one line), or None when it has one.

    Pre-training calls it before the first step, so that its k-NN checks (end of run,
    ``--eval-every``) are known to be possible, instead of failing after the training."""
    try:
        val = build_dataset(spec, "val")
    except (FileNotFoundError, ValueError) as e:
        return str(e).splitlines()[0]
    where = getattr(val, "root", spec)
    if not getattr(val, "classes", ()):
        return f"the val split of {spec} ({where}) is unlabelled: no labels to score"
    if len(val.classes) < 2:
        return f"the val split of {spec} ({where}) has one class: no labels to score"
    return None
