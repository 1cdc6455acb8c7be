"""Options and set-up shared by the evaluation sub-commands (``knn``, ``linear``, ``finetune``,
``cluster``, ``semisup``, ``segment``): which checkpoint, which data, where results and cached
features go, and how they run under ``torchrun`` (:func:`processes`)."""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ibot.data.datasets import Holdout

from ibot.commands import add_output_dir
from ibot.commands._config_args import add_dataclass_arguments
from ibot.files import write_text_atomically


@dataclass
class ModelOptions:
    """Which network of which checkpoint an evaluation reads."""

    checkpoint: str | None = field(default=None, metadata=dict(
        flags=("-c",), required=True, metavar="PATH",
        help="our .safetensors pre-training checkpoint, or an official .pth file (then give --arch)"))
    key: str = field(default="teacher", metadata=dict(choices=("teacher", "student"),
                                                      help="which network of the checkpoint"))
    arch: str | None = field(default=None, metadata=dict(
        help="architecture of an official checkpoint (vit_small, vit_base, vit_large, swin_tiny); ours record it"))
    patch_size: int | None = None  # patch size of an official checkpoint (default: read from its weights)


@dataclass
class DataOptions:
    """The images an evaluation reads and how: the data group of every evaluation command."""

    data: str | None = field(default=None, metadata=dict(
        help="fashion-mnist, cifar10:PATH, cifar100:PATH, stl10:PATH or an ImageFolder path "
             "(default: the checkpoint's pre-training data, else fashion-mnist)"))
    image_size: int | None = None  # evaluation image size (default: the pre-training crop size, 224 for official checkpoints)
    crop_pct: float | None = None  # resize to image-size / crop-pct, then center-crop (default: 0.875, or 1 under 64 px)
    holdout: float | None = field(default=None, metadata=dict(
        metavar="FRACTION", help="evaluate on this share of the train split (drawn with --holdout-seed), the rest "
                                 "being the train side; for data with no val/ or test/ folder (a tree of class folders)"))
    holdout_seed: int | None = field(default=None, metadata=dict(
        metavar="SEED", help="seed of the --holdout draw (default: 0)"))
    batch_size: int = 256  # images per forward pass
    num_workers: int = 2  # data-loading processes
    device: str = "auto"  # auto, cpu or cuda


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    add_dataclass_arguments(p.add_argument_group("model"), ModelOptions)


def add_data_arguments(p: argparse.ArgumentParser, config: Any = None, features: bool = True) -> list[str]:
    """The data group (:class:`DataOptions`); with ``config``, a dataclass config that holds some of
    its options (fine-tuning's batch size, ...), those default to None and show ``config``'s
    defaults (see :func:`ibot.commands._config_args.set_given`). ``features``: also the output
    group of the feature-based evaluations. Returns the data group's option names."""
    names = add_dataclass_arguments(p.add_argument_group("data"), DataOptions, defaults=config,
                                    given_only=config is not None)
    if features:
        o = p.add_argument_group("output")
        add_output_dir(o, "where the results JSON goes (default: CHECKPOINT_FOLDER/eval)")
        o.add_argument("--cache-dir", help="where extracted features are cached (default: OUTPUT_DIR/features)")
        o.add_argument("--no-cache", action="store_true", help="extract features again and keep nothing on disk")
        o.add_argument("--no-progress", action="store_true", help="no progress bars")
    return names


def holdout(args: argparse.Namespace) -> Holdout | None:
    """The :class:`ibot.data.datasets.Holdout` asked for with ``--holdout``, or None."""
    from ibot.data.datasets import Holdout

    if args.holdout is None:
        if args.holdout_seed is not None:
            raise ValueError("--holdout-seed needs --holdout FRACTION")
        return None
    return Holdout(args.holdout, args.holdout_seed or 0)


def holdout_info(held: Holdout | None) -> dict[str, Any]:
    """The hold-out of a run as the results JSON records it (None: the dataset's own val split)."""
    return {"holdout": None if held is None else {"fraction": held.fraction, "seed": held.seed,
                                                  "description": held.describe()}}


def load_model(args: argparse.Namespace, **overrides: Any):
    from ibot.eval.checkpoints import load_backbone

    return load_backbone(args.checkpoint, key=args.key, arch=args.arch, patch_size=args.patch_size, **overrides)


