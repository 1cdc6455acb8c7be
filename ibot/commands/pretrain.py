"""``ibot pretrain``: iBOT pre-training, one process or several through ``torchrun``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ibot.commands import command, resolve_resume
from ibot.commands._config_args import add_config_arguments
from ibot.files import write_text_atomically
from ibot.options import to_yaml

if TYPE_CHECKING:
    from ibot.config import PretrainConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ibot.config import PRESETS

    add_config_arguments(p, "optim: {lr: 1e-3}", "optim.epochs=100 mask.pred_shape=rand",
                         presets=f"official recipe or small preset: {', '.join(PRESETS)} "
                                 "(default: cpu, or the YAML file's 'preset:')")
    s = p.add_argument_group("shortcuts for common overrides")
    s.add_argument("--data", help="fashion-mnist, cifar10:PATH, cifar100:PATH, stl10:PATH, an ImageFolder path, a "
                                  "folder of unlabelled images or a text file listing images (one path a line)")
    s.add_argument("--output-dir", help="where checkpoints, config.yaml and log.jsonl go; a folder that holds "
                                        "another run is refused (see --resume, --overwrite)")
    s.add_argument("--epochs", type=int)
    s.add_argument("--batch-size-per-device", type=int)
    s.add_argument("--device", help="auto, cpu or cuda")
    s.add_argument("--precision", help="auto, fp32, bf16 or fp16")
    s.add_argument("--max-steps", type=int, help="stop (with a checkpoint) once the run has made this many steps in "
                                                 "total, counting those before a resume (0: every epoch)")
    s.add_argument("--seed", type=int)
    s.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    s.add_argument("--no-knn", action="store_true", help="skip the k-NN check at the end")
    s.add_argument("--eval-every", type=int, metavar="N", help="k-NN accuracy of the teacher every N epochs")
    s.add_argument("--no-tensorboard", action="store_true", help="no TensorBoard event files")
    r = p.add_argument_group("starting from weights, resuming and replacing runs")
    r.add_argument("--init-from", metavar="CHECKPOINT",
                   help="start a new run (epoch 0, fresh optimiser and schedules) from the weights of one of our "
                        ".safetensors pre-training checkpoints, an official checkpoint.pth or checkpoint_teacher.pth "
                        "(one network: both start from it; a missing head starts at random init)")
    r.add_argument("--resume", metavar="CHECKPOINT",
                   help="continue a run with the config saved with it: 'auto' is OUTPUT_DIR's (a new run if it has "
                        "none), or one of our .safetensors checkpoints (OUTPUT_DIR: its folder unless given), or an "
                        "official checkpoint.pth (config from the command line); options given apply on top")
    r.add_argument("--allow-changes", action="store_true",
                   help="resume even if the options given change what the run is (data, batch size, epochs, "
                        "model, crops)")
    r.add_argument("--overwrite", action="store_true",
                   help="start afresh in an --output-dir that holds another run, removing its checkpoint, "
                        "config.yaml, log.jsonl, knn.json and tensorboard/")


def _overrides(args: argparse.Namespace) -> list[str]:
    """The ``section.field=value`` overrides of the command line, shortcuts included."""
    shortcuts = {"data": "data.data", "output_dir": "run.output_dir", "init_from": "run.init_from",
                 "epochs": "optim.epochs", "batch_size_per_device": "optim.batch_size_per_device",
                 "device": "run.device", "precision": "run.precision", "max_steps": "run.max_steps",
                 "seed": "run.seed", "eval_every": "run.eval_every"}
    overrides = [f"{key}={getattr(args, attr)}" for attr, key in shortcuts.items() if getattr(args, attr) is not None]
    if args.no_progress:
        overrides.append("run.progress=false")
    if args.no_knn:
        overrides.append("run.knn_eval=false")
    if args.no_tensorboard:
        overrides.append("run.tensorboard=false")
    return [*args.overrides, *overrides]


def _resolve_pretrain_config(args: argparse.Namespace):
    from ibot.config import resolve_config

    preset = args.preset or (None if args.config else "cpu")
    return resolve_config(preset, args.config, _overrides(args))


def _output_dir(args: argparse.Namespace) -> Path:
    """The run's folder: --output-dir, a run.output_dir override, the folder of a resumed
    checkpoint of ours, else the preset's (or YAML file's)."""
    from ibot.config import parse_override, resolve_config
    from ibot.formats.ours import is_our_checkpoint

    if args.output_dir:
        return Path(args.output_dir)
    given = [value for key, value in map(parse_override, args.overrides) if key == "run.output_dir"]
    if given:
        return Path(str(given[-1]))
    if args.resume and args.resume != "auto" and is_our_checkpoint(args.resume):
        return Path(args.resume).parent
    return Path(resolve_config(args.preset or (None if args.config else "cpu"), args.config).run.output_dir)


@dataclass
class RunStart:
    """What ``ibot pretrain`` starts: the config, the checkpoint to resume (or None), whether it
    continues the run of the output folder, and the lines to print about it."""

    cfg: PretrainConfig
    resume: str | None
    continues_here: bool
    notes: list[str]
    shapes: dict[str, tuple[int, ...]] | None = None  # of a resumed checkpoint of ours


def resolve_run(args: argparse.Namespace) -> RunStart:
    """The config of a new run (preset, YAML, overrides) or of a resumed one: the config saved with
    the run (checkpoint metadata, else OUTPUT_DIR/config.yaml) with the command line's options on
    top, refusing those that change what the run is unless ``--allow-changes``. Reads no tensor."""
    import yaml

    from ibot.config import config_changes, config_from_dict, is_run_defining, parse_override, resolve_config
    from ibot.formats.ours import CHECKPOINT_NAME, checkpoint_kind, is_our_checkpoint, read_shapes

    init_given = args.init_from or any(key == "run.init_from" for key, _ in map(parse_override, args.overrides))
    if args.resume and args.resume != "auto" and init_given:  # auto: init only if OUTPUT_DIR holds no checkpoint yet
        raise ValueError("--init-from starts a new run from a checkpoint's weights, --resume CHECKPOINT continues a "
                         "run (a run started with --init-from resumes from its own checkpoint): give one of them, or "
                         "--resume auto to start from --init-from's weights only where no checkpoint exists yet")
    if not args.resume:
        return RunStart(_resolve_pretrain_config(args), None, False, [])
    output_dir = _output_dir(args)
    resume = resolve_resume(args.resume, output_dir)
    continues_here = args.resume == "auto" or (resume is not None and Path(resume).resolve()
                                               == (output_dir / CHECKPOINT_NAME).resolve())
    saved, shapes, source = None, None, None
    if resume and is_our_checkpoint(resume):
        shapes, meta = read_shapes(resume)
        if checkpoint_kind(meta, resume) != "pretrain":
            raise ValueError(f"{resume} holds no pre-training config; is it a pre-training checkpoint?")
        saved, source = meta["config"], f"{resume} (epoch {meta.get('epoch')}, step {meta.get('step_in_epoch')})"
    elif resume is None and (output_dir / "config.yaml").is_file():  # a run stopped before its first checkpoint
        source = str(output_dir / "config.yaml")
        try:
            saved = yaml.safe_load((output_dir / "config.yaml").read_text())
        except yaml.YAMLError as exc:
            raise ValueError(f"{source} is not readable YAML ({' '.join(str(exc).split())})") from None
    overrides = [*_overrides(args), f"run.output_dir={output_dir}"]
    if saved is None:
        cfg = resolve_config(args.preset or (None if args.config else "cpu"), args.config, overrides)
        note = (f"resuming {resume} with the config of the command line" if resume else
                f"--resume auto: {output_dir} holds no checkpoint, starting a new run")
        return RunStart(cfg, resume, continues_here, [note])
    if args.preset or args.config:
        raise ValueError(f"--preset and --config choose a new run's options; a resumed run keeps those saved with it "
                         f"({source}): drop them, and give section.field=value to change an option")
    try:
        if not isinstance(saved, dict):
            raise TypeError(f"a {type(saved).__name__}, not a mapping of sections")
        base = config_from_dict(saved)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{source}: the saved config cannot be read ({exc})") from None
    base.run.output_dir = str(output_dir)
    cfg = resolve_config(base=base, overrides=overrides)
    changes = config_changes(base, cfg)
    shown = {key: f"{key}={new} (was {old})" for key, old, new in changes}
    defining = [shown[key] for key, _, _ in changes if is_run_defining(key)]
    if defining and not args.allow_changes:
        raise ValueError(f"resuming {source} with {', '.join(defining)} would change what the run is; add "
                         f"--allow-changes to do it anyway, or start a new run in another --output-dir")
    what = f"resuming {source}" if resume else f"restarting the run saved in {source} from its first step"
    notes = [what + (f" with overrides: {', '.join(shown.values())}" if changes else "")]
    return RunStart(cfg, resume, continues_here, notes, shapes)


@command("pretrain", "iBOT pre-training (single process, or several through torchrun)")(add_arguments)
def run(args: argparse.Namespace) -> int:
    from ibot.formats.ours import CheckpointWriteError
    from ibot.train.run_dir import prepare_output_dir

    start = resolve_run(args)
    cfg = start.cfg
    if args.print_config:
        print(to_yaml(cfg))
        return 0
    from ibot.build import check_checkpoint_shapes
    from ibot.data.datasets import val_split_problem
    from ibot.eval.knn import periodic_knn
    from ibot.formats.ours import is_our_checkpoint
    from ibot.train.trainer import Pretrainer

    if start.shapes is not None:  # before building: the saved config may not describe the saved tensors
        config_name = "its saved config" + (" with your overrides" if args.allow_changes else "")
        check_checkpoint_shapes(cfg, start.shapes, str(start.resume), config_name)
    init = None
    if cfg.run.init_from and start.resume is None:  # a run at its first step (a resumed one has its own weights)
        from ibot.train.init_from import check_init_weights, read_init_weights

        init = read_init_weights(cfg.run.init_from)
        check_init_weights(cfg, init)  # before building, as for a resumed checkpoint
    resume = start.resume
    if resume and not is_our_checkpoint(resume):  # an official checkpoint.pth: its tensors under our keys
        from ibot.convert import official_training_state

        resume = official_training_state(resume)
    is_main = int(os.environ.get("RANK", "0")) == 0  # torchrun's; the process group is not up yet
    notes = prepare_output_dir(cfg.run.output_dir, start.continues_here, args.overwrite, is_main)
    if is_main:
        for line in [*notes, *start.notes]:
            print(line, file=sys.stderr)
    trainer = Pretrainer(cfg)
    if init is not None:
        for line in trainer.init_weights(init):
            if trainer.dist.is_main:
                print(line, file=sys.stderr)
        init = None  # the file's tensors: loaded, no longer needed
    problem = val_split_problem(cfg.data.data) if cfg.run.knn_eval or cfg.run.eval_every else None
    if problem:  # known before the first step, not after the training
        if trainer.dist.is_main:
            print(f"ibot pretrain: no k-NN check (end of run, --eval-every) without a labelled val split: {problem}",
                  file=sys.stderr)
        cfg.run.knn_eval, cfg.run.eval_every = False, 0
    try:
        trainer.fit(resume=resume, on_epoch_end=periodic_knn(cfg.run.eval_every) if cfg.run.eval_every else None)
    except CheckpointWriteError as exc:
        raise CheckpointWriteError(f"{exc}; make room, then continue with: ibot pretrain --resume auto "
                                   f"--output-dir {cfg.run.output_dir}") from None
    if cfg.run.knn_eval and trainer.dist.is_main and cfg.run.max_steps == 0:
        from ibot.eval.knn import pretrain_knn_report

        report = pretrain_knn_report(trainer)
        write_text_atomically(Path(cfg.run.output_dir) / "knn.json", json.dumps(report, indent=2))
        print(f"k-NN top-1 (k=20) on {cfg.data.data}: teacher {report['teacher'][20]['top1']:.2f}%, "
              f"same network at random init {report['random_init'][20]['top1']:.2f}%")
    return 0
