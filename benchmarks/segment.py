"""Dense benchmark: linear segmentation of ``fashion-mnist-scenes`` on frozen patch tokens.

Pre-trains the ``cpu`` preset twice with the same budget, iBOT and DINO only (``loss.lambda2=0``:
no masked-patch loss), and scores four token maps with the same probe (``ibot segment``'s:
batch norm + 1x1 layer, lr sweep, whole-image inference at 56 px; see ``ibot/eval/segment.py``):

- iBOT's patch tokens, and the last 4 blocks' concatenated;
- DINO only's patch tokens;
- the same network at random initialisation;
- raw pixels of each 7 x 7 token cell (147 values).

Writes ``benchmarks/results/segment.json`` (mIoU, pixel accuracy, per-class IoU, seconds, the
machine and the command)::

    python benchmarks/segment.py --threads 2
    python benchmarks/segment.py --ibot-checkpoint A.safetensors --dino-checkpoint B.safetensors
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import _common
import torch

from ibot.config import resolve_config
from ibot.data.segmentation import build_segmentation_dataset
from ibot.eval.checkpoints import load_backbone, random_backbone
from ibot.eval.segment import DenseFeatures, PixelPatches, SegmentConfig, run_probe
from ibot.formats.ours import CHECKPOINT_NAME

VARIANTS = ("ibot", "ibot_last4", "dino_only", "random_init", "raw_pixels")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pretrain-data", default="fashion-mnist:subset", help="pre-training images of both runs")
    p.add_argument("--pretrain-epochs", type=int, default=5, help="epochs of each pre-training run")
    p.add_argument("--ibot-checkpoint", help="score this checkpoint instead of pre-training iBOT")
    p.add_argument("--dino-checkpoint", help="score this checkpoint instead of pre-training DINO only")
    p.add_argument("--epochs", type=int, default=20, help="probe epochs over the cached features")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--work-dir", default="runs/benchmark_segment")
    p.add_argument("--output", default=str(_common.RESULTS_DIR / "segment.json"))
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def pretrain(name: str, overrides: list[str], args: argparse.Namespace) -> Path:
    from ibot.train.trainer import Pretrainer

    out = Path(args.work_dir) / name
    cfg = resolve_config("cpu", overrides=[f"data.data={args.pretrain_data}", f"optim.epochs={args.pretrain_epochs}",
                                           f"run.output_dir={out}", f"run.seed={args.seed}", "run.knn_eval=false",
                                           "run.progress=false", *overrides])
    Pretrainer(cfg).fit()
    return out / CHECKPOINT_NAME


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    seconds: dict[str, float] = {}
    checkpoints = {}
    for name, given, overrides in (("ibot", args.ibot_checkpoint, []),
                                   ("dino_only", args.dino_checkpoint, ["loss.lambda2=0"])):
        start = time.perf_counter()
        checkpoints[name] = Path(given) if given else pretrain(name, overrides, args)
        seconds[f"pretrain_{name}"] = time.perf_counter() - start
    ibot = load_backbone(checkpoints["ibot"])
    sizes = {k: v for k, v in ibot.build_kwargs.items() if k != "img_size"}
    stride = int(ibot.backbone.mask_stride)
    forwards = {
        "ibot": DenseFeatures(ibot.backbone),
        "ibot_last4": DenseFeatures(ibot.backbone, n_last_blocks=4),
        "dino_only": DenseFeatures(load_backbone(checkpoints["dino_only"]).backbone),
        "random_init": DenseFeatures(random_backbone(ibot.arch, ibot.patch_size, ibot.image_size, seed=args.seed,
                                                     **sizes).backbone),
        "raw_pixels": PixelPatches(stride),
    }
    train, val = build_segmentation_dataset("fashion-mnist-scenes", "train"), build_segmentation_dataset(
        "fashion-mnist-scenes", "val")
    results: dict[str, Any] = {}
    for name in VARIANTS:
        start = time.perf_counter()
        cfg = SegmentConfig(image_size=train.size, epochs=args.epochs, num_workers=2, seed=args.seed, progress=False)
        r = run_probe(forwards[name], train, val, cfg)
        seconds[f"probe_{name}"] = time.perf_counter() - start
        results[name] = {"miou": round(r["miou"], 2), "pixel_acc": round(r["pixel_acc"], 2), "lr": r["lr"],
                         "feature_dim": r["feature_dim"], "per_class_iou": r["per_class_iou"], "per_lr": r["per_lr"]}
        print(f"{name:12s} mIoU {r['miou']:6.2f}%  pixel accuracy {r['pixel_acc']:6.2f}%  ({r['feature_dim']}-d, "
              f"lr {r['lr']:g}, {seconds[f'probe_{name}']:.0f} s)", flush=True)
    figures = {
        "data": f"fashion-mnist-scenes: {len(train)} train / {len(val)} val scenes of {train.size} px, 11 classes",
        "pretrain": {"preset": "cpu", "data": args.pretrain_data, "epochs": args.pretrain_epochs,
                     "checkpoints": {k: str(v) for k, v in checkpoints.items()}},
        "probe": {"epochs": args.epochs, "image_size": train.size, "eval_mode": "whole"},
        **results, "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "masked_image_modelling_wins": results["ibot"]["miou"] > results["dino_only"]["miou"],
        "command": "python benchmarks/segment.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    path = _common.write_results("segment", figures, path=args.output)
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
