"""Pre-training on a multi-core CPU: one process with a thread per core, or one process per core.

Both layouts train the same global batch of the same preset: ``threads`` is one ``ibot pretrain``
process with ``--cores`` torch threads; ``processes`` is ``torchrun --nproc_per_node CORES`` (gloo),
one torch thread each, the per-process batch divided by the cores (the loss's centre, the
gradients and the teacher are the same as one process's; DINOv2's KoLeo term, which the ``cpu``
preset turns on, sees each process's share of the batch). The data-loader workers are shared out
the same way (the ``threads`` layout's workers, divided by the cores, at least one each).

Each run trains ``--steps`` steps from scratch into a temporary folder; its images/s are the median
of the run's own step records (global images per second over each logged window of 10 steps),
leaving out the first ``--skip`` records (start-up, first batches). The layouts alternate over
``--rounds`` rounds (``threads, processes, processes, threads, ...``) so that a ratio is not an
artefact of load that came and went. ::

    python benchmarks/cpu_processes.py
    python benchmarks/cpu_processes.py --data fashion-mnist --steps 200 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ibot.config import resolve_config  # noqa: E402

LAYOUTS = ("threads", "processes")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cpu", help="pre-training preset (default: cpu)")
    p.add_argument("--data", default="fashion-mnist:subset", help="dataset spec (default: the embedded subset)")
    p.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="threads of the one process, "
                   "processes of the other layout (default: every core)")
    p.add_argument("--steps", type=int, default=120, help="steps of each run")
    p.add_argument("--skip", type=int, default=2, help="step records (10 steps each) left out at the start")
    p.add_argument("--rounds", type=int, default=2, help="rounds of both layouts, interleaved")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override of the preset, given to both layouts")
    p.add_argument("--out", help="results file (default benchmarks/results/cpu_processes.json)")
    args = p.parse_args(argv)
    if args.cores < 2:
        p.error("--cores must be at least 2: with one core the two layouts are the same")
    batch = resolve_config(args.preset, overrides=args.set).optim.batch_size_per_device
    if batch % args.cores:
        p.error(f"the batch of {batch} does not divide among --cores {args.cores}")
    if args.steps <= 10 * (args.skip + 1):
        p.error(f"--steps {args.steps} leaves no step record after the {args.skip} skipped ones")
    return args


def command(layout: str, args: argparse.Namespace, out_dir: Path) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of one run of ``layout``."""
    cfg = resolve_config(args.preset, overrides=args.set)
    pretrain = ["pretrain", "--preset", args.preset, "--data", args.data, "--max-steps", str(args.steps),
                "--no-knn", "--no-progress", "--no-tensorboard", "--output-dir", str(out_dir), *args.set]
    if layout == "threads":
        return _common.ibot_command(pretrain, threads=args.cores)
    shares = _common.share_out(cfg.optim.batch_size_per_device, cfg.data.num_workers, args.cores)
    return _common.ibot_command([*pretrain, *shares], processes=args.cores)


def run(layout: str, args: argparse.Namespace, tmp: Path, index: int) -> dict:
    """One run: its images/s (median of the kept step records), wall seconds and step records."""
    out_dir = tmp / f"{layout}_{index}"
    cmd, env = command(layout, args, out_dir)
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"{layout} run failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    records = [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()]
    rates = [r["img_per_s"] for r in records if r.get("type") == "step"][args.skip:]
    losses = [r["loss"] for r in records if r.get("type") == "step"]
    return {"images_per_s": _common.median(rates), "window_rates": rates, "wall_s": wall, "losses": losses}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    order = [layout for i in range(args.rounds) for layout in (LAYOUTS if i % 2 == 0 else LAYOUTS[::-1])]
    runs: dict[str, list[dict]] = {layout: [] for layout in LAYOUTS}
    with tempfile.TemporaryDirectory() as tmp:
        for i, layout in enumerate(order):
            result = run(layout, args, Path(tmp), i)
            runs[layout].append(result)
            print(f"[{i + 1}/{len(order)}] {layout}: {result['images_per_s']:.1f} images/s", flush=True)
    medians = {layout: _common.median([r["images_per_s"] for r in runs[layout]]) for layout in LAYOUTS}
    figures = {
        "settings": {"preset": args.preset, "data": args.data, "cores": args.cores, "steps": args.steps,
                     "skip_records": args.skip, "rounds": args.rounds, "overrides": args.set},
        "images_per_s": medians,
        "processes_over_threads": medians["processes"] / medians["threads"],
        "runs": runs,
    }
    path = _common.write_results("cpu_processes", figures, path=args.out)
    _common.print_table(["layout", "images/s (median)", "per round"],
                        [[layout, medians[layout], ", ".join(f"{r['images_per_s']:.0f}" for r in runs[layout])]
                         for layout in LAYOUTS])
    print(f"\nprocesses / threads: {figures['processes_over_threads']:.2f}x; written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