def data_spec(args: argparse.Namespace, loaded) -> str:
    return args.data or loaded.data or "fashion-mnist"


def image_size(args: argparse.Namespace, loaded) -> int:
    size = args.image_size or loaded.image_size
    if size < 1:
        raise ValueError(f"--image-size must be positive, got {size}")
    return size


def output_dir(args: argparse.Namespace) -> Path:
    return Path(args.output_dir) if args.output_dir else Path(args.checkpoint).resolve().parent / "eval"


def feature_cache(args: argparse.Namespace):
    from ibot.eval.features import FeatureCache

    if args.no_cache:
        return FeatureCache(None)
    return FeatureCache(args.cache_dir or output_dir(args) / "features")


def processes(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """An evaluation command that runs alone or as one of ``torchrun``'s processes: the process
    group is joined where the device is chosen (:func:`device`), processes other than rank 0 print
    nothing on stdout and show no progress bars, and a group the command joined is left at its end."""

    @functools.wraps(run)
    def wrapped(args: argparse.Namespace) -> int:
        from ibot.distributed import cleanup, env_rank

        joined = _joined()
        quiet = env_rank() != 0
        if quiet and hasattr(args, "no_progress"):
            args.no_progress = True
        try:
            with open(os.devnull, "w") as sink, (contextlib.redirect_stdout(sink) if quiet
                                                 else contextlib.nullcontext()):
                return run(args)
        finally:
            if not joined:
                cleanup()

    return wrapped


def _joined() -> bool:
    """Whether this process is in a process group already."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def is_main() -> bool:
    """Whether this process writes the results: rank 0, or the only process."""
    from ibot.distributed import current

    return current().is_main


def device(args: argparse.Namespace):
    """The ``--device`` of this process, after joining ``torchrun``'s process group if there is one
    (NCCL on GPU, each process on the GPU of its local rank; gloo on CPU)."""
    from ibot.distributed import init_distributed, process_device
    from ibot.runtime import resolve_device

    dev = resolve_device(args.device)
    init_distributed(dev.type)
    return process_device(dev)


def train_val_features(args: argparse.Namespace, loaded, forward, kind: str, train: bool = True):
    """``(train_x, train_y, val_x, val_y, info)`` of ``forward`` on the train and val splits
    (``train=False``: the val split's only; train_x, train_y and info's ``num_train`` None, for a
    caller that reads the train split itself); under ``torchrun`` the processes share the
    extraction and each gets the whole result."""
    import torch

    from ibot.eval.features import evaluation_transform, split_features
    from ibot.image_io import format_skipped

    data = data_spec(args, loaded)
    transform = evaluation_transform(image_size(args, loaded), args.crop_pct)
    dev = device(args)
    loaded.backbone.to(dev).eval()
    if isinstance(forward, torch.nn.Module):
        forward.to(dev).eval()
    held = holdout(args)
    common = dict(cache=feature_cache(args), holdout=held, batch_size=args.batch_size, num_workers=args.num_workers,
                  device=dev, progress=not args.no_progress, sharded=True)
    identity = loaded.identity()
    train_x = train_y = None
    train_skipped: list[str] = []
    if train:
        train_x, train_y, train_skipped = split_features(forward, identity, kind, data, "train", transform, **common)
    val_x, val_y, val_skipped = split_features(forward, identity, kind, data, "val", transform, **common)
    num_train = len(train_y) if train else None
    info = {"checkpoint": str(args.checkpoint), "key": args.key, "arch": loaded.arch, "patch_size": loaded.patch_size,
            "data": data, **holdout_info(held), "num_train": num_train, "num_val": len(val_y),
            "skipped_images": len(train_skipped) + len(val_skipped)}
    if held is not None:
        print(f"{data}: {held.describe()}: " + (f"{num_train} train / " if train else "") + f"{len(val_y)} val images")
    skipped = train_skipped + val_skipped
    if skipped:
        print(format_skipped(len(skipped), skipped[0]))
    return train_x, train_y, val_x, val_y, info


def write_results(args: argparse.Namespace, name: str, results: dict[str, Any]) -> Path:
    """``OUTPUT_DIR/<name>.json``, written by rank 0 alone."""
    out = output_dir(args)
    path = out / f"{name}.json"
    if is_main():
        write_text_atomically(path, json.dumps(results, indent=2))
        print(f"results written to {path}")
    return path
