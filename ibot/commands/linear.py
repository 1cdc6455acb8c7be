"""``ibot linear``: linear probe on frozen features, a learning-rate sweep trained in one pass."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ibot.commands import _eval_args as common
from ibot.commands import command

if TYPE_CHECKING:
    from torch import nn


def add_arguments(p: argparse.ArgumentParser) -> None:
    common.add_model_arguments(p)
    common.add_data_arguments(p)
    g = p.add_argument_group("linear probe (see ibot/eval/linear.py)")
    g.add_argument("--protocol", choices=("cached", "augmented"), default="cached",
                   help="cached: features of the center-cropped train images, extracted once (fast); augmented: "
                        "the official protocol, random resized crops and flips, the backbone run every epoch")
    g.add_argument("--min-crop-scale", type=float, default=0.08,
                   help="augmented protocol: smallest crop, as a share of the image's area (official: 0.08)")
    g.add_argument("--features", choices=("recipe", "patch-grid"), default="recipe",
                   help="recipe: the [CLS] (and pooled) tokens of --n-last-blocks / --avgpool-patchtokens "
                        "(official); patch-grid: the last block's patch tokens, flattened in grid order "
                        "(for small images: its width is the number of patches times the embedding width)")
    g.add_argument("--n-last-blocks", type=int,
                   help="concatenate the [CLS] of this many last blocks (default: 4, or 1 for ViT-B/L)")
    g.add_argument("--avgpool-patchtokens", type=int, choices=(0, 1, 2),
                   help="0: [CLS] only, 1: pooled patch tokens only, 2: both (default: 0, or 2 for ViT-B/L)")
    g.add_argument("--epochs", type=int, default=100, help="epochs over the cached features")
    g.add_argument("--lrs", type=float, nargs="+",
                   help="learning rates of the sweep, for a batch of 256, one classifier each (default: "
                        "1e-4, 3e-4, ..., 0.3, 1)")
    g.add_argument("--train-batch-size", type=int, default=1024, help="SGD batch size")
    g.add_argument("--weight-decay", type=float, default=0.0, help="official: none")
    g.add_argument("--seed", type=int, default=0)


@command("linear", "linear probe on frozen features (official feature recipes, lr sweep)")(add_arguments)
@common.processes
def run(args: argparse.Namespace) -> int:
    from ibot.eval.linear import DEFAULT_LRS, train_linear_sweep
    from ibot.formats.ours import save_checkpoint

    if not 0 < args.min_crop_scale <= 1:
        raise ValueError(f"--min-crop-scale must be in (0, 1], got {args.min_crop_scale}")
    loaded = common.load_model(args)
    features, kind = _features(args, loaded)
    augmented = args.protocol == "augmented"
    train_x, train_y, val_x, val_y, info = common.train_val_features(args, loaded, features, kind,
                                                                     train=not augmented)
    dim = val_x.shape[1]
    if not common.is_main():  # the sweep runs on rank 0; the others helped with the features
        return 0
    sweep = dict(lrs=args.lrs or DEFAULT_LRS, epochs=args.epochs, batch_size=args.train_batch_size,
                 weight_decay=args.weight_decay, seed=args.seed, device=common.device(args),
                 progress=not args.no_progress)
    result = _augmented_sweep(args, loaded, features, val_x, val_y, info, sweep) if augmented \
        else train_linear_sweep(train_x, train_y, val_x, val_y, **sweep)
    print(f"linear probe on {info['data']} ({kind}, {dim}-d, {args.protocol} protocol), "
          f"{loaded.name} {args.key}:")
    for r in result["per_lr"]:
        mark = "  <- best" if r["lr"] == result["lr"] else ""
        print(f"  lr {r['lr']:<8g} best top-1 {r['best_top1']:6.2f}%  last {r['final_top1']:6.2f}%{mark}")
    print(f"best: top-1 {result['top1']:.2f}%, top-5 {result['top5']:.2f}% (lr {result['lr']:g}, "
          f"epoch {result['epoch']})")
    out = common.output_dir(args)
    save_checkpoint(out / "linear_head.safetensors", {"weight": result["weight"], "bias": result["bias"]},
                    {"features": kind, "lr": result["lr"], "top1": result["top1"]}, kind="linear_head")
    summary = {k: v for k, v in result.items() if k not in ("weight", "bias", "skipped_images")}
    common.write_results(args, "linear", {**info, "features": kind, "feature_dim": dim,
                                          "protocol": args.protocol, "epochs": args.epochs, **summary})
    return 0


def _features(args: argparse.Namespace, loaded) -> tuple[nn.Module, str]:
    """The frozen forward the probe reads, and its name in the feature cache and the results."""
    from ibot.eval.features import image_features
    from ibot.eval.linear import LinearFeatures, default_recipe

    if args.features == "patch-grid":
        if args.n_last_blocks is not None or args.avgpool_patchtokens is not None:
            raise ValueError("--n-last-blocks and --avgpool-patchtokens choose the recipe features; "
                             "--features patch-grid reads the last block's patch tokens only")
        return image_features(loaded.backbone, "patch-grid"), "patch-grid"
    n_default, avgpool_default = default_recipe(loaded.arch)
    n = args.n_last_blocks if args.n_last_blocks is not None else n_default
    avgpool = args.avgpool_patchtokens if args.avgpool_patchtokens is not None else avgpool_default
    features = LinearFeatures(loaded.backbone, n, avgpool)
    return features, features.kind


def _augmented_sweep(args: argparse.Namespace, loaded, features, val_x, val_y, info: dict, sweep: dict) -> dict:
    """The official protocol on rank 0: the train split under random resized crops and flips."""
    from ibot.data.datasets import build_dataset
    from ibot.data.transforms import probe_train_transform
    from ibot.data.views import EvalDataset
    from ibot.eval.linear import train_linear_sweep_augmented
    from ibot.image_io import format_skipped

    base = build_dataset(info["data"], "train", holdout=common.holdout(args))
    train_set = EvalDataset(base, probe_train_transform(common.image_size(args, loaded), (args.min_crop_scale, 1.0)))
    result = train_linear_sweep_augmented(features, train_set, val_x, val_y, num_classes=len(base.classes),
                                          num_workers=args.num_workers, **sweep)
    if result["skipped_images"]:
        print(format_skipped(len(result["skipped_images"]), result["skipped_images"][0]))
    info["num_train"] = len(base)
    info["skipped_images"] += len(result["skipped_images"])
    return result
