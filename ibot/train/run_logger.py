"""Progress bar and JSON-lines log of a run (one line per N steps and per epoch)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from ibot.files import write_text_atomically
from ibot.progress import ProgressBar, progress_bar, write

from ibot.image_io import format_skipped


class EpochMeter:
    """Running sums over the steps of one epoch. Loss terms stay on the device until read, so
    logging is the only host-device synchronisation."""

    def __init__(self, bar: ProgressBar | None) -> None:
        self.bar = bar
        self.sums: dict[str, torch.Tensor] = {}  # over the epoch
        self.window_sums: dict[str, torch.Tensor] = {}  # since the last step record
        self.steps = self.window_steps = self.images = 0
        self.data_time = self.compute_time = 0.0
        self.skipped: dict[str, None] = {}  # unreadable files met this epoch, each once, first seen first
        self.epoch_start = self.window_start = time.perf_counter()
        self.window_images = 0

    def update(self, losses: dict[str, torch.Tensor], batch_size: int, data_time: float, compute_time: float,
               skipped: Iterable[str] = ()) -> None:
        for sums in (self.sums, self.window_sums):
            for key, value in losses.items():
                sums[key] = sums[key] + value if key in sums else value.clone()
        self.steps += 1
        self.window_steps += 1
        self.images += batch_size
        self.window_images += batch_size
        self.data_time += data_time
        self.compute_time += compute_time
        self.skipped.update(dict.fromkeys(skipped))
        if self.bar is not None:
            self.bar.update(1)

    def summary(self, window: bool = True) -> dict[str, float]:
        """Mean losses since the last step record (``window``) or over the epoch, throughput since
        the last call, data/compute split, skipped images."""
        now = time.perf_counter()
        sums, steps = (self.window_sums, self.window_steps) if window else (self.sums, self.steps)
        out = {k: float(v) / max(steps, 1) for k, v in sums.items()}
        if window:
            out["img_per_s"] = self.window_images / max(now - self.window_start, 1e-9)
        else:
            out["img_per_s"] = self.images / max(now - self.epoch_start, 1e-9)
        self.window_sums, self.window_steps = {}, 0
        busy = self.data_time + self.compute_time
        out["data_fraction"] = self.data_time / busy if busy else 0.0
        out["skipped_images"] = len(self.skipped)
        self.window_start, self.window_images = time.perf_counter(), 0
        return out


def _tensorboard_writer(log_dir: Path, purge_step: int | None = None):
    """A TensorBoard ``SummaryWriter``, or None when tensorboard is not installed. ``purge_step``:
    events from this step on, left by an earlier process, are discarded (a resumed run)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)


def trim_log(path: Path, resume_at: int) -> int:
    """Cut ``log.jsonl`` back to a checkpoint taken after ``resume_at`` steps: records are written
    in order, so everything from the first step record past it (or a torn line, left by a crash)
    on was written after the checkpoint, and a resumed run logs those steps again. Returns how
    many records were dropped."""
    if not path.is_file():
        return 0
    lines = path.read_text().splitlines(keepends=True)
    keep = len(lines)
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            keep = i
            break
        if record.get("type") == "step" and record.get("global_step", 0) > resume_at:
            keep = i
            break
    if keep < len(lines):
        write_text_atomically(path, "".join(lines[:keep]))
    return len(lines) - keep


class RunLogger:
    """Writes ``log.jsonl`` (and TensorBoard events under ``tensorboard/`` when asked and
    installed) in the output folder and draws a progress bar; main process only."""

    def __init__(self, output_dir: Path, enabled: bool = True, progress: bool = True,
                 tensorboard: bool = False, resume_at: int | None = None) -> None:
        """``resume_at``: the steps done at the checkpoint a resumed run starts from; what the log
        and the TensorBoard events hold past it is dropped (:func:`trim_log`)."""
        self.enabled = enabled
        self.progress = progress and enabled
        self.path = Path(output_dir) / "log.jsonl"
        self.records: list[dict[str, Any]] = []
        self.bar: ProgressBar | None = None
        dropped = trim_log(self.path, resume_at) if enabled and resume_at is not None else 0
        if dropped:
            self.info(f"{self.path}: dropped {dropped} records written after the checkpoint (past step {resume_at})")
        purge = None if resume_at is None else resume_at + 1
        self.writer = _tensorboard_writer(Path(output_dir) / "tensorboard", purge) if tensorboard and enabled else None

    def info(self, message: str) -> None:
        if self.enabled:
            write(message)

    def start_epoch(self, epoch: int, steps: int, start_step: int = 0) -> EpochMeter:
        if self.progress:
            self.bar = progress_bar(total=steps, initial=start_step, desc=f"epoch {epoch}", unit="step",
                                    dynamic_ncols=True, leave=False)
        return EpochMeter(self.bar)

    def warn(self, message: str) -> None:
        """A warning on the console and, as a ``"type": "warning"`` record, in the log."""
        if self.enabled:
            write(f"warning: {message}")
        self._write({"type": "warning", "message": message})

    def log_step(self, meter: EpochMeter, fields: dict[str, Any]) -> dict[str, Any]:
        record = {"type": "step", **fields, **meter.summary()}
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{record['img_per_s']:.1f}")
        self._write(record)
        return record

    def end_epoch(self, meter: EpochMeter, fields: dict[str, Any]) -> None:
        summary = meter.summary(window=False)
        record = {"type": "epoch", **fields, **summary, "steps": meter.steps}
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        example = next(iter(meter.skipped), None)
        if example is not None:
            record["skipped_example"] = example
        self._write(record)
        self.info(f"epoch {fields['epoch']}: loss {summary.get('loss', float('nan')):.4f} "
                  f"(cls {summary.get('cls', float('nan')):.4f}, patch {summary.get('patch', float('nan')):.4f}), "
                  f"lr {fields.get('lr', 0):.2e}"
                  + (f", k-NN top-1 {fields['knn_top1']:.2f}%" if "knn_top1" in fields else "")
                  + (f", NMI {fields['nmi']:.1f}" if "nmi" in fields else "")
                  + (f", {format_skipped(len(meter.skipped), example)}" if example is not None else ""))

    def _write(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.writer is not None and record["type"] in ("step", "epoch"):
            kind = record["type"]
            x = record["global_step"] if kind == "step" else record["epoch"]
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("type", "epoch", "step", "global_step"):
                    self.writer.add_scalar(f"{kind}/{key}", value, x)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.writer is not None:
            self.writer.close()
            self.writer = None
