"""``ibot finetune``: end-to-end fine-tuning with layer-wise lr decay, mixup/cutmix, RandAugment."""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ibot.commands import _eval_args as common
from ibot.commands import add_output_dir, command, resolve_resume
from ibot.commands._config_args import add_config_arguments, add_dataclass_arguments, resolve_from_args
from ibot.options import to_yaml

if TYPE_CHECKING:
    from ibot.eval.finetune_config import FinetuneConfig


def _defaults(recipe: str = "official") -> FinetuneConfig:
    """Fine-tuning's defaults here: the named recipe, with no more loader processes than cores."""
    from ibot.eval.finetune_config import FinetuneConfig, finetune_recipe

    return finetune_recipe(recipe, num_workers=min(FinetuneConfig.num_workers, os.cpu_count() or 1))


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ibot.eval.finetune_config import RECIPES, FinetuneConfig

    d = _defaults()
    add_config_arguments(p, "lr: 1e-3", "epochs=100 layer_decay=0.65", option="field")
    common.add_model_arguments(p)
    data_names = common.add_data_arguments(p, config=d, features=False)
    o = p.add_argument_group("fine-tuning (default: the recipe's; official: BEiT / iBOT's, timm's regularisation)")
    o.add_argument("--recipe", default="official", choices=sorted(RECIPES),
                   help="official: BEiT's 100-300-epoch recipe; short: a few epochs on small images "
                        "(light crops, no mixup/cutmix/RandAugment/erasing; docs/design.md)")
    add_dataclass_arguments(o, FinetuneConfig, defaults=d, given_only=True, exclude=tuple(data_names))
    r = p.add_argument_group("output")
    add_output_dir(r, "checkpoint, log.jsonl and finetune.json (default: CHECKPOINT_FOLDER/finetune)")
    r.add_argument("--resume", metavar="CHECKPOINT",
                   help="continue a fine-tuning run; 'auto' uses OUTPUT_DIR/checkpoint.safetensors if present")


def resolve_finetune_config(args: argparse.Namespace) -> tuple[FinetuneConfig, list[str]]:
    """The fine-tuning config: the recipe's defaults, ``--config``'s YAML file, overrides, then the
    options given; ``(config, names of the options set)``."""
    from ibot.eval.finetune_config import FinetuneConfig

    cfg = _defaults(args.recipe)
    chosen = resolve_from_args(cfg, args, [f.name for f in dataclasses.fields(FinetuneConfig)])
    if cfg.auto_augment is not None and cfg.auto_augment.lower() in ("none", ""):
        cfg.auto_augment = None
    return cfg, chosen


@command("finetune", "end-to-end fine-tuning (layer decay, mixup/cutmix, RandAugment, EMA)")(add_arguments)
@common.processes
def run(args: argparse.Namespace) -> int:
    from ibot.eval.finetune import Finetuner

    if args.output_dir is None:
        args.output_dir = str(Path(args.checkpoint).resolve().parent / "finetune")
    out = Path(args.output_dir)
    resume = resolve_resume(args.resume, out)
    cfg, chosen = resolve_finetune_config(args)
    args.batch_size = cfg.batch_size  # named by the out-of-memory hint
    if cfg.epochs < 1 or cfg.batch_size < 2:
        raise ValueError("--epochs must be at least 1 and --batch-size at least 2")
    loaded = common.load_model(args, drop_path_rate=cfg.drop_path)
    args.image_size = cfg.image_size if "image_size" in chosen else None  # else the checkpoint's
    cfg.image_size = common.image_size(args, loaded)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    data = common.data_spec(args, loaded)
    held = common.holdout(args)
    info = {"checkpoint": str(args.checkpoint), "key": args.key, "arch": loaded.arch,
            "patch_size": loaded.patch_size, "build_kwargs": loaded.build_kwargs}
    tuner = Finetuner(loaded.backbone, loaded.arch, data, cfg, out, backbone_info=info, holdout=held)
    print(f"fine-tuning {loaded.name} ({args.key} of {args.checkpoint}) on {data}"
          f"{f' ({held.describe()})' if held else ''}: {len(tuner.train_set)} train / "
          f"{len(tuner.val_set)} val images, {cfg.epochs} epochs ({args.recipe} recipe), layer decay {tuner.layer_decay}")
    results = tuner.fit(resume=resume)
    print(f"fine-tuning: best top-1 {results['top1']:.2f}% (epoch {results['best_epoch']}, {results['best_from']}), "
          f"last top-1 {results['last_top1']:.2f}% top-5 {results['last_top5']:.2f}%")
    common.write_results(args, "finetune", {**info, "data": data, **common.holdout_info(held),
                                            "config": dataclasses.asdict(cfg), **results})
    return 0
