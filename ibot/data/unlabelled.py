"""Unlabelled images for pre-training: a folder of images without class folders, or a text file
listing image paths. Every image has label -1 and the dataset has no ``classes``.

- A folder whose image files lie directly in it (not only in class sub-folders) is unlabelled:
  every image under it, recursively, is a sample. A tree whose images are all in sub-folders stays
  an ImageFolder of classes.
- A list file holds one image path a line, relative paths resolved against the file's folder;
  blank lines and lines starting with ``#`` are ignored. A listed file that does not exist is a
  one-line error naming it and its line.

Images are decoded on load with :func:`ibot.image_io.load_rgb`, so an unreadable one raises
:class:`ibot.image_io.CorruptImageError` and is skipped by the callers, as in an ImageFolder.
"""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS

from ibot.image_io import load_rgb

__all__ = ["UnlabelledImages", "holds_images", "image_list", "unlabelled_folder"]

UNLABELLED = -1


class UnlabelledImages(Dataset):
    """``(PIL RGB image, -1)`` for a list of image files; ``root`` is the folder or list file they
    came from, ``classes`` is empty and ``samples`` / ``targets`` are as an ImageFolder's."""

    def __init__(self, paths: list[str], root: str | Path) -> None:
        self.root = str(root)
        self.classes: list[str] = []
        self.samples = [(path, UNLABELLED) for path in paths]
        self.targets = [UNLABELLED] * len(paths)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        path, label = self.samples[index]
        return load_rgb(path), label


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def holds_images(folder: Path) -> bool:
    """Whether image files lie directly in ``folder`` (then it is unlabelled, not a class tree)."""
    try:
        with os.scandir(folder) as entries:
            return any(_is_image(e.name) and e.is_file() for e in entries)
    except OSError:
        return False


def unlabelled_folder(folder: Path) -> UnlabelledImages:
    """Every image file under ``folder``, recursively (symbolic links followed), in sorted order."""
    paths = []
    for parent, dirs, files in os.walk(folder, followlinks=True):
        dirs.sort()
        paths += [os.path.join(parent, name) for name in sorted(files) if _is_image(name)]
    if not paths:
        raise FileNotFoundError(f"no image files in {folder}")
    return UnlabelledImages(paths, folder)


def image_list(path: Path) -> UnlabelledImages:
    """The images a list file names (see the module docstring)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise ValueError(f"{path} is a file but not a text list of image paths (one a line)") from None
    paths = []
    for number, line in enumerate(lines, start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        image = Path(entry).expanduser()
        image = image if image.is_absolute() else path.parent / image
        if not image.is_file():
            raise FileNotFoundError(f"{path}, line {number}: image not found: {entry}"
                                    + (f" ({image})" if str(image) != entry else ""))
        paths.append(str(image))
    if not paths:
        raise FileNotFoundError(f"{path} lists no images (one path a line; blank and # lines are ignored)")
    return UnlabelledImages(paths, path)
