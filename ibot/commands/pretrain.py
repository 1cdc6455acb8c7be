"""``ibot pretrain``: iBOT pre-training, one process or several through ``torchrun``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ibot.commands import command, resolve_resume


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ibot.config import PRESETS

    g = p.add_argument_group("configuration (preset, then YAML file, then overrides)")
    g.add_argument("--preset", default=None, help=f"official recipe or small preset: {', '.join(PRESETS)} "
                                                  "(default: cpu, or the YAML file's 'preset:')")
    g.add_argument("--config", default=None, metavar="YAML", help="YAML file of sections, e.g. 'optim: {lr: 1e-3}'")
    g.add_argument("overrides", nargs="*", metavar="section.field=value",
                   help="overrides, e.g. optim.epochs=100 mask.pred_shape=rand")
    g.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    s = p.add_argument_group("shortcuts for common overrides")
    s.add_argument("--data", help="fashion-mnist, cifar10:PATH, cifar100:PATH, stl10:PATH or an ImageFolder path")
    s.add_argument("--output-dir", help="where checkpoints, config.yaml and log.jsonl go")
    s.add_argument("--epochs", type=int)
    s.add_argument("--batch-size-per-device", type=int)
    s.add_argument("--device", help="auto, cpu or cuda")
    s.add_argument("--precision", help="auto, fp32, bf16 or fp16")
    s.add_argument("--max-steps", type=int, help="stop (with a checkpoint) after this many steps")
    s.add_argument("--seed", type=int)
    s.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    s.add_argument("--no-knn", action="store_true", help="skip the k-NN check at the end")
    s.add_argument("--eval-every", type=int, metavar="N", help="k-NN accuracy of the teacher every N epochs")
    s.add_argument("--no-tensorboard", action="store_true", help="no TensorBoard event files")
    r = p.add_argument_group("resuming")
    r.add_argument("--resume", metavar="CHECKPOINT",
                   help="continue from one of our checkpoints; 'auto' uses OUTPUT_DIR/checkpoint.safetensors if present")


def _resolve_pretrain_config(args: argparse.Namespace):
    from ibot.config import resolve_config

    shortcuts = {"data": "data.data", "output_dir": "run.output_dir", "epochs": "optim.epochs",
                 "batch_size_per_device": "optim.batch_size_per_device", "device": "run.device",
                 "precision": "run.precision", "max_steps": "run.max_steps", "seed": "run.seed", "eval_every": "run.eval_every"}
    overrides = [f"{key}={getattr(args, attr)}" for attr, key in shortcuts.items() if getattr(args, attr) is not None]
    if args.no_progress:
        overrides.append("run.progress=false")
    if args.no_knn:
        overrides.append("run.knn_eval=false")
    if args.no_tensorboard:
        overrides.append("run.tensorboard=false")
    preset = args.preset or (None if args.config else "cpu")
    return resolve_config(preset, args.config, [*args.overrides, *overrides])


@command("pretrain", "iBOT pre-training (single process, or several through torchrun)")(add_arguments)
def run(args: argparse.Namespace) -> int:
    import yaml

    cfg = _resolve_pretrain_config(args)
    if args.print_config:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return 0
    from ibot.data.datasets import val_split_problem
    from ibot.train.trainer import Pretrainer

    resume = resolve_resume(args.resume, cfg.run.output_dir)
    trainer = Pretrainer(cfg)
    problem = val_split_problem(cfg.data.data) if cfg.run.knn_eval or cfg.run.eval_every else None
    if problem:  # known before the first step, not after the training
        if trainer.dist.is_main:
            print(f"ibot pretrain: no k-NN check (end of run, --eval-every) without a labelled val split: {problem}",
                  file=sys.stderr)
        cfg.run.knn_eval, cfg.run.eval_every = False, 0
    trainer.fit(resume=resume)
    if cfg.run.knn_eval and trainer.dist.is_main and cfg.run.max_steps == 0:
        from ibot.eval.knn import pretrain_knn_report

        report = pretrain_knn_report(trainer)
        (Path(cfg.run.output_dir) / "knn.json").write_text(json.dumps(report, indent=2))
        print(f"k-NN top-1 (k=20) on {cfg.data.data}: teacher {report['teacher'][20]['top1']:.2f}%, "
              f"same network at random init {report['random_init'][20]['top1']:.2f}%")
    return 0
