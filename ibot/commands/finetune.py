"""``ibot finetune``: end-to-end fine-tuning with layer-wise lr decay, mixup/cutmix, RandAugment."""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

from ibot.commands import _eval_args as common
from ibot.commands import add_output_dir, command, resolve_resume


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ibot.eval.finetune_config import FinetuneConfig

    d = FinetuneConfig()
    common.add_model_arguments(p)
    g = p.add_argument_group("data")
    g.add_argument("--data", help="fashion-mnist, cifar10:PATH, ..., or an ImageFolder path "
                                  "(default: the checkpoint's pre-training data, else fashion-mnist)")
    g.add_argument("--image-size", type=int, help="training and evaluation size (default: the pre-training crop "
                                                  "size, 224 for official checkpoints)")
    g.add_argument("--crop-pct", type=float, help="evaluation resize/center-crop ratio (default: 0.875, 1 under 64 px)")
    common.add_holdout_arguments(g)
    g.add_argument("--num-workers", type=int, default=min(d.num_workers, os.cpu_count() or 1),
                   help="data-loading processes")
    g.add_argument("--device", default=d.device, help="auto, cpu or cuda")
    o = p.add_argument_group("optimisation (BEiT / official iBOT defaults)")
    o.add_argument("--epochs", type=int, default=d.epochs, help="official: 200 (ViT-S), 100 (ViT-B), 50 (ViT-L)")
    o.add_argument("--batch-size", type=int, default=d.batch_size)
    o.add_argument("--lr", type=float, default=d.lr, help="peak learning rate for a batch of 256")
    o.add_argument("--min-lr", type=float, default=d.min_lr)
    o.add_argument("--warmup-epochs", type=int, default=d.warmup_epochs)
    o.add_argument("--weight-decay", type=float, default=d.weight_decay)
    o.add_argument("--layer-decay", type=float, help="layer-wise lr decay (default: 0.65 for ViT-B, else 0.75)")
    o.add_argument("--drop-path", type=float, default=d.drop_path, help="stochastic depth of the last block")
    o.add_argument("--clip-grad", type=float, default=d.clip_grad, help="global gradient-norm clip; 0: none")
    o.add_argument("--seed", type=int, default=d.seed)
    a = p.add_argument_group("regularisation (timm)")
    a.add_argument("--mixup", type=float, default=d.mixup, help="mixup alpha; 0 disables")
    a.add_argument("--cutmix", type=float, default=d.cutmix, help="cutmix alpha; 0 disables")
    a.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    a.add_argument("--auto-augment", default=d.auto_augment, help="timm RandAugment policy; 'none' disables")
    a.add_argument("--reprob", type=float, default=d.reprob, help="random erasing probability")
    a.add_argument("--min-crop-scale", type=float, default=d.min_crop_scale, help="random resized crop scale (min, 1)")
    a.add_argument("--ema", action="store_true", help="keep and evaluate an EMA of the weights")
    a.add_argument("--ema-decay", type=float, default=d.ema_decay)
    r = p.add_argument_group("output")
    add_output_dir(r, "checkpoint, log.jsonl and finetune.json (default: CHECKPOINT_FOLDER/finetune)")
    r.add_argument("--resume", metavar="CHECKPOINT",
                   help="continue a fine-tuning run; 'auto' uses OUTPUT_DIR/checkpoint.safetensors if present")
    r.add_argument("--no-progress", action="store_true")


@command("finetune", "end-to-end fine-tuning (layer decay, mixup/cutmix, RandAugment, EMA)")(add_arguments)
def run(args: argparse.Namespace) -> int:
    import json

    from ibot.eval.finetune import Finetuner
    from ibot.eval.finetune_config import FinetuneConfig

    if args.output_dir is None:
        args.output_dir = str(Path(args.checkpoint).resolve().parent / "finetune")
    out = Path(args.output_dir)
    resume = resolve_resume(args.resume, out)
    if args.epochs < 1 or args.batch_size < 2:
        raise ValueError("--epochs must be at least 1 and --batch-size at least 2")
    loaded = common.load_model(args, drop_path_rate=args.drop_path)
    cfg = FinetuneConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, min_lr=args.min_lr,
        warmup_epochs=args.warmup_epochs, weight_decay=args.weight_decay, layer_decay=args.layer_decay,
        drop_path=args.drop_path, mixup=args.mixup, cutmix=args.cutmix, label_smoothing=args.label_smoothing,
        auto_augment=None if str(args.auto_augment).lower() in ("none", "") else args.auto_augment,
        reprob=args.reprob, min_crop_scale=args.min_crop_scale, clip_grad=args.clip_grad, ema=args.ema,
        ema_decay=args.ema_decay, image_size=common.image_size(args, loaded), crop_pct=args.crop_pct,
        num_workers=args.num_workers, seed=args.seed, device=args.device, progress=not args.no_progress)
    data = common.data_spec(args, loaded)
    held = common.holdout(args)
    info = {"checkpoint": str(args.checkpoint), "key": args.key, "arch": loaded.arch,
            "patch_size": loaded.patch_size, "build_kwargs": loaded.build_kwargs}
    tuner = Finetuner(loaded.backbone, loaded.arch, data, cfg, out, backbone_info=info, holdout=held)
    print(f"fine-tuning {loaded.name} ({args.key} of {args.checkpoint}) on {data}"
          f"{f' ({held.describe()})' if held else ''}: {len(tuner.train_set)} train / "
          f"{len(tuner.val_set)} val images, {cfg.epochs} epochs, layer decay {tuner.layer_decay}")
    results = tuner.fit(resume=resume)
    print(f"fine-tuning: best top-1 {results['top1']:.2f}% (epoch {results['best_epoch']}, {results['best_from']}), "
          f"last top-1 {results['last_top1']:.2f}% top-5 {results['last_top5']:.2f}%")
    path = out / "finetune.json"
    path.write_text(json.dumps({**info, "data": data, **common.holdout_info(held), "config": dataclasses.asdict(cfg),
                                **results}, indent=2))
    print(f"results written to {path}")
    return 0
