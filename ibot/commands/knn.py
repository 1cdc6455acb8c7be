"""``ibot knn``: weighted k-NN classification on frozen features: the [CLS] token (DINO / iBOT
protocol, the default) or the flattened patch-token grid (``--features patch-grid``)."""

from __future__ import annotations

import argparse

from ibot.commands import _eval_args as common
from ibot.commands import command


def add_arguments(p: argparse.ArgumentParser) -> None:
    common.add_model_arguments(p)
    common.add_data_arguments(p)
    g = p.add_argument_group("k-NN")
    g.add_argument("--ks", type=int, nargs="+", default=[10, 20, 100, 200], help="numbers of neighbours")
    g.add_argument("--temperature", type=float, default=0.07, help="votes are weighted by exp(similarity / T)")
    g.add_argument("--features", choices=("cls", "patch-grid"), default="cls",
                   help="cls: the final [CLS] token (official); patch-grid: the last block's patch tokens, "
                        "flattened in grid order (h x w x D values an image: for small images)")


@command("knn", "weighted k-NN on frozen [CLS] (or patch-grid) features (cosine, T = 0.07)")(add_arguments)
@common.processes
def run(args: argparse.Namespace) -> int:
    from ibot.eval.features import image_features
    from ibot.eval.knn import knn_classify

    if min(args.ks) < 1 or args.temperature <= 0:
        raise ValueError("--ks must be positive and --temperature above 0")
    loaded = common.load_model(args)
    forward = image_features(loaded.backbone, args.features)
    train_x, train_y, val_x, val_y, info = common.train_val_features(args, loaded, forward, args.features)
    results = knn_classify(train_x, train_y, val_x, val_y, ks=args.ks, temperature=args.temperature, sharded=True)
    print(f"k-NN on {info['data']} ({info['num_train']} train / {info['num_val']} val), {loaded.name} {args.key}, "
          f"{args.features} features:")
    for k, acc in results.items():
        print(f"  k={k:<4d} top-1 {acc['top1']:6.2f}%  top-5 {acc['top5']:6.2f}%")
    best = max(results.items(), key=lambda kv: kv[1]["top1"])
    common.write_results(args, "knn", {**info, "features": args.features, "temperature": args.temperature,
                                       "results": {str(k): v for k, v in results.items()},
                                       "top1": best[1]["top1"], "best_k": best[0]})
    return 0
