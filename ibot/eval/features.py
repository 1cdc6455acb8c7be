"""The one feature-extraction path every evaluation uses: frozen backbone, batches, no grad,
and an on-disk cache so that k-NN, clustering, semi-supervised and linear runs on the same
checkpoint extract each split once."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ibot.data.datasets import Holdout, build_dataset
from ibot.data.views import EvalDataset, collate_skip_none
from ibot.distributed import any_over_processes, current
from ibot.eval.shards import gather_batch_objects, gather_batches, process_batches
from ibot.files import replaced_atomically
from ibot.models.tokens import patch_tokens
from ibot.progress import progress_bar

# one vector an image for k-NN: the [CLS] token (the official protocol) or the patch-token grid
IMAGE_FEATURES = ("cls", "patch-grid")


class PatchGrid(nn.Module):
    """``images -> the last block's patch tokens in raster order, flattened: (B, h * w * D)``.

    Nothing is pooled, so where each patch lies stays in the vector: on small centred images
    (Fashion-MNIST, a 4 x 4 grid at patch 7) it keeps what the [CLS] token's crop invariance
    averages away. Its width grows with the grid (ViT-S/16 at 224 px: 75,264 values an image),
    so it suits small images and small datasets."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return patch_tokens(self.backbone, images).flatten(1)


def image_features(backbone: nn.Module, kind: str) -> nn.Module:
    """The forward that gives ``kind`` (one of :data:`IMAGE_FEATURES`): the backbone itself for
    ``cls`` (its output is the normed [CLS]), :class:`PatchGrid` for ``patch-grid``."""
    if kind not in IMAGE_FEATURES:
        raise ValueError(f"features must be one of {', '.join(IMAGE_FEATURES)}, got {kind!r}")
    return backbone if kind == "cls" else PatchGrid(backbone)


@torch.no_grad()
def extract_features(forward: Callable[[torch.Tensor], torch.Tensor] | nn.Module, dataset: EvalDataset,
                     batch_size: int = 256, num_workers: int = 0, device: torch.device | str = "cpu",
                     desc: str = "features", progress: bool = True,
                     sharded: bool = False) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Run ``forward`` over ``dataset``; returns features (N, D) on the CPU in float32, labels (N,)
    and the messages of skipped unreadable images. ``sharded``: every process of the process group
    takes part (each runs its share of the batches, :mod:`ibot.eval.shards`) and gets the whole
    result, the same as one process gets."""
    loader = DataLoader(dataset, batch_sampler=process_batches(len(dataset), batch_size, sharded),
                        num_workers=num_workers, collate_fn=collate_skip_none,
                        pin_memory=torch.device(device).type == "cuda")
    features, labels, skipped = [], [], []  # one entry per batch (None: no readable image in it)
    for images, targets, why in progress_bar(loader, desc=desc, unit="batch", disable=not progress, leave=False):
        skipped.append(why)
        if len(images) == 0:  # every image of this batch was unreadable
            features.append(None)
            labels.append(None)
            continue
        features.append(forward(images.to(device, non_blocking=True)).float().cpu())
        labels.append(targets)
    features = [f for f in gather_batches(features, sharded) if f is not None]
    labels = [y for y in gather_batches(labels, sharded) if y is not None]
    skipped = [why for batch in gather_batch_objects(skipped, sharded) for why in batch]
    if not features:
        raise ValueError(f"no readable image in the dataset for {desc}")
    return torch.cat(features), torch.cat(labels), skipped


class FeatureCache:
    """Extracted features on disk, one file per ``parts`` (checkpoint identity, dataset, split,
    transform, feature kind): ``<directory>/<sha256 of parts>.pt``. ``directory=None`` disables it."""

    def __init__(self, directory: str | Path | None) -> None:
        self.directory = Path(directory) if directory is not None else None

    def path(self, parts: dict[str, Any]) -> Path | None:
        if self.directory is None:
            return None
        digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
        return self.directory / f"{digest[:24]}.pt"

    def load_or_extract(self, parts: dict[str, Any], forward: Callable[[torch.Tensor], torch.Tensor] | nn.Module,
                        dataset: EvalDataset, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """Cached ``(features, labels, skipped)`` for ``parts``, else :func:`extract_features`.
        With ``sharded=True`` the processes extract together unless every one finds the file, and
        rank 0 alone writes it."""
        path = self.path(parts)
        stored = json.loads(json.dumps(parts, default=str))  # as the file holds it
        saved: dict[str, Any] = {}
        if path is not None and path.is_file():
            try:
                saved = torch.load(path, map_location="cpu", weights_only=True)
            except Exception:  # an unreadable cache file is extracted again and replaced
                saved = {}
        hit = saved.get("parts") == stored
        sharded = kwargs.get("sharded", False)
        if sharded:  # all extract together, or none
            hit = not any_over_processes(torch.tensor(not hit))
        if hit:
            return saved["features"], saved["labels"], saved["skipped"]
        features, labels, skipped = extract_features(forward, dataset, **kwargs)
        if path is not None and (not sharded or current().is_main):
            with replaced_atomically(path) as tmp:  # never half a cache file
                torch.save({"features": features, "labels": labels, "skipped": skipped, "parts": stored}, tmp)
        return features, labels, skipped


def split_features(forward: Callable[[torch.Tensor], torch.Tensor] | nn.Module, identity: dict[str, Any],
                   kind: str, data: str, split: str, transform: Callable, cache: FeatureCache | None = None,
                   holdout: Holdout | None = None, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Features of one split of dataset ``data`` (a :func:`ibot.data.build_dataset` spec, with its
    ``holdout`` if any), through ``cache`` when given. ``identity`` names the network (its checkpoint
    path and mtime), ``kind`` the feature recipe (``cls``, ``linear-n4-avgpool0``, ...); both, the
    dataset spec, the folder it resolved to, its size, the split, the hold-out and the transform key
    the cache."""
    base = build_dataset(data, split=split, holdout=holdout)
    dataset = EvalDataset(base, transform)
    parts = {**identity, "kind": kind, "data": data, "split": split, "folder": getattr(base, "root", None),
             "num_images": len(base), "transform": repr(transform)}
    if holdout is not None:
        parts["holdout"] = [holdout.fraction, holdout.seed]
    kwargs.setdefault("desc", f"{kind} features {split}")
    return (cache or FeatureCache(None)).load_or_extract(parts, forward, dataset, **kwargs)


def evaluation_transform(image_size: int, crop_pct: float | None = None) -> Callable:
    """The evaluation transform for a network trained on ``image_size`` crops: resize to
    ``image_size / crop_pct`` and center-crop, ``crop_pct`` by default from
    :func:`ibot.data.transforms.default_crop_pct` (0.875, or 1 under 64 px)."""
    from ibot.data.transforms import default_crop_pct, eval_transform

    return eval_transform(image_size, crop_pct=default_crop_pct(image_size) if crop_pct is None else crop_pct)
