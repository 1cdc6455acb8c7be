"""Helpers for the trainer tests: a few generated images and a 1-block ViT config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ibot.config import resolve_config
from tests.tiny import TINY_CROP_OVERRIDES, TINY_MODEL_OVERRIDES


def make_image_folder(root: Path, n_per_class: int = 8, classes: int = 2, size: int = 20, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            pixels[..., c % 3] = 255 // (c + 1)
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.png")
    return root


def tiny_config(output_dir: Path, data: str, *extra: str):
    return resolve_config("cpu", overrides=[
        f"data.data={data}", f"run.output_dir={output_dir}", "run.progress=false", "run.knn_eval=false",
        *TINY_MODEL_OVERRIDES, *TINY_CROP_OVERRIDES, "data.num_workers=0",
        "optim.batch_size_per_device=4", "optim.epochs=2", "optim.warmup_epochs=1",
        "loss.warmup_teacher_temp_epochs=1", "run.log_every_steps=1", *extra])

