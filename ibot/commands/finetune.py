"""``ibot finetune``: end-to-end fine-tuning with layer-wise lr decay, mixup/cutmix, RandAugment."""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

from ibot.commands import _eval_args as common
from ibot.commands import command, resolve_resume


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ibot.eval.finetune_config import RECIPES, FinetuneConfig

    d = FinetuneConfig()
    common.add_model_arguments(p)
    g = p.add_argument_group("data")
    g.add_argument("--data", help="fashion-mnist, cifar10:PATH, ..., or an ImageFolder path "
                                  "(default: the checkpoint's pre-training data, else fashion-mnist)")
    g.add_argument("--image-size", type=int, help="training and evaluation size (default: the pre-training crop "
                                                  "size, 224 for official checkpoints)")
    g.add_argument("--crop-pct", type=float, help="evaluation resize/center-crop ratio (default: 0.875, 1 under 64 px)")
    g.add_argument("--num-workers", type=int, default=min(d.num_workers, os.cpu_count() or 1),
                   help="data-loading processes")
    g.add_argument("--device", default=d.device, help="auto, cpu or cuda")
    o = p.add_argument_group("optimisation (default: the recipe's; official: BEiT / iBOT's)")
    o.add_argument("--recipe", default="official", choices=sorted(RECIPES),
                   help="official: BEiT's 100-300-epoch recipe; short: a few epochs on small images "
                        "(light crops, no mixup/cutmix/RandAugment/erasing; docs/design.md)")
    o.add_argument("--epochs", type=int, help=f"official: 200 (ViT-S), 100 (ViT-B), 50 (ViT-L) (default {d.epochs})")
    o.add_argument("--batch-size", type=int, help=f"(default {d.batch_size})")
    o.add_argument("--lr", type=float, help=f"peak learning rate for a batch of 256 (default {d.lr})")
    o.add_argument("--min-lr", type=float, help=f"(default {d.min_lr})")
    o.add_argument("--warmup-epochs", type=int, help=f"(default {d.warmup_epochs})")
    o.add_argument("--weight-decay", type=float, help=f"(default {d.weight_decay})")
    o.add_argument("--layer-decay", type=float, help="layer-wise lr decay (default: 0.65 for ViT-B, else 0.75)")
    o.add_argument("--drop-path", type=float, help=f"stochastic depth of the last block (default {d.drop_path})")
    o.add_argument("--clip-grad", type=float, help="global gradient-norm clip; 0: none (default 0)")
    o.add_argument("--head-lr-scale", type=float, help="lr multiplier of the classifier and final norm (default 1)")
    o.add_argument("--head-init-epochs", type=int, help="first fit the classifier on cached frozen features for "
                                                        "this many epochs (LP-FT; default 0)")
    o.add_argument("--freeze-backbone-epochs", type=int, help="first epochs train the classifier only (default 0)")
    o.add_argument("--seed", type=int, default=d.seed)
    a = p.add_argument_group("regularisation (timm; default: the recipe's)")
    a.add_argument("--mixup", type=float, help=f"mixup alpha; 0 disables (default {d.mixup})")
    a.add_argument("--cutmix", type=float, help=f"cutmix alpha; 0 disables (default {d.cutmix})")
    a.add_argument("--label-smoothing", type=float, help=f"(default {d.label_smoothing})")
    a.add_argument("--auto-augment", help=f"timm RandAugment policy; 'none' disables (default {d.auto_augment})")
    a.add_argument("--reprob", type=float, help=f"random erasing probability (default {d.reprob})")
    a.add_argument("--min-crop-scale", type=float,
                   help=f"random resized crop scale (min, 1) (default {d.min_crop_scale})")
    a.add_argument("--color-jitter", type=float, help=f"colour jitter without RandAugment; 0 disables "
                                                      f"(default {d.color_jitter})")
    a.add_argument("--ema", action="store_true", default=None, help="keep and evaluate an EMA of the weights")
    a.add_argument("--ema-decay", type=float, help=f"(default {d.ema_decay})")
    r = p.add_argument_group("output")
    r.add_argument("--output-dir", help="checkpoint, log.jsonl and finetune.json (default: CHECKPOINT_FOLDER/finetune)")
    r.add_argument("--resume", metavar="CHECKPOINT",
                   help="continue a fine-tuning run; 'auto' uses OUTPUT_DIR/checkpoint.safetensors if present")
    r.add_argument("--no-progress", action="store_true")


@command("finetune", "end-to-end fine-tuning (layer decay, mixup/cutmix, RandAugment, EMA)")(add_arguments)
def run(args: argparse.Namespace) -> int:
    import json

    from ibot.eval.finetune import Finetuner
    from ibot.eval.finetune_config import finetune_recipe

    if args.output_dir is None:
        args.output_dir = str(Path(args.checkpoint).resolve().parent / "finetune")
    out = Path(args.output_dir)
    resume = resolve_resume(args.resume, out)
    auto_augment = args.auto_augment
    if auto_augment is not None and auto_augment.lower() in ("none", ""):
        auto_augment = ""  # disabled: told apart from None (unset, the recipe's)
    options = {name: getattr(args, name) for name in (
        "epochs", "batch_size", "lr", "min_lr", "warmup_epochs", "weight_decay", "layer_decay", "drop_path",
        "mixup", "cutmix", "label_smoothing", "reprob", "min_crop_scale", "color_jitter", "clip_grad", "ema",
        "ema_decay", "head_lr_scale", "head_init_epochs", "freeze_backbone_epochs")}
    cfg = finetune_recipe(args.recipe, **options, auto_augment=auto_augment, crop_pct=args.crop_pct,
                          num_workers=args.num_workers, seed=args.seed, device=args.device,
                          progress=not args.no_progress)
    if cfg.auto_augment == "":
        cfg.auto_augment = None
    if cfg.epochs < 1 or cfg.batch_size < 2:
        raise ValueError("--epochs must be at least 1 and --batch-size at least 2")
    loaded = common.load_model(args, drop_path_rate=cfg.drop_path)
    cfg.image_size = common.image_size(args, loaded)
    data = common.data_spec(args, loaded)
    info = {"checkpoint": str(args.checkpoint), "key": args.key, "arch": loaded.arch,
            "patch_size": loaded.patch_size, "build_kwargs": loaded.build_kwargs}
    tuner = Finetuner(loaded.backbone, loaded.arch, data, cfg, out, backbone_info=info)
    print(f"fine-tuning {loaded.name} ({args.key} of {args.checkpoint}) on {data}: {len(tuner.train_set)} train / "
          f"{len(tuner.val_set)} val images, {cfg.epochs} epochs ({args.recipe} recipe), "
          f"layer decay {tuner.layer_decay}")
    results = tuner.fit(resume=resume)
    print(f"fine-tuning: best top-1 {results['top1']:.2f}% (epoch {results['best_epoch']}, {results['best_from']}), "
          f"last top-1 {results['last_top1']:.2f}% top-5 {results['last_top5']:.2f}%")
    path = out / "finetune.json"
    path.write_text(json.dumps({**info, "data": data, "config": dataclasses.asdict(cfg), **results}, indent=2))
    print(f"results written to {path}")
    return 0
