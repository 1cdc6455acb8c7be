"""The output folder of a pre-training run: whether a run may start there, and tidying it first.

``ibot pretrain`` calls :func:`prepare_output_dir` before it builds any network or reads any data:

- a new run never replaces another: a folder that holds one (any of ``RUN_FILES``) is refused
  unless the run continues there (``--resume auto``, or ``--resume`` of that folder's checkpoint)
  or ``--overwrite`` is given, which removes the old run's outputs (``RUN_OUTPUTS``) first;
- the folder must be creatable and writable;
- temporary files that a killed process left behind (a checkpoint, a snapshot or the log being
  written: :func:`ibot.files.temporary_files`) are removed, and named.

Only the main process (rank 0 under ``torchrun``) changes the folder; every process checks it.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from ibot.files import temporary_files
from ibot.formats.ours import CHECKPOINT_NAME

RUN_FILES = (CHECKPOINT_NAME, "config.yaml", "log.jsonl")  # a folder with one of these holds a run
RUN_OUTPUTS = (*RUN_FILES, "knn.json", "tensorboard")  # what a run writes, removed by --overwrite
SNAPSHOT_PATTERN = "checkpoint_epoch[0-9][0-9][0-9][0-9].safetensors"  # run.saveckp_freq's copies, also removed


def snapshot_path(output_dir: str | Path, epochs_done: int) -> Path:
    """``checkpoint_epochNNNN.safetensors``: the run after ``epochs_done`` epochs."""
    return Path(output_dir) / f"checkpoint_epoch{epochs_done:04d}.safetensors"


def snapshots(output_dir: str | Path) -> list[Path]:
    """The snapshots in ``output_dir``, oldest first."""
    return sorted(Path(output_dir).glob(SNAPSHOT_PATTERN))


def prune_snapshots(output_dir: str | Path, keep: int) -> list[Path]:
    """Remove all but the ``keep`` newest snapshots (``keep`` 0: keep every one); returns the removed."""
    old = snapshots(output_dir)[:-keep] if keep > 0 else []
    for path in old:
        path.unlink(missing_ok=True)
    return old


def existing_run_files(output_dir: str | Path) -> list[str]:
    """The ``RUN_FILES`` present in ``output_dir``."""
    return [name for name in RUN_FILES if (Path(output_dir) / name).exists()]


def check_start_allowed(output_dir: str | Path, continues_here: bool, overwrite: bool) -> None:
    """One-line error when starting would replace the run in ``output_dir``.

    ``continues_here``: the run resumes from (or restarts with the config of) the run in that
    folder; ``overwrite``: the user asked to start afresh there.
    """
    output_dir = Path(output_dir)
    if continues_here and overwrite:
        raise ValueError(f"--overwrite starts afresh in {output_dir}, --resume continues the run there: "
                         f"give one of them")
    found = existing_run_files(output_dir)
    if found and not continues_here and not overwrite:
        raise ValueError(f"{output_dir} already holds a run ({', '.join(found)}): continue it with --resume auto, "
                         f"choose another --output-dir, or add --overwrite to start afresh there")


def check_writable(output_dir: str | Path) -> None:
    """One-line error unless ``output_dir`` exists (it is created) and a file can be made in it."""
    output_dir = Path(output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=output_dir):
            pass
    except OSError as exc:
        raise ValueError(f"--output-dir {output_dir} is not writable ({exc.strerror or exc})") from None


def clear_run(output_dir: str | Path) -> list[str]:
    """Remove the ``RUN_OUTPUTS`` of a previous run from ``output_dir``; returns their names."""
    removed = []
    for name in RUN_OUTPUTS:
        path = Path(output_dir) / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(name)
    found = snapshots(output_dir)
    for path in found:
        path.unlink()
    if found:
        removed.append(f"{len(found)} snapshot(s) {SNAPSHOT_PATTERN.replace('[0-9]', 'N')}")
    return removed


def prepare_output_dir(output_dir: str | Path, continues_here: bool = False, overwrite: bool = False,
                       is_main: bool = True) -> list[str]:
    """Check that a run may start in ``output_dir``, then (main process) remove an overwritten
    run's outputs and stale temporary files. Returns one line per thing done."""
    output_dir = Path(output_dir)
    check_start_allowed(output_dir, continues_here, overwrite)
    check_writable(output_dir)
    if not is_main:
        return []
    notes = []
    if overwrite and (removed := clear_run(output_dir)):
        notes.append(f"--overwrite: removed the previous run's {', '.join(removed)} from {output_dir}")
    stale = [p for name in (*RUN_FILES, SNAPSHOT_PATTERN) for p in temporary_files(output_dir / name)]
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        notes.append(f"removed {len(stale)} temporary file(s) of an interrupted write in {output_dir}: "
                     f"{', '.join(p.name for p in stale)}")
    return notes
