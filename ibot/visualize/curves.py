"""Training curves of a run from its ``log.jsonl`` (written by :mod:`ibot.train.run_logger`).

Step records (``"type": "step"``) are drawn against the global step; when a run logged none, the
epoch records are drawn against the epoch instead. ``knn_top1`` (periodic k-NN evaluation) comes
with epoch records and is drawn against the epoch when present. A resumed run appends to the same
log; the last record of a repeated step wins. A running run can be plotted: a last line still
being written is left out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ibot.visualize.grid import DPI, save_png

# panel title -> (record keys drawn in it, y label)
PANELS: dict[str, tuple[tuple[str, ...], str]] = {
    "loss": (("loss", "cls", "patch", "koleo"), "loss"),
    "learning rate": (("lr",), "lr"),
    "weight decay": (("wd",), "wd"),
    "teacher EMA momentum": (("momentum",), "momentum"),
    "teacher temperature": (("teacher_temp", "teacher_patch_temp"), "temperature"),
    "collapse signs": (("teacher_entropy_cls", "teacher_batch_entropy_cls", "student_cls_spread", "cls_agreement"),
                       "share"),
    "throughput": (("img_per_s",), "images / s"),
}
KNN_PANEL = "k-NN top-1 (teacher)"
NMI_PANEL = "NMI of teacher prototypes vs labels"
FIGSIZE = (20.0, 8.0)  # inches at 100 dpi: 2000 x 800 pixels


@dataclass
class RunLog:
    """The records of one run, by kind, in order of their step (or epoch)."""

    steps: list[dict[str, Any]] = field(default_factory=list)
    epochs: list[dict[str, Any]] = field(default_factory=list)


def find_log(run_dir: str | Path) -> Path:
    """``RUN_DIR/log.jsonl`` (or the file itself), with one-line errors when it is not there."""
    path = Path(run_dir)
    if path.is_file():
        return path
    if not path.exists():
        raise FileNotFoundError(f"run folder not found: {path}")
    log = path / "log.jsonl"
    if not log.is_file():
        raise FileNotFoundError(f"{log} not found: give the --output-dir of an 'ibot pretrain' run")
    return log


def read_log(path: str | Path) -> RunLog:
    """Parse ``log.jsonl``; a repeated step (or epoch) keeps its last record (resumed runs)."""
    path = Path(path)
    steps: dict[int, dict[str, Any]] = {}
    epochs: dict[int, dict[str, Any]] = {}
    text = path.read_text()
    lines = text.splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines) and not text.endswith("\n"):  # a live run is writing this line
                break
            raise ValueError(f"{path}, line {number}: not JSON ({exc.msg}); "
                             "is it the log.jsonl of an 'ibot pretrain' run?") from None
        kind = record.get("type") if isinstance(record, dict) else None
        if kind == "step" and "global_step" in record:
            steps[int(record["global_step"])] = record
        elif kind == "epoch" and "epoch" in record:
            epochs[int(record["epoch"])] = record
    if not steps and not epochs:
        raise ValueError(f"{path} has no step or epoch records; let the run log at least one step "
                         "(run.log_every_steps)")
    return RunLog([steps[k] for k in sorted(steps)], [epochs[k] for k in sorted(epochs)])


def _draw(ax: Axes, records: list[dict[str, Any]], x_key: str, keys: tuple[str, ...], offset: int = 0) -> bool:
    """One line per key present in the records; True if anything was drawn."""
    drawn = False
    for key, style in zip(keys, ("-", "--", ":", "-.")):
        points = [(r[x_key] + offset, r[key]) for r in records if isinstance(r.get(key), (int, float))]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, style, label=key, marker="o" if len(points) < 3 else None, markersize=3)
            drawn = True
    if drawn and len(keys) > 1:
        ax.legend(fontsize=8)
    return drawn


def curves_figure(log: RunLog, title: str = "") -> tuple[Figure, dict[str, Axes]]:
    """A figure with one panel per quantity (``PANELS``, then k-NN top-1 and the prototypes' NMI
    when the run has them)."""
    records, x_key, offset, x_label = log.steps, "global_step", 0, "step"
    if not records:  # epoch records only: epoch e is drawn at its end, e + 1
        records, x_key, offset, x_label = log.epochs, "epoch", 1, "epoch"
    per_epoch = {KNN_PANEL: ("knn_top1", "top-1 (%)"), NMI_PANEL: ("nmi", "NMI (%)")}
    drawn = {name: [r for r in log.epochs if isinstance(r.get(key), (int, float))]
             for name, (key, _) in per_epoch.items()}
    names = [*PANELS, *(name for name in per_epoch if drawn[name])]
    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    FigureCanvasAgg(fig)
    grid = fig.subplots(2, 5).flatten()
    axes: dict[str, Axes] = {}
    for ax, name in zip(grid, names):
        if name in per_epoch:
            key, y_label = per_epoch[name]
            _draw(ax, drawn[name], "epoch", (key,), offset=1)
            ax.set_xlabel("epoch")
            ax.set_ylabel(y_label)
        else:
            keys, y_label = PANELS[name]
            if not _draw(ax, records, x_key, keys, offset):
                ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="grey")
            ax.set_xlabel(x_label)
            ax.set_ylabel(y_label)
        ax.set_title(name)
        ax.grid(alpha=0.3)
        axes[name] = ax
    for ax in grid[len(names):]:
        ax.set_axis_off()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig, axes


def plot_run(run_dir: str | Path, output: str | Path | None = None) -> Path:
    """Draw the curves of ``run_dir`` to ``output`` (default ``RUN_DIR/curves.png``)."""
    if output is not None and Path(output).suffix.lower() != ".png":
        raise ValueError(f"output {output} must end in .png")
    log_path = find_log(run_dir)
    log = read_log(log_path)
    output = Path(output) if output else log_path.parent / "curves.png"
    last = log.steps[-1] if log.steps else log.epochs[-1]
    fig, _ = curves_figure(log, f"{log_path.parent.name}: {len(log.steps)} step and {len(log.epochs)} epoch "
                                f"records, last at epoch {last.get('epoch', '?')}")
    return save_png(fig, output)
