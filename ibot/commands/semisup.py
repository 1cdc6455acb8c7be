"""``ibot semisup``: logistic regression on frozen features with 1% and 10% of the labels."""

from __future__ import annotations

import argparse

from ibot.commands import _eval_args as common
from ibot.commands import command


def add_arguments(p: argparse.ArgumentParser) -> None:
    common.add_model_arguments(p)
    common.add_data_arguments(p)
    g = p.add_argument_group("semi-supervised")
    g.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.1],
                   help="fractions of the training labels kept (class-balanced)")
    g.add_argument("--seed", type=int, default=0, help="seed of the labelled subsets")
    g.add_argument("--C", type=float, default=1.0, help="inverse L2 regularisation of the logistic regression")
    g.add_argument("--max-iter", type=int, default=1000, help="L-BFGS iterations")


@command("semisup", "logistic regression on frozen features with 1 and 10 percent of the labels")(add_arguments)
@common.processes
def run(args: argparse.Namespace) -> int:
    from ibot.eval.semisup import semisupervised_eval

    loaded = common.load_model(args)
    train_x, train_y, val_x, val_y, info = common.train_val_features(args, loaded, loaded.backbone, "cls")
    if not common.is_main():  # the regressions run on rank 0; the others helped with the features
        return 0
    results = semisupervised_eval(train_x, train_y, val_x, val_y, fractions=args.fractions, seed=args.seed,
                                  C=args.C, max_iter=args.max_iter)
    print(f"semi-supervised logistic regression on {info['data']}, {loaded.name} {args.key}:")
    for name, r in results.items():
        print(f"  {name:>5} of the labels ({r['num_labels']} images): top-1 {r['top1']:6.2f}%")
    common.write_results(args, "semisup", {**info, "seed": args.seed, "C": args.C, "results": results})
    return 0
