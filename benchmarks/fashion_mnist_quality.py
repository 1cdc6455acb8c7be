"""Quality benchmark: does iBOT pre-training on Fashion-MNIST beat the baselines on the CPU?

On the full Fashion-MNIST (train 60k / test 10k) with the ``cpu`` preset's network, and a budget
of CPU time stated on the command line (epochs of each stage; the CPU seconds actually used are
recorded), this measures:

- baselines: k-NN and the linear probe on raw pixels, and on the same network at random init;
- after pre-training: k-NN, linear probe, fine-tuning, and clustering (NMI / ARI / Hungarian ACC of
  the head's prototypes and of k-means on [CLS] features);
- fine-tuning from random initialisation with the same budget.

It checks that pre-training beats both baselines on k-NN and linear, and that fine-tuning from it
beats fine-tuning from random init; writes ``benchmarks/results/fashion_mnist_quality.json`` and
prints a table. The README's runs: the preset's 5 pre-training epochs, and 15 (the budget at which
pre-training beats both baselines)::

    python benchmarks/fashion_mnist_quality.py --threads 2
    python benchmarks/fashion_mnist_quality.py --threads 2 --pretrain-epochs 15 \
        --output benchmarks/results/fashion_mnist_quality_15ep.json

A smoke run in a few minutes: ``--data fashion-mnist:subset --pretrain-epochs 2 --finetune-epochs 1
--linear-epochs 5 --output /tmp/quality.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import _common
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ibot.build import backbone_kwargs  # noqa: E402
from ibot.config import resolve_config  # noqa: E402
from ibot.data.datasets import build_dataset  # noqa: E402
from ibot.eval.checkpoints import LoadedBackbone, load_backbone, load_head, random_backbone  # noqa: E402
from ibot.eval.cluster import cluster_scores, kmeans_clusters, prototype_assigner  # noqa: E402
from ibot.eval.features import evaluation_transform, split_features  # noqa: E402
from ibot.eval.finetune import Finetuner  # noqa: E402
from ibot.eval.finetune_config import FinetuneConfig  # noqa: E402
from ibot.eval.knn import knn_classify  # noqa: E402
from ibot.eval.linear import LinearFeatures, default_recipe, train_linear_sweep  # noqa: E402
from ibot.formats.ours import CHECKPOINT_NAME  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="fashion-mnist", help="dataset spec (the full set needs the IDX files)")
    b = p.add_argument_group("CPU budget")
    b.add_argument("--pretrain-epochs", type=int, default=None, help="pre-training epochs (default: the preset's)")
    b.add_argument("--linear-epochs", type=int, default=30,
                   help="epochs of the linear sweep on cached features (batch 256)")
    b.add_argument("--finetune-epochs", type=int, default=3, help="fine-tuning epochs (pre-trained and random init)")
    b.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--finetune-lr", type=float, default=1e-3, help="fine-tuning peak lr per 256 images")
    p.add_argument("--checkpoint", help="evaluate this pre-training checkpoint instead of pre-training")
    p.add_argument("--work-dir", default="runs/benchmark_fashion_mnist", help="pre-training and fine-tuning runs")
    p.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "fashion_mnist_quality.json"))
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


@contextmanager
def clock(times: dict[str, dict[str, float]], name: str):
    """Wall and CPU seconds (this process and finished children) of a block."""
    start_wall, start = time.perf_counter(), os.times()
    yield
    end = os.times()
    cpu = (end.user - start.user) + (end.system - start.system) + (end.children_user - start.children_user) \
        + (end.children_system - start.children_system)
    times[name] = {"wall_s": time.perf_counter() - start_wall, "cpu_s": cpu}
    print(f"[{name}] {times[name]['wall_s']:.0f} s wall, {cpu:.0f} s CPU", flush=True)


class Protocols:
    """Every frozen-feature protocol on one dataset, one transform."""

    def __init__(self, data: str, image_size: int, linear_epochs: int, seed: int) -> None:
        self.data, self.linear_epochs, self.seed = data, linear_epochs, seed
        self.transform = evaluation_transform(image_size)
        self.classes = len(build_dataset(data, "train").classes)

    def features(self, forward, identity: dict[str, Any], kind: str):
        train = split_features(forward, identity, kind, self.data, "train", self.transform, batch_size=512)
        val = split_features(forward, identity, kind, self.data, "val", self.transform, batch_size=512)
        return train[0], train[1], val[0], val[1]

    def knn(self, train_x, train_y, val_x, val_y) -> dict[str, Any]:
        results = knn_classify(train_x, train_y, val_x, val_y, ks=(10, 20, 100, 200))
        return {"top1": results[20]["top1"], "per_k": {str(k): v["top1"] for k, v in results.items()}}

    def linear(self, train_x, train_y, val_x, val_y) -> dict[str, Any]:
        r = train_linear_sweep(train_x, train_y, val_x, val_y, epochs=self.linear_epochs, batch_size=256,
                               seed=self.seed, progress=False)
        return {"top1": r["top1"], "lr": r["lr"]}

    def kmeans(self, val_x, val_y) -> dict[str, float]:
        return cluster_scores(val_y.numpy(), kmeans_clusters(val_x, self.classes, seed=self.seed))

    def network(self, loaded: LoadedBackbone, name: str) -> dict[str, Any]:
        """Linear probe (official recipe), k-NN and k-means (final [CLS]) of a ViT, from one pass."""
        recipe = LinearFeatures(loaded.backbone.eval(), *default_recipe(loaded.arch))
        if recipe.avgpool == 1:
            raise ValueError("the benchmark reads the [CLS] features out of the linear-probe features")
        train_x, train_y, val_x, val_y = self.features(recipe, {**loaded.identity(), "name": name}, recipe.kind)
        # the last block's [CLS] (through the final norm) is what forward() returns: k-NN's feature
        dim = loaded.backbone.embed_dim
        last = slice((recipe.n_last_blocks - 1) * dim, recipe.n_last_blocks * dim)
        return {"linear": self.linear(train_x, train_y, val_x, val_y),
                "knn": self.knn(train_x[:, last], train_y, val_x[:, last], val_y),
                "kmeans": self.kmeans(val_x[:, last], val_y)}


def finetune(loaded: LoadedBackbone, data: str, args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    cfg = FinetuneConfig(epochs=args.finetune_epochs, batch_size=128, lr=args.finetune_lr,
                         warmup_epochs=min(1, args.finetune_epochs - 1), image_size=loaded.image_size,
                         num_workers=2, seed=args.seed, device="cpu", progress=False)
    results = Finetuner(loaded.backbone.train(), loaded.arch, data, cfg, run_dir).fit()
    return {"top1": results["top1"], "last_top1": results["last_top1"], "epochs": results["epochs"]}


def table(results: dict[str, Any]) -> str:
    def cell(row: dict[str, Any], *path: str, unit: str = "%") -> str:
        for key in path:
            if not isinstance(row, dict) or key not in row:
                return "\\"
            row = row[key]
        return f"{row:.1f}{unit}"

    lines = ["| | k-NN | Lin. | Fin. | NMI | ARI | ACC |", "|---|---|---|---|---|---|---|"]
    for name, label in (("raw_pixels", "raw pixels"), ("random_init", "random init"), ("ibot", "iBOT")):
        row = results[name]
        cells = [cell(row, "knn", "top1"), cell(row, "linear", "top1"), cell(row, "finetune", "top1")]
        cells += [cell(row, "kmeans", "nmi", unit=""), cell(row, "kmeans", "ari", unit=""), cell(row, "kmeans", "acc")]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    proto = results["ibot"].get("prototypes")
    if proto:
        lines.append(f"| iBOT, head prototypes ({proto['num_clusters']} used) | | | | {proto['nmi']:.1f} | "
                     f"{proto['ari']:.1f} | {proto['acc']:.1f}% |")
    return "\n".join(lines)


def main() -> int:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.work_dir)
    overrides = [f"data.data={args.data}", f"run.output_dir={work / 'pretrain'}", f"run.seed={args.seed}",
                 "run.knn_eval=false", "run.progress=false"]
    if args.pretrain_epochs is not None:
        warmup = resolve_config("cpu").loss.warmup_teacher_temp_epochs
        overrides += [f"optim.epochs={args.pretrain_epochs}",
                      f"loss.warmup_teacher_temp_epochs={min(warmup, args.pretrain_epochs)}"]
    cfg = resolve_config("cpu", overrides=overrides)
    n_train, n_val = len(build_dataset(args.data, "train")), len(build_dataset(args.data, "val"))
    print(f"Fashion-MNIST quality benchmark on {args.data}: {n_train} train / {n_val} test images", flush=True)
    times: dict[str, dict[str, float]] = {}
    protocols = Protocols(args.data, cfg.data.global_crops_size, args.linear_epochs, args.seed)
    results: dict[str, Any] = {"data": args.data, "num_train": n_train, "num_val": n_val, "threads":
                               torch.get_num_threads(), "budget": {"pretrain_epochs": cfg.optim.epochs,
                                                                   "linear_epochs": args.linear_epochs,
                                                                   "finetune_epochs": args.finetune_epochs}}

    with clock(times, "raw_pixels"):
        def pixels(x: torch.Tensor) -> torch.Tensor:
            return x[:, :1].flatten(1)  # (B, 3, 28, 28) gray -> (B, 784)

        raw = protocols.features(pixels, {"checkpoint": "raw-pixels"}, "pixels")
        results["raw_pixels"] = {"knn": protocols.knn(*raw), "linear": protocols.linear(*raw),
                                 "kmeans": protocols.kmeans(raw[2], raw[3])}

    m = cfg.model
    sizes = {k: v for k, v in backbone_kwargs(cfg).items() if k not in ("patch_size", "img_size")}
    with clock(times, "random_init"):
        random_net = random_backbone(m.arch, m.patch_size, cfg.data.global_crops_size, seed=args.seed, **sizes)
        results["random_init"] = protocols.network(random_net, "random-init")

    checkpoint = Path(args.checkpoint) if args.checkpoint else work / "pretrain" / CHECKPOINT_NAME
    if not args.checkpoint:
        from ibot.train.trainer import Pretrainer

        with clock(times, "pretrain"):
            Pretrainer(cfg).fit()
    with clock(times, "ibot_frozen"):
        pretrained = load_backbone(checkpoint)
        results["ibot"] = protocols.network(pretrained, "ibot")
        ids, labels, _ = split_features(prototype_assigner(pretrained.backbone, load_head(checkpoint).eval()),
                                        pretrained.identity(), "prototype-argmax", args.data, "val",
                                        protocols.transform, batch_size=512)
        results["ibot"]["prototypes"] = cluster_scores(labels.numpy(), ids[:, 0].long().numpy())

    with clock(times, "finetune_ibot"):
        results["ibot"]["finetune"] = finetune(load_backbone(checkpoint, drop_path_rate=0.1), args.data, args,
                                               work / "finetune_ibot")
    with clock(times, "finetune_random_init"):
        fresh = random_backbone(m.arch, m.patch_size, cfg.data.global_crops_size, seed=args.seed,
                                drop_path_rate=0.1, **sizes)
        results["random_init"]["finetune"] = finetune(fresh, args.data, args, work / "finetune_random_init")

    ibot, rand, raw = results["ibot"], results["random_init"], results["raw_pixels"]
    results["checks"] = {
        "knn_beats_baselines": ibot["knn"]["top1"] > max(rand["knn"]["top1"], raw["knn"]["top1"]),
        "linear_beats_baselines": ibot["linear"]["top1"] > max(rand["linear"]["top1"], raw["linear"]["top1"]),
        "finetune_beats_random_init": ibot["finetune"]["top1"] > rand["finetune"]["top1"],
    }
    results["seconds"] = times
    results["command"] = "python benchmarks/fashion_mnist_quality.py " + " ".join(sys.argv[1:])
    results["machine"] = _common.machine_info()
    results["table"] = table(results)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2))
    cpu_min = sum(t["cpu_s"] for t in times.values()) / 60
    print(f"\n{results['table']}\n\nchecks: {results['checks']}\nCPU time: {cpu_min:.1f} min in all "
          f"(pre-training {times.get('pretrain', {}).get('cpu_s', 0) / 60:.1f} min); written to {output}")
    return 0 if all(results["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
