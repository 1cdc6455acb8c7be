"""``ibot segment``: linear semantic segmentation on frozen patch tokens (mIoU)."""

from __future__ import annotations

import argparse

from ibot.commands import _eval_args as common
from ibot.commands import add_output_dir, command


def add_arguments(p: argparse.ArgumentParser) -> None:
    common.add_model_arguments(p)
    p.add_argument("--baseline", choices=("random-init", "raw-pixels"),
                   help="score a baseline instead of the checkpoint's weights: the same network at random init, "
                        "or each token cell's raw pixels (same grid)")
    d = p.add_argument_group("data")
    d.add_argument("--data", default="fashion-mnist-scenes",
                   help="fashion-mnist-scenes (built in), or a folder in the ADE20K layout (images/, annotations/) "
                        "or the Pascal VOC layout (JPEGImages/, SegmentationClass/, ImageSets/Segmentation/)")
    d.add_argument("--image-size", type=int,
                   help="training crop and evaluation short side, a multiple of the token stride (default: the "
                        "scenes' size, else 512)")
    d.add_argument("--eval-mode", choices=("whole", "slide"), default="whole",
                   help="whole: one pass per image; slide: image-size windows averaged where they overlap")
    d.add_argument("--stride", type=int, help="slide: window step in pixels (default: two thirds of a window)")
    d.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    d.add_argument("--num-workers", type=int, default=2, help="data-loading processes")
    d.add_argument("--device", default="auto", help="auto, cpu or cuda")
    g = p.add_argument_group("probe (batch norm + 1x1 linear layer on the token map)")
    g.add_argument("--n-last-blocks", type=int, default=1, help="concatenate the patch tokens of this many last blocks")
    g.add_argument("--epochs", type=int, default=20)
    g.add_argument("--train-batch-size", type=int, default=64, help="images per probe step")
    g.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    g.add_argument("--lrs", type=float, nargs="+",
                   help="learning rates of the sweep, one probe each (default: 1e-3 3e-3 1e-2 3e-2 for AdamW, "
                        "0.01 0.03 0.1 0.3 for SGD)")
    g.add_argument("--weight-decay", type=float, default=1e-4)
    g.add_argument("--cache-gb", type=float, default=4.0,
                   help="keep the training features in memory up to this size, else run the backbone every epoch")
    g.add_argument("--seed", type=int, default=0)
    o = p.add_argument_group("output")
    add_output_dir(o, "where segment.json goes (default: CHECKPOINT_FOLDER/eval)")
    o.add_argument("--no-progress", action="store_true", help="no progress bars")


def default_image_size(dataset, token_stride: int) -> int:
    """The scenes' own size (else 512), rounded to the token grid."""
    size = getattr(dataset, "size", 512)
    return max(token_stride, round(size / token_stride) * token_stride)


@command("segment", "linear segmentation probe on frozen patch tokens: mIoU, pixel accuracy")(add_arguments)
@common.processes
def run(args: argparse.Namespace) -> int:
    from ibot.data.segmentation import build_segmentation_dataset
    from ibot.eval.checkpoints import random_backbone
    from ibot.eval.segment import DenseFeatures, PixelPatches, SegmentConfig, run_probe
    from ibot.formats.ours import save_checkpoint
    from ibot.image_io import format_skipped

    train_set = build_segmentation_dataset(args.data, "train")
    val_set = build_segmentation_dataset(args.data, "val")
    loaded = common.load_model(args)
    if args.baseline == "random-init":
        loaded = random_backbone(loaded.arch, loaded.patch_size, loaded.image_size, seed=args.seed,
                                 **{k: v for k, v in loaded.build_kwargs.items() if k != "img_size"})
    stride = int(loaded.backbone.mask_stride)
    forward = PixelPatches(stride) if args.baseline == "raw-pixels" else DenseFeatures(loaded.backbone,
                                                                                     args.n_last_blocks)
    cfg = SegmentConfig(
        image_size=args.image_size or default_image_size(train_set, stride), eval_mode=args.eval_mode,
        stride=args.stride, epochs=args.epochs, train_batch_size=args.train_batch_size, batch_size=args.batch_size,
        optimizer=args.optimizer, lrs=tuple(args.lrs) if args.lrs else None, weight_decay=args.weight_decay,
        cache_gb=args.cache_gb, num_workers=args.num_workers, seed=args.seed, progress=not args.no_progress)
    result = run_probe(forward, train_set, val_set, cfg, common.device(args), sharded=True)
    features = args.baseline or f"patch tokens, last {args.n_last_blocks} block(s)"
    print(f"linear segmentation on {args.data} ({result['num_train']} train / {result['num_val']} val, "
          f"{cfg.image_size} px, {cfg.eval_mode}), {loaded.name} {features} ({result['feature_dim']}-d):")
    for r in result["per_lr"]:
        mark = "  <- best" if r["lr"] == result["lr"] else ""
        print(f"  lr {r['lr']:<8g} mIoU {r['miou']:6.2f}%  pixel accuracy {r['pixel_acc']:6.2f}%{mark}")
    if result["skipped"]:
        print(format_skipped(len(result["skipped"]), result["skipped"][0]))
    head = result.pop("head")
    out = common.output_dir(args)
    name = "segment" if not args.baseline else f"segment_{args.baseline.replace('-', '_')}"
    if common.is_main():
        save_checkpoint(out / f"{name}_head.safetensors", head.state_dict(),
                        {"features": features, "classes": list(train_set.classes), "miou": result["miou"]},
                        kind="linear_head")
    skipped = result.pop("skipped")
    common.write_results(args, name, {
        "checkpoint": str(args.checkpoint), "key": args.key, "arch": loaded.arch, "patch_size": loaded.patch_size,
        "baseline": args.baseline, "features": features, "data": args.data, "classes": list(train_set.classes),
        "image_size": cfg.image_size, "eval_mode": cfg.eval_mode, "n_last_blocks": args.n_last_blocks,
        "optimizer": cfg.optimizer, "epochs": cfg.epochs, "skipped_images": len(skipped), **result})
    return 0
