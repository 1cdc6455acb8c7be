"""Pipeline check ("TIPC"): pre-training -> k-NN -> fine-tuning -> ONNX export -> onnxruntime
inference on the embedded Fashion-MNIST, then a comparison of the exported models with PyTorch.

Every stage runs the real ``ibot`` command in a subprocess (``python -m ibot.cli ...``) on the
embedded subset, or on a small image folder written from it (fine-tuning data, inference input);
the comparison runs in this process. The log
``OUTPUT_DIR/pipeline_check.log`` gets one line per stage, with its duration and the peak
resident memory of its process::

    Run successfully | pretrain | 12.3 s | cpu 10.2 s | peak 612.0 MB | python -m ibot.cli pretrain ...
    Run failed       | export   |  4.1 s | cpu  3.9 s | peak 390.4 MB | python -m ibot.cli export ... | exit status 2

and each stage's output goes to ``OUTPUT_DIR/logs/<stage>.log``. The comparison passes when the
features differ by less than 1e-4 (max absolute difference) and the classifier's top-1 class is
the same for every image. Exits with status 1 if any stage fails.

    python tools/pipeline_check.py --lite                  # tiny model, a few steps (CI, < 1 min)
    python tools/pipeline_check.py --output-dir runs/tipc  # the cpu preset's full schedule
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout, uninstalled

from ibot.files import write_text_atomically  # noqa: E402
from ibot.formats.ours import CHECKPOINT_NAME  # noqa: E402
from tests.tiny import TINY_MODEL_OVERRIDES  # noqa: E402  (the test suite's smoke-test model)

SUBSET = ROOT / "ibot" / "data" / "assets" / "fashion_mnist_subset.npz"  # ibot.data.fashion_mnist.SUBSET_PATH
TOLERANCE = 1e-4  # max |ONNX - PyTorch| on features and class probabilities


@dataclass
class Stage:
    name: str
    argv: list[str]  # arguments of ``python``; empty for the in-process comparison
    needs: list[str] = field(default_factory=list)
    run: Callable[[], None] | None = None  # in-process stages


def ibot(*args: str) -> list[str]:
    """``python`` arguments that run the ``ibot`` command."""
    return ["-m", "ibot.cli", *args]


@dataclass
class Outcome:
    ok: bool
    seconds: float  # wall clock
    cpu_seconds: float  # user + system: comparable across loaded and idle machines
    peak_mb: float
    command: str
    note: str = ""


def _maxrss_mb(usage: resource.struct_rusage) -> float:
    return usage.ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)  # bytes on macOS, KiB on Linux


def run_command(argv: list[str], log_path: Path, env: dict[str, str], timeout: float) -> Outcome:
    """Run ``python argv``; its peak resident memory comes from ``wait4`` on that child (on Linux it
    includes this launcher's, which is why the launcher imports neither torch nor ibot.data)."""
    command = [sys.executable, *argv]
    tic = time.perf_counter()
    with log_path.open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - tic > timeout:
                process.send_signal(signal.SIGKILL)
                _, status, usage = os.wait4(process.pid, 0)
                break
            time.sleep(0.05)
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    seconds = time.perf_counter() - tic
    note = f"timed out after {timeout:.0f} s" if seconds > timeout else ""
    note = note or (f"exit status {process.returncode}" if process.returncode else "")
    shown = shlex.join(["python", *argv])
    return Outcome(process.returncode == 0 and not note, seconds, usage.ru_utime + usage.ru_stime,
                   _maxrss_mb(usage), shown, note)


def run_in_process(stage: Stage, log_path: Path) -> Outcome:
    """An in-process stage; peak memory is this process's (it does nothing heavy before)."""
    tic, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    ok, note = True, ""
    try:
        stage.run()
    except Exception as exc:  # the log line reports it; the check goes on
        ok, note = False, f"{type(exc).__name__}: {exc}"
    log_path.write_text(note or "ok\n")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime - before.ru_utime - before.ru_stime
    return Outcome(ok, time.perf_counter() - tic, cpu, _maxrss_mb(usage), f"(in process) {stage.name}", note)


# ------------------------------------------------------------------------------ data
def write_image_folder(root: Path, train_per_class: int, val_per_class: int) -> Path:
    """``root/{train,val}/class_<label>/<i>.png`` (28 x 28 grayscale) from the embedded
    Fashion-MNIST subset, read with numpy alone: importing ``ibot.data`` would load torch into
    this launcher, whose memory every stage's peak would then include."""
    with np.load(SUBSET) as subset:
        for split, source, per_class in (("train", "train", train_per_class), ("val", "test", val_per_class)):
            images, labels = subset[f"{source}_images"], subset[f"{source}_labels"]
            for label in np.unique(labels):
                folder = root / split / f"class_{label}"
                folder.mkdir(parents=True, exist_ok=True)
                for i in np.flatnonzero(labels == label)[:per_class]:
                    Image.fromarray(images[i]).save(folder / f"{i:05d}.png")
    return root


# ------------------------------------------------------------------------------ comparison
def compare_with_pytorch(out: Path) -> dict[str, float]:
    """Recompute with PyTorch what onnxruntime produced in the infer stages, on the same files."""
    import onnx
    import torch

    from ibot.export import load_exportable
    from ibot.image_io import load_rgb
    from ibot.infer import preprocess, read_model_info

    def reference(checkpoint: Path, onnx_path: Path, files: list[str], kind: str) -> np.ndarray:
        meta = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
        _, spec, _ = read_model_info(meta, onnx_path)
        model = load_exportable(checkpoint, kind=kind).model.eval()
        batch = torch.from_numpy(np.stack([preprocess(load_rgb(f), spec) for f in files]))
        with torch.no_grad():
            return model(batch).numpy()

    index = json.loads((out / "infer" / "features.json").read_text())
    features = np.load(out / "infer" / "features.npy")
    expected = reference(out / "pretrain" / CHECKPOINT_NAME, out / "export" / "features.onnx",
                         index["files"], "features")
    feature_diff = float(np.abs(features - expected).max())
    result = {"features_max_abs_diff": feature_diff, "images": len(index["files"])}
    if feature_diff >= TOLERANCE:
        raise AssertionError(f"features: max |ONNX - PyTorch| = {feature_diff:.2e} >= {TOLERANCE}")

    predictions = json.loads((out / "infer" / "predictions.json").read_text())["predictions"]
    logits = reference(out / "finetune" / CHECKPOINT_NAME, out / "export" / "classifier.onnx",
                       [p["file"] for p in predictions], "classifier")
    probs = torch.from_numpy(logits).softmax(dim=1).numpy()
    top1_same = all(p["top5"][0]["index"] == int(row.argmax()) for p, row in zip(predictions, probs))
    prob_diff = max(abs(c["probability"] - float(row[c["index"]])) for p, row in zip(predictions, probs)
                    for c in p["top5"])
    result.update({"classifier_max_abs_diff": prob_diff, "same_top1": top1_same})
    if prob_diff >= TOLERANCE or not top1_same:
        raise AssertionError(f"classifier: max |ONNX - PyTorch| probability {prob_diff:.2e}, same top-1: {top1_same}")
    write_text_atomically(out / "compare.json", json.dumps(result, indent=2))
    return result


# ------------------------------------------------------------------------------ stages
def build_stages(out: Path, lite: bool) -> list[Stage]:
    pretrain_ckpt = str(out / "pretrain" / CHECKPOINT_NAME)
    finetune_ckpt = str(out / "finetune" / CHECKPOINT_NAME)
    images = out / "images"
    eval_data = ["--data", str(images)] if lite else []  # full: the pre-training data (Fashion-MNIST)
    if lite:
        pretrain = ["--max-steps", "2", "--batch-size-per-device", "16", "data.num_workers=0", *TINY_MODEL_OVERRIDES]
        finetune = ["--epochs", "1", "--batch-size", "8", "--num-workers", "0"]
    else:
        pretrain = []  # the cpu preset's schedule
        finetune = ["--epochs", "2", "--batch-size", "128", "--num-workers", "2"]
    return [
        # --overwrite: each check starts afresh in its own folder
        Stage("pretrain", ibot("pretrain", "--preset", "cpu", "--output-dir", str(out / "pretrain"), "--overwrite",
                               "--no-progress", "--no-knn", *pretrain)),
        Stage("knn", ibot("knn", "--checkpoint", pretrain_ckpt, *eval_data, "--ks", "10", "20", "--num-workers", "0",
                          "--output-dir", str(out / "knn"), "--no-cache", "--no-progress"), needs=["pretrain"]),
        Stage("finetune", ibot("finetune", "--checkpoint", pretrain_ckpt, *eval_data, *finetune,
                               "--output-dir", str(out / "finetune"), "--no-progress"), needs=["pretrain"]),
        Stage("export_features", ibot("export", "-c", pretrain_ckpt, "-o", str(out / "export" / "features.onnx")),
              needs=["pretrain"]),
        Stage("export_classifier", ibot("export", "-c", finetune_ckpt, "-o", str(out / "export" / "classifier.onnx"),
                                        "--kind", "classifier"), needs=["finetune"]),
        Stage("infer_features", ibot("infer", str(out / "export" / "features.onnx"), str(images / "val"),
                                     "-o", str(out / "infer" / "features.npy"), "--no-progress"),
              needs=["export_features"]),
        Stage("infer_classifier", ibot("infer", str(out / "export" / "classifier.onnx"), str(images / "val"),
                                       "-o", str(out / "infer" / "predictions.json"), "--no-progress"),
              needs=["export_classifier"]),
        Stage("compare", [], needs=["infer_features", "infer_classifier"], run=lambda: compare_with_pytorch(out)),
    ]


def format_line(stage: str, outcome: Outcome) -> str:
    status = "Run successfully" if outcome.ok else "Run failed"
    line = (f"{status:<16} | {stage:<17} | {outcome.seconds:6.1f} s | cpu {outcome.cpu_seconds:6.1f} s | "
            f"peak {outcome.peak_mb:7.1f} MB | {outcome.command}")
    return line + (f" | {outcome.note}" if outcome.note else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--lite", action="store_true", help="tiny model, a few steps: the CI form (under a minute)")
    parser.add_argument("--output-dir", default="runs/pipeline_check", help="where every stage writes")
    parser.add_argument("--timeout", type=float, default=900, help="seconds allowed to each stage")
    args = parser.parse_args(argv)

    out = Path(args.output_dir).resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    log_path = out / "pipeline_check.log"
    log_path.write_text("")
    write_image_folder(out / "images", *((8, 2) if args.lite else (100, 20)))  # fine-tuning data, inference input
    env = {**os.environ, "IBOT_FASHION_MNIST": "subset",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}

    passed: set[str] = set()
    for stage in build_stages(out, args.lite):
        missing = [n for n in stage.needs if n not in passed]
        stage_log = out / "logs" / f"{stage.name}.log"
        if missing:
            command = shlex.join(["python", *stage.argv]) if stage.argv else stage.name
            outcome = Outcome(False, 0.0, 0.0, 0.0, command, f"not run: {', '.join(missing)} failed")
        elif stage.run is not None:
            outcome = run_in_process(stage, stage_log)
        else:
            outcome = run_command(stage.argv, stage_log, env, args.timeout)
        if outcome.ok:
            passed.add(stage.name)
        line = format_line(stage.name, outcome)
        with log_path.open("a") as handle:
            handle.write(line + "\n")
        print(line, flush=True)
        if not outcome.ok and stage_log.exists() and not missing:
            tail = stage_log.read_text().strip().splitlines()[-5:]
            print("\n".join(f"    {t}" for t in tail), file=sys.stderr)
    failed = [line for line in log_path.read_text().splitlines() if line.startswith("Run failed")]
    print(f"pipeline check: {len(failed)} stage(s) failed; log: {log_path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
