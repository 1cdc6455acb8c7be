"""The Python API, exported by ``ibot``: a backbone from a checkpoint, its [CLS] or patch features
for images, and weighted k-NN on them (the same code as ``ibot knn``)::

    import ibot

    backbone = ibot.load_backbone("runs/cycle/pretrain/checkpoint.safetensors")
    train_x, train_y = ibot.extract_features(backbone, "fashion-mnist:subset", split="train")
    test_x, test_y = ibot.extract_features(backbone, "fashion-mnist:subset", split="val")
    print(ibot.knn_classify(train_x, train_y, test_x, test_y, ks=(10, 20)))
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from ibot.eval.knn import knn_classify
from ibot.models.tokens import patch_tokens

__all__ = ["extract_features", "extract_patch_features", "knn_classify", "load_backbone", "patch_tokens"]

ImageInput = str | Path | Image.Image


def load_backbone(path: str | Path, arch: str | None = None, patch_size: int | None = None, key: str = "teacher",
                  **overrides: Any) -> nn.Module:
    """The ``key`` (teacher or student) backbone of a checkpoint, in eval mode.

    Our ``.safetensors`` checkpoints hold their architecture, sizes and crop size: nothing else is
    needed. An official ``.pth`` file needs ``arch`` (``vit_small``, ``vit_base``, ``vit_large``,
    ``swin_tiny``; the patch size is read from the weights) and, for non-standard sizes, the
    ``overrides`` of :func:`ibot.models.build_backbone` (``depth``, ``embed_dim``, ...).
    """
    from ibot.eval.checkpoints import load_backbone as load

    return load(path, key=key, arch=arch, patch_size=patch_size, **overrides).backbone


class _ImageList(Dataset):
    """``(RGB image, -1)`` for a list of image files or PIL images."""

    def __init__(self, images: Sequence[ImageInput]) -> None:
        self.images = list(images)
        for image in self.images:
            if not isinstance(image, Image.Image) and not Path(image).is_file():
                raise FileNotFoundError(f"image not found: {image}")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        from ibot.image_io import load_rgb, to_rgb

        image = self.images[index]
        return (to_rgb(image) if isinstance(image, Image.Image) else load_rgb(image)), -1


def trained_image_size(backbone: nn.Module) -> int:
    """The image side ``backbone`` was built for (its patch embedding's ``img_size``)."""
    size = getattr(getattr(backbone, "patch_embed", None), "img_size", None)
    if size is None:
        raise ValueError(f"{type(backbone).__name__} does not record its image size: pass image_size=")
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def _extract(name: str, desc: str, forward: Callable[[torch.Tensor], torch.Tensor], backbone: nn.Module,
             images: str | Path | Sequence[ImageInput], split: str, image_size: int | None, batch_size: int,
             num_workers: int, device: torch.device | str, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``forward`` (on ``backbone``, moved to ``device``) over the images of a dataset spec or a list,
    through the evaluation transform: what :func:`extract_features` and
    :func:`extract_patch_features` share. ``name`` is the caller's, for its messages; ``desc`` labels
    the progress bar."""
    from ibot.data.datasets import build_dataset, format_skipped
    from ibot.eval.features import EvalDataset, evaluation_transform
    from ibot.eval.features import extract_features as extract

    is_list = not isinstance(images, (str, Path))
    if is_list and len(images) == 0:
        raise ValueError(f"{name}: the list of images is empty")
    base = _ImageList(images) if is_list else build_dataset(str(images), split=split)
    dataset = EvalDataset(base, evaluation_transform(image_size or trained_image_size(backbone)))
    backbone.to(device).eval()
    features, labels, skipped = extract(forward, dataset, batch_size=batch_size, num_workers=num_workers,
                                        device=device, desc=desc, progress=progress)
    if skipped and is_list:
        raise ValueError(f"unreadable image: {skipped[0]}")
    if skipped:
        warnings.warn(format_skipped(len(skipped), skipped[0]), stacklevel=3)
    return features, labels


def extract_features(backbone: nn.Module, images: str | Path | Sequence[ImageInput], split: str = "train",
                     image_size: int | None = None, batch_size: int = 64, num_workers: int = 0,
                     device: torch.device | str = "cpu", progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(features, labels)``: the backbone's normed [CLS] features (N, D), float32 on the CPU, and
    the labels (N,) of ``images`` after the evaluation transform of every protocol.

    ``images`` is a dataset as ``--data`` takes it (an ImageFolder path ``PATH/<class>/*.jpg`` or
    ``PATH/<split>/<class>/*.jpg``, ``fashion-mnist``, ``cifar10:PATH``, ...; ``split`` picks
    ``train``, ``val`` or ``test``), whose unreadable images are skipped with a warning; or a list
    of image files or PIL images, with labels -1, where an unreadable image is an error, so that
    row i is image i. ``image_size`` defaults to the size the backbone was trained on. The
    backbone is moved to ``device``.
    """
    return _extract("extract_features", "features", backbone, backbone, images, split, image_size, batch_size,
                    num_workers, device, progress)


def extract_patch_features(backbone: nn.Module, images: str | Path | Sequence[ImageInput], split: str = "train",
                           image_size: int | None = None, n_last_blocks: int = 1, batch_size: int = 64,
                           num_workers: int = 0, device: torch.device | str = "cpu",
                           progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(features, labels)`` as :func:`extract_features` takes and gives them, but the features
    are the patch tokens (N, h, w, D * n_last_blocks) of :func:`ibot.models.tokens.patch_tokens`:
    the last ``n_last_blocks`` blocks' tokens on the ``image_size / mask_stride`` grid, each
    through the final norm, concatenated along the last axis."""
    from ibot.models.tokens import check_dense_size, patch_tokens

    size = image_size or trained_image_size(backbone)
    check_dense_size(backbone, size, size)
    def forward(x: torch.Tensor) -> torch.Tensor:
        return patch_tokens(backbone, x, n_last_blocks)

    return _extract("extract_patch_features", "patch features", forward, backbone, images, split, size, batch_size,
                    num_workers, device, progress)
