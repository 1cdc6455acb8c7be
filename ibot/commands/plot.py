"""``ibot plot``: the training curves of a pre-training run as one PNG."""

from __future__ import annotations

import argparse

from ibot.commands import add_output_file, command


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="the --output-dir of an 'ibot pretrain' run (or its log.jsonl)")
    add_output_file(p, "PNG file to write (default: RUN_DIR/curves.png)", metavar="PNG")


@command("plot", "training curves (losses, lr, wd, momentum, temperatures, k-NN, img/s) from RUN_DIR/log.jsonl")(
    add_arguments)
def run(args: argparse.Namespace) -> int:
    from ibot.visualize.curves import plot_run

    print(plot_run(args.run_dir, args.output))
    return 0
