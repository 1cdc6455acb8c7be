"""The experiment cycle behind ``./run.sh``: pre-training and evaluations chained in one call.

Each stage runs as its own ``python -m ibot.cli STAGE ...`` process, in the order given; a stage
that fails stops the chain with its name and exit status. Afterwards the results of this call's
stages are printed as the official README's model table, written to ``OUTPUT_DIR/results.json``
(and ``./results.json``), and the training curves are drawn in ``OUTPUT_DIR/curves.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ibot.files import replaced_atomically, write_text_atomically

STAGES = ("pretrain", "knn", "linear", "finetune", "cluster", "semisup")
DEFAULT_STAGES = "pretrain+knn+linear+finetune"
EMBEDDED_DATA = "fashion-mnist:subset"
# Budgets of the few-minute demo (preset cpu only, before the user's own stage options, which win).
# Pre-training keeps the preset's own schedule (the cpu preset is sized for minutes).
CPU_BUDGETS: dict[str, list[str]] = {
    "pretrain": [],
    "knn": [],
    "linear": ["--epochs", "30", "--train-batch-size", "256"],  # 1024 leaves 6 steps per epoch on 6k images
    # six epochs (about a minute) cannot carry the official 100-epoch regularisation (mixup, cutmix,
    # RandAugment, erasing): the short recipe (ibot.eval.finetune_config.RECIPES; docs/design.md)
    "finetune": ["--recipe", "short", "--epochs", "6", "--batch-size", "64"],
    "cluster": [],
    "semisup": [],
}

HELP = f"""\
The pre-training + evaluation cycle in one command.

STAGES is a '+'-separated list run in that order (default {DEFAULT_STAGES}):
  pretrain   iBOT pre-training                 -> OUTPUT_DIR/pretrain/checkpoint.safetensors, log.jsonl
             (replaces the run there; --pretrain-args "--resume auto" continues it instead)
  knn        weighted k-NN on frozen [CLS]      -> OUTPUT_DIR/eval/knn.json
  linear     linear probe with an lr sweep      -> OUTPUT_DIR/eval/linear.json
  finetune   end-to-end fine-tuning             -> OUTPUT_DIR/finetune/finetune.json, checkpoint
  cluster    head prototypes + k-means, NMI/ARI/ACC -> OUTPUT_DIR/eval/cluster.json
  semisup    logistic regression, 1% / 10% labels   -> OUTPUT_DIR/eval/semisup.json
Evaluation stages read the checkpoint of the pretrain stage (or --checkpoint). A failing stage
stops the chain with its name and exit status. At the end: the model table (Arch., Par., PS =
prediction shape (Block/Rand), Ep. = pre-training epochs, k-NN, Lin., Fin.), OUTPUT_DIR/results.json (copied to
./results.json) and OUTPUT_DIR/curves.png.

