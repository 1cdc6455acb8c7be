"""A tiny pre-training checkpoint and image folder for the evaluation tests."""

from __future__ import annotations

from pathlib import Path

from tests.train.helpers import make_image_folder, tiny_config


def make_tiny_run(root: Path) -> tuple[Path, Path]:
    """``(checkpoint, image folder)``: ``train/`` of 3 classes x 8 images of 20 px, ``val/`` of
    3 x 4 other images, a 1-block ViT after one step. Made once under ``root`` and reused (tests
    must not write into it)."""
    from ibot.train.trainer import Pretrainer

    checkpoint, folder = root / "pretrain" / "checkpoint.safetensors", root / "images"
    if not checkpoint.is_file():
        make_image_folder(folder / "train", n_per_class=8, classes=3, size=20)
        make_image_folder(folder / "val", n_per_class=4, classes=3, size=20, seed=1)
        Pretrainer(tiny_config(root / "pretrain", folder, "run.max_steps=1")).fit()
    return checkpoint, folder


def session_tiny_run(tmp_path_factory) -> tuple[Path, Path]:
    """The tiny run of this test session, shared by every test directory."""
    return make_tiny_run(tmp_path_factory.getbasetemp() / "tiny_run")
