"""What every benchmark shares: the machine description, the results file, memory readings, a
table printer, a folder of JPEG photos of mixed sizes and the command line of a pre-training run
on one or several CPU processes.

Run the benchmarks as scripts from the repository root (``python benchmarks/pretrain.py``); this
module puts the repository on ``sys.path`` so that ``ibot`` imports without installation.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from ibot.files import write_text_atomically  # noqa: E402  (after the repository is on sys.path)


def cpu_model() -> str:
    """The ``model name`` line of /proc/cpuinfo (the platform's processor string elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags(wanted: tuple[str, ...] = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")) -> list[str]:
    """Which of the instruction sets that decide matmul speed (AMX: bf16 tiles) the CPU has."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return [f for f in wanted if f in flags]


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """CPU model, cores, library versions and the accelerator (if any) of this run."""
    import PIL
    import timm
    import torch
    import torchvision

    info = {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "pillow": PIL.__version__,
        "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def peak_rss_mb() -> float:
    """This process's peak resident set size so far (``ru_maxrss``, KiB on Linux), in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb(pid: int | str = "self") -> float:
    """Resident set size now (VmRSS of /proc/PID/status), in MiB; 0 where /proc is missing."""
    return _proc_status_kib(pid, "VmRSS") / 1024.0


def children_peak_rss_mb() -> list[float]:
    """Peak RSS (VmHWM) of each live child process (e.g. data-loader workers), in MiB."""
    pids: list[str] = []
    for task in Path("/proc/self/task").glob("*/children"):
        try:
            pids += task.read_text().split()
        except OSError:
            continue
    return [_proc_status_kib(pid, "VmHWM") / 1024.0 for pid in pids]


def _proc_status_kib(pid: int | str, key: str) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    return 0.0


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A Markdown table on stdout."""
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def write_results(name: str, figures: dict[str, Any], device: str = "cpu", path: str | Path | None = None) -> Path:
    """``benchmarks/results/<name>.json``: machine, command line and figures."""
    payload = {"benchmark": name, "machine": machine_info(device),
               "command": " ".join(["python", *sys.argv]), **figures}
    return write_text_atomically(Path(path) if path else RESULTS_DIR / f"{name}.json",
                                 json.dumps(payload, indent=2) + "\n")


def make_jpeg_folder(root: str | Path, n: int = 64, sizes: tuple[int, int] = (300, 800), seed: int = 0) -> Path:
    """``root/photos/*.jpg`` (an ImageFolder with one class): ``n`` JPEGs (quality 90) whose width
    and height are drawn from ``sizes``, each a random region of one of scikit-learn's two sample
    photographs (427 x 640) resized bicubic, so decoding and colour statistics are photo-like."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_sample_images

    folder = Path(root) / "photos"
    folder.mkdir(parents=True, exist_ok=True)
    photos = [Image.fromarray(a) for a in load_sample_images().images]
    rng = np.random.default_rng(seed)
    for i in range(n):
        photo = photos[i % len(photos)]
        width, height = (int(s) for s in rng.integers(sizes[0], sizes[1] + 1, size=2))
        # a region with the target aspect ratio covering 40-100% of the photo's short side
        side = photo.height * rng.uniform(0.4, 1.0)
        box_w, box_h = side * width / max(width, height), side * height / max(width, height)
        left = rng.uniform(0, photo.width - box_w)
        top = rng.uniform(0, photo.height - box_h)
        region = photo.resize((width, height), Image.BICUBIC, box=(left, top, left + box_w, top + box_h))
        region.save(folder / f"{i:04d}.jpg", quality=90)
    return Path(root)


def share_out(batch_size: int, num_workers: int, processes: int) -> list[str]:
    """Overrides that give each of ``processes`` processes its share of a one-process run's batch
    and data-loader workers (at least one each): the global batch stays ``batch_size``."""
    if batch_size % processes:
        raise ValueError(f"a batch of {batch_size} does not divide among {processes} processes")
    return [f"optim.batch_size_per_device={batch_size // processes}",
            f"data.num_workers={max(1, num_workers // processes)}"]


def ibot_command(cli_args: Sequence[str], processes: int = 1, threads: int = 1) -> tuple[list[str], dict[str, str]]:
    """Command line and environment of ``ibot CLI_ARGS`` as one process, or as ``processes``
    processes under ``torchrun`` (gloo on CPU), each with ``threads`` torch threads."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    launcher = [sys.executable] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    return [*launcher, "-m", "ibot.cli", *cli_args], env
