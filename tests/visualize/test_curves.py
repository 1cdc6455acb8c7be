"""Training curves from log.jsonl: every panel drawn with the logged values, PNG size and ink."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from ibot.cli import main
from ibot.visualize.curves import DPI, FIGSIZE, KNN_PANEL, NMI_PANEL, PANELS, curves_figure, plot_run, read_log

KEYS = ("loss", "cls", "patch", "koleo", "lr", "wd", "momentum", "teacher_temp", "teacher_patch_temp", "img_per_s",
        "teacher_entropy_cls", "teacher_batch_entropy_cls", "student_cls_spread", "cls_agreement")


def record(kind: str, step: int, epoch: int, **extra) -> dict:
    values = {key: 1.0 + math.sin(step + i) / 3 for i, key in enumerate(KEYS)}
    return {"type": kind, "epoch": epoch, **({"step": step, "global_step": step} if kind == "step" else {}),
            **values, "data_fraction": 0.1, "skipped_images": 0, **extra}


def write_log(folder, records) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_png_has_a_drawn_panel_per_quantity_and_knn(tmp_path):
    records = [record("step", s, s // 50) for s in range(10, 101, 10)]
    records += [record("epoch", 0, 0, knn_top1=40.0, nmi=20.0), record("epoch", 0, 1, knn_top1=55.5, nmi=30.0)]
    records.insert(3, {"type": "warning", "message": "a collapse warning is not drawn"})
    write_log(tmp_path / "run", records)
    path = plot_run(tmp_path / "run")
    assert path == tmp_path / "run" / "curves.png"
    png = np.asarray(Image.open(path).convert("RGB")).astype(int)
    assert png.shape[:2] == (FIGSIZE[1] * DPI, FIGSIZE[0] * DPI)

    fig, axes = curves_figure(read_log(path.parent / "log.jsonl"))
    assert list(axes) == [*PANELS, KNN_PANEL, NMI_PANEL]
    assert [list(line.get_ydata()) for line in axes[KNN_PANEL].lines] == [[40.0, 55.5]]
    assert [list(line.get_ydata()) for line in axes[NMI_PANEL].lines] == [[20.0, 30.0]]
    assert [list(line.get_xdata()) for line in axes[KNN_PANEL].lines] == [[1, 2]]  # drawn at each epoch's end
    for name, (keys, _) in PANELS.items():
        lines = axes[name].lines
        assert [line.get_label() for line in lines] == list(keys)
        assert list(lines[0].get_xdata()) == list(range(10, 101, 10))
        assert list(lines[0].get_ydata()) == [r[keys[0]] for r in records if r["type"] == "step"]
        assert list(lines[-1].get_ydata()) == [r[keys[-1]] for r in records if r["type"] == "step"]
    fig.canvas.draw()
    for name, ax in axes.items():  # the same layout as the PNG: each panel holds coloured ink
        box = ax.get_window_extent()
        top, bottom = int(png.shape[0] - box.y1), int(png.shape[0] - box.y0)
        panel = png[top + 2:bottom - 2, int(box.x0) + 2:int(box.x1) - 2]
        colourful = (panel.max(-1) - panel.min(-1)) > 60  # the lines, not the grey grid or black text
        assert colourful.mean() > 0.002, name


def test_resumed_steps_keep_the_last_record_and_no_knn_means_no_panel(tmp_path):
    first = [record("step", s, 0) for s in (10, 20, 30)]
    again = record("step", 20, 0)
    again["loss"] = 123.0
    write_log(tmp_path, [*first, again])
    log = read_log(tmp_path / "log.jsonl")
    assert [r["global_step"] for r in log.steps] == [10, 20, 30] and log.steps[1]["loss"] == 123.0
    _, axes = curves_figure(log)
    assert KNN_PANEL not in axes


def test_epoch_only_logs_are_drawn_per_epoch(tmp_path):
    write_log(tmp_path, [record("epoch", 0, e) for e in range(3)])
    _, axes = curves_figure(read_log(tmp_path / "log.jsonl"))
    assert list(axes["loss"].lines[0].get_xdata()) == [1, 2, 3] and axes["loss"].get_xlabel() == "epoch"


def test_errors_name_the_file_and_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="run folder not found"):
        plot_run(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="log.jsonl not found: give the --output-dir"):
        plot_run(tmp_path)
    (tmp_path / "log.jsonl").write_text(json.dumps(record("step", 1, 0)) + "\n{oops\n")
    with pytest.raises(ValueError, match="line 2: not JSON"):
        plot_run(tmp_path)
    (tmp_path / "log.jsonl").write_text(json.dumps(record("step", 1, 0)) + '\n{"type": "st')  # being written
    assert len(read_log(tmp_path / "log.jsonl").steps) == 1
    with pytest.raises(ValueError, match="must end in .png"):
        plot_run(tmp_path, tmp_path / "curves.jpg")


def test_command(tmp_path, capsys):
    write_log(tmp_path / "run", [record("step", s, 0) for s in (10, 20)])
    out = tmp_path / "c.png"
    assert main(["plot", str(tmp_path / "run"), "--output", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out) and Image.open(out).size == (2000, 800)
