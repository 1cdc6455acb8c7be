"""Evaluation throughput: feature extraction (images/s) and weighted k-NN (queries/s).

- Extraction: :func:`ibot.eval.features.extract_features` with a randomly initialised backbone
  (speed does not depend on the weights), end to end (decoding, the evaluation transform, the
  forward pass) and the forward pass alone on pre-made batches. ``vit_small``: ViT-S/16 at 224 px
  on generated JPEG photos of 300-800 px (resize 256, center crop 224); ``cpu``: the ``cpu``
  preset's backbone on the Fashion-MNIST subset (28 px).
- k-NN: :func:`ibot.eval.knn.knn_classify` with k in (10, 20, 100, 200), T = 0.07, on synthetic
  features (class means plus noise) of ``--train-size`` x ``--dim`` against ``--queries`` queries.

    python benchmarks/knn.py
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import _common
import torch
from torch.utils.data import Subset

from ibot.build import backbone_kwargs
from ibot.config import get_preset
from ibot.data.datasets import build_dataset
from ibot.eval.features import EvalDataset, evaluation_transform, extract_features
from ibot.eval.knn import knn_classify
from ibot.models import build_backbone

MODELS = {  # name -> (build_backbone arguments, image size)
    "vit_small": (dict(arch="vit_small", patch_size=16), 224),
    "cpu": (dict(arch=get_preset("cpu").model.arch, **backbone_kwargs(get_preset("cpu"))),
            get_preset("cpu").data.global_crops_size),
}


def bench_extraction(model: str, args: argparse.Namespace, tmp: str) -> dict:
    kwargs, size = MODELS[model]
    torch.manual_seed(0)
    backbone = build_backbone(**kwargs).eval()
    if model == "vit_small":
        base = build_dataset(str(_common.make_jpeg_folder(tmp, n=args.images)))
        source = f"{args.images} generated JPEG photos, 300-800 px"
    else:
        base = Subset(build_dataset("fashion-mnist:subset", split="val"), range(args.images))
        source = f"{args.images} Fashion-MNIST images, 28 px"
    dataset = EvalDataset(base, evaluation_transform(size))
    batch = min(args.batch_size, len(dataset))
    extract_features(backbone, Subset(dataset, range(batch)), batch_size=batch, progress=False)  # warm-up

    start = time.perf_counter()
    features, _, _ = extract_features(backbone, dataset, batch_size=batch, num_workers=args.workers, progress=False)
    end_to_end = len(features) / (time.perf_counter() - start)

    images = torch.randn(batch, 3, size, size)
    n_batches = max(1, len(dataset) // batch)
    start = time.perf_counter()
    with torch.no_grad():
        for _ in range(n_batches):
            backbone(images)
    forward_only = n_batches * batch / (time.perf_counter() - start)
    return {"source": source, "batch_size": batch, "workers": args.workers, "feature_dim": features.shape[1],
            "images_per_s": end_to_end, "forward_only_images_per_s": forward_only}


def bench_knn(args: argparse.Namespace) -> dict:
    gen = torch.Generator().manual_seed(0)
    means = torch.randn(args.classes, args.dim, generator=gen)
    train_labels = torch.randint(0, args.classes, (args.train_size,), generator=gen)
    test_labels = torch.randint(0, args.classes, (args.queries,), generator=gen)
    train = means[train_labels] + 2.0 * torch.randn(args.train_size, args.dim, generator=gen)
    test = means[test_labels] + 2.0 * torch.randn(args.queries, args.dim, generator=gen)
    knn_classify(train, train_labels, test[:64], test_labels[:64], num_classes=args.classes)  # warm-up
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        acc = knn_classify(train, train_labels, test, test_labels, ks=(10, 20, 100, 200), num_classes=args.classes)
        times.append(time.perf_counter() - start)
    seconds = _common.median(times)
    return {"train_size": args.train_size, "queries": args.queries, "dim": args.dim, "classes": args.classes,
            "ks": [10, 20, 100, 200], "queries_per_s": args.queries / seconds, "seconds": seconds,
            "top1_k20": acc[20]["top1"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="cpu,vit_small", help="comma-separated: cpu, vit_small")
    parser.add_argument("--images", type=int, default=64, help="images to extract features from")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=0, help="data-loader workers for extraction")
    parser.add_argument("--train-size", type=int, default=50_000, help="k-NN training features")
    parser.add_argument("--queries", type=int, default=5_000, help="k-NN test features")
    parser.add_argument("--dim", type=int, default=384, help="feature width (ViT-S: 384)")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3, help="k-NN timings (median reported)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", help="results file (default benchmarks/results/knn.json)")
    args = parser.parse_args()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        parser.error(f"--models: unknown {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        extraction = {m: bench_extraction(m, args, str(Path(tmp) / m)) for m in models}
    knn = bench_knn(args)

    _common.print_table(["feature extraction", "data", "batch", "images/s (end to end)", "images/s (forward only)"],
                        [[m, e["source"], e["batch_size"], e["images_per_s"], e["forward_only_images_per_s"]]
                         for m, e in extraction.items()])
    print()
    _common.print_table(["k-NN", "train features", "queries", "dim", "classes", "queries/s", "seconds"],
                        [["k = 10, 20, 100, 200", knn["train_size"], knn["queries"], knn["dim"], knn["classes"],
                          knn["queries_per_s"], knn["seconds"]]])
    path = _common.write_results("knn", {"threads": torch.get_num_threads(), "extraction": extraction, "knn": knn},
                                 path=args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