With --preset cpu (the default) the evaluation stages get small budgets so that the whole cycle
takes minutes on 2 cores (pre-training keeps the preset's schedule):
{chr(10).join(f"  {s:<9}  {' '.join(a)}" for s, a in CPU_BUDGETS.items() if a)}
Options given with --STAGE-args come after these and win; `ibot STAGE --help` lists them.

examples:
  ./run.sh
  ./run.sh pretrain+knn --pretrain-args "--epochs 4 optim.lr=2e-3"
  ./run.sh knn+cluster+semisup --checkpoint runs/cycle/pretrain/checkpoint.safetensors
  ./run.sh --preset vit_small_16 --data /data/imagenet --output-dir runs/in1k --finetune-args "--epochs 200"
"""


def _glue_stage_args(argv: list[str]) -> list[str]:
    """``--knn-args "--ks 20"`` -> ``--knn-args=--ks 20``: argparse takes a value that starts with
    a dash for an option unless it is glued to its flag."""
    flags, glued, i = {f"--{stage}-args" for stage in STAGES}, [], 0
    while i < len(argv):
        if argv[i] in flags and i + 1 < len(argv):
            glued.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            glued.append(argv[i])
            i += 1
    return glued


def build_parser() -> argparse.ArgumentParser:
    """The options of ``./run.sh``."""
    p = argparse.ArgumentParser(prog="run.sh", description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stages", nargs="?", default=DEFAULT_STAGES, help="e.g. pretrain+knn+linear+finetune")
    p.add_argument("--preset", default="cpu", help="pre-training preset (ibot pretrain --preset)")
    p.add_argument("--data", default=EMBEDDED_DATA,
                   help="dataset for every stage: fashion-mnist[:subset|:FOLDER], cifar10:PATH, ..., or an ImageFolder")
    p.add_argument("--output-dir", default="runs/cycle", help="one folder per stage below it")
    p.add_argument("--checkpoint", "-c", metavar="PATH", help="pre-trained checkpoint for the evaluation stages "
                                                              "(default: OUTPUT_DIR/pretrain/checkpoint.safetensors)")
    for stage in STAGES:
        p.add_argument(f"--{stage}-args", default="", metavar="'OPTIONS'", help=f"extra options for ibot {stage}")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(_glue_stage_args(sys.argv[1:] if argv is None else argv))
    args.stage_list = [s for s in args.stages.split("+") if s]
    unknown = [s for s in args.stage_list if s not in STAGES]
    if unknown or not args.stage_list:
        p.error(f"unknown stage(s) {', '.join(unknown) or repr(args.stages)}; choose from {', '.join(STAGES)}")
    if "pretrain" in args.stage_list[1:]:
        p.error("pretrain must be the first stage: the others evaluate its checkpoint")
    if "pretrain" in args.stage_list and args.checkpoint:
        p.error("--checkpoint names a checkpoint to evaluate instead of pre-training; drop it or the pretrain stage")
    for stage in STAGES:
        try:
            shlex.split(getattr(args, f"{stage}_args"))
        except ValueError as exc:
            p.error(f"--{stage}-args: {exc}")
    return args


def stage_command(stage: str, args: argparse.Namespace, out: Path, checkpoint: Path) -> list[str]:
    """The ``ibot`` command line of one stage."""
    budget = CPU_BUDGETS[stage] if args.preset == "cpu" else []
    extra = shlex.split(getattr(args, f"{stage}_args"))
    if stage == "pretrain":
        base = ["--data", args.data, "--output-dir", str(out / "pretrain")]
        if not any(a == "--resume" or a.startswith("--resume=") for a in extra):
            # a new cycle replaces the pre-training of the previous one in its own folder
            base = ["--preset", args.preset, *base, "--overwrite"]
        if "knn" in args.stage_list:
            base.append("--no-knn")  # the knn stage does it properly
    else:
        folder = "finetune" if stage == "finetune" else "eval"
        base = ["--checkpoint", str(checkpoint), "--data", args.data, "--output-dir", str(out / folder)]
    return [sys.executable, "-m", "ibot.cli", stage, *base, *budget, *extra]


def _child_env() -> dict[str, str]:
    """The environment of a stage: this process's, with this copy of ``ibot`` first on the path."""
    package_root = str(Path(__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": package_root + (os.pathsep + path if path else "")}


def pretrain_checkpoint(args: argparse.Namespace) -> Path:
    """The checkpoint the evaluation stages read: ``--checkpoint``, else the pretrain stage's."""
    from ibot.formats.ours import CHECKPOINT_NAME

    return Path(args.checkpoint) if args.checkpoint else Path(args.output_dir) / "pretrain" / CHECKPOINT_NAME


def run_stages(args: argparse.Namespace) -> tuple[int, dict[str, float]]:
    out = Path(args.output_dir)
    checkpoint = pretrain_checkpoint(args)
    if args.stage_list[0] != "pretrain" and not checkpoint.is_file():
        print(f"run.sh: no checkpoint at {checkpoint}: run the pretrain stage first or give --checkpoint",
              file=sys.stderr)
        return 2, {}
    timings = {}
    for stage in args.stage_list:
        cmd = stage_command(stage, args, out, checkpoint)
        print(f"\n=== stage {stage}: ibot {shlex.join(cmd[3:])}", flush=True)
        tic = time.perf_counter()
        try:
            status = subprocess.run(cmd, env=_child_env()).returncode
        except KeyboardInterrupt:
            print(f"run.sh: interrupted during stage '{stage}'", file=sys.stderr)
            return 130, timings
        timings[stage] = time.perf_counter() - tic
        if status != 0:
            print(f"run.sh: stage '{stage}' failed with exit status {status}; stopping the chain", file=sys.stderr)
            return status, timings
    return 0, timings


def _read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def collect_results(args: argparse.Namespace, timings: dict[str, float]) -> dict[str, Any]:
    """One summary of this call's stages, read from the files they wrote."""
    from ibot.eval.checkpoints import load_backbone

    out = Path(args.output_dir)
    checkpoint = pretrain_checkpoint(args)
    results: dict[str, Any] = {"preset": args.preset, "data": args.data, "stages": args.stage_list,
                               "checkpoint": str(checkpoint), "seconds": timings}
    if checkpoint.is_file():
        loaded = load_backbone(checkpoint)
        results["model"] = {"arch": loaded.name, "params_m": loaded.num_params / 1e6,
                            "pretrain_epochs": loaded.meta.get("epoch"), "pretrain_steps": loaded.meta.get("global_step"),
                            "pred_shape": (loaded.meta.get("config") or {}).get("mask", {}).get("pred_shape")}
    files = {"knn": out / "eval" / "knn.json", "linear": out / "eval" / "linear.json",
             "finetune": out / "finetune" / "finetune.json", "cluster": out / "eval" / "cluster.json",
             "semisup": out / "eval" / "semisup.json"}
    for stage, path in files.items():
        if stage in args.stage_list and (found := _read(path)) is not None:
            found.pop("history", None)
            results[stage] = found
    return results


def _knn_top1(knn: dict[str, Any]) -> tuple[float, str]:
    """k = 20 as the papers report it when it was run, else the best k."""
    if "20" in knn["results"]:
        return knn["results"]["20"]["top1"], "20"
    return knn["top1"], str(knn["best_k"])


def format_table(results: dict[str, Any]) -> str:
    """The official README's model table (Markdown), '\\' where a stage was not run."""
    model = results.get("model", {})
    cols = ["Arch.", "Par.", "PS", "Ep.", "k-NN", "Lin.", "Fin."]
    row = [model.get("arch", "\\"), f"{model['params_m']:.1f}M" if model else "\\",
           str(model.get("pred_shape") or "\\").capitalize(),
           f"{model['pretrain_epochs']}" if model.get("pretrain_epochs") is not None else "\\",
           f"{_knn_top1(results['knn'])[0]:.1f}%" if "knn" in results else "\\",
           f"{results['linear']['top1']:.1f}%" if "linear" in results else "\\",
           f"{results['finetune']['top1']:.1f}%" if "finetune" in results else "\\"]
    if "cluster" in results:
        method = "prototypes" if "prototypes" in results["cluster"]["results"] else "kmeans"
        scores = results["cluster"]["results"][method]
        cols += ["NMI", "ARI", "ACC"]
        row += [f"{scores['nmi']:.1f}", f"{scores['ari']:.1f}", f"{scores['acc']:.1f}%"]
    if "semisup" in results:
        for name, r in results["semisup"]["results"].items():
            cols.append(f"{name} labels")
            row.append(f"{r['top1']:.1f}%")
    widths = [max(len(c), len(v)) for c, v in zip(cols, row)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    return "\n".join([line(cols), "|" + "|".join("-" * (w + 2) for w in widths) + "|", line(row)])


def plot_curves(output_dir: Path, path: Path) -> Path | None:
    """Pre-training losses per step (and fine-tuning accuracy per epoch) from the runs' log.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ibot.visualize.curves import read_log

    pretrain_log, finetune_log = output_dir / "pretrain" / "log.jsonl", output_dir / "finetune" / "log.jsonl"
    # read_log keeps the last record of a step repeated by a resumed run
    pretrain = read_log(pretrain_log).steps if pretrain_log.is_file() else []
    finetune = [json.loads(line) for line in finetune_log.read_text().splitlines() if line.strip()] \
        if finetune_log.is_file() else []
    if not pretrain and not finetune:
        return None
    panels = [p for p in (pretrain, finetune) if p]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    ax_iter = iter(axes[0])
    if pretrain:
        ax = next(ax_iter)
        steps = [r["global_step"] for r in pretrain]
        for key in ("loss", "cls", "patch"):
            ax.plot(steps, [r[key] for r in pretrain], label=key)
        ax.set(title="pre-training loss", xlabel="step", ylabel="loss")
        ax.legend()
    if finetune:
        ax = next(ax_iter)
        epochs = [r["epoch"] + 1 for r in finetune]
        ax.plot(epochs, [r["val_top1"] for r in finetune], marker="o", label="val top-1")
        if "ema_val_top1" in finetune[0]:
            ax.plot(epochs, [r["ema_val_top1"] for r in finetune], marker="o", label="EMA val top-1")
        ax.set(title="fine-tuning", xlabel="epoch", ylabel="accuracy (%)")
        ax.legend()
    fig.tight_layout()
    with replaced_atomically(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    status, timings = run_stages(args)
    if status != 0:
        return status
    out = Path(args.output_dir)
    results = collect_results(args, timings)
    table = format_table(results)
    results["table"] = table
    text = json.dumps(results, indent=2)
    for path in (out / "results.json", Path("results.json")):
        write_text_atomically(path, text)
    curves = plot_curves(out, out / "curves.png")
    print(f"\n{table}\n")
    print(f"results: {out / 'results.json'} (copied to ./results.json)" + (f", curves: {curves}" if curves else ""))
    print("time per stage: " + ", ".join(f"{s} {t:.0f} s" for s, t in timings.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
