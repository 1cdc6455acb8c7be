"""``ibot cluster``: unsupervised classification scored with NMI, ARI and Hungarian accuracy."""

from __future__ import annotations

import argparse

from ibot.commands import _eval_args as common
from ibot.commands import command


def add_arguments(p: argparse.ArgumentParser) -> None:
    common.add_model_arguments(p)
    common.add_data_arguments(p)
    g = p.add_argument_group("clustering")
    g.add_argument("--methods", nargs="+", choices=("prototypes", "kmeans"), default=["prototypes", "kmeans"],
                   help="argmax over the pre-training head's [CLS] prototypes (official) and/or k-means on "
                        "[CLS] features")
    g.add_argument("--split", default="val", help="split whose images are clustered")
    g.add_argument("--num-clusters", type=int, help="k of k-means (default: the number of classes)")
    g.add_argument("--seed", type=int, default=0, help="k-means seed")


@command("cluster", "unsupervised classification: head prototypes and k-means, NMI / ARI / ACC")(add_arguments)
@common.processes
def run(args: argparse.Namespace) -> int:
    from ibot.data.datasets import build_dataset
    from ibot.eval.checkpoints import load_head
    from ibot.eval.cluster import cluster_scores, kmeans_clusters, prototype_assigner
    from ibot.eval.features import evaluation_transform, split_features

    loaded = common.load_model(args)
    data = common.data_spec(args, loaded)
    transform = evaluation_transform(common.image_size(args, loaded), args.crop_pct)
    dev = common.device(args)
    backbone = loaded.backbone.to(dev).eval()
    held = common.holdout(args)
    extract = dict(cache=common.feature_cache(args), holdout=held, batch_size=args.batch_size,
                   num_workers=args.num_workers, device=dev, progress=not args.no_progress, sharded=True)
    identity = loaded.identity()
    if "prototypes" in args.methods:
        head = load_head(args.checkpoint, args.key).to(dev)
        ids, id_labels, _ = split_features(prototype_assigner(backbone, head), identity, "prototype-argmax", data,
                                           args.split, transform, **extract)
    if "kmeans" in args.methods:
        features, labels, _ = split_features(backbone, identity, "cls", data, args.split, transform, **extract)
    if not common.is_main():  # the scores are computed on rank 0; the others helped with the features
        return 0
    results = {}
    if "prototypes" in args.methods:
        results["prototypes"] = {**cluster_scores(id_labels.numpy(), ids[:, 0].long().numpy()),
                                 "num_prototypes": head.out_dim}
    if "kmeans" in args.methods:
        k = args.num_clusters or len(build_dataset(data, args.split, held).classes)
        results["kmeans"] = {**cluster_scores(labels.numpy(), kmeans_clusters(features, k, seed=args.seed)), "k": k}
    print(f"unsupervised classification of {data} ({args.split}{f', {held.describe()}' if held else ''}), "
          f"{loaded.name} {args.key}:")
    for method, r in results.items():
        print(f"  {method:<10} NMI {r['nmi']:6.2f}  ARI {r['ari']:6.2f}  ACC {r['acc']:6.2f}%  "
              f"purity {r['purity']:6.2f}%  ({r['num_clusters']} clusters used)")
    common.write_results(args, "cluster", {"checkpoint": args.checkpoint, "key": args.key, "arch": loaded.arch,
                                           "data": data, "split": args.split, **common.holdout_info(held),
                                           "results": results})
    return 0
