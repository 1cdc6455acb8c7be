"""Regenerate ``ibot/data/assets/fashion_mnist_subset.npz`` from the official Fashion-MNIST files.

A stratified subset: ``--train-per-class`` images of each class from the official train split and
``--test-per-class`` from the test split, drawn without replacement with ``--seed``, kept in their
official order. The archive holds ``{split}_images`` (N, 28, 28) uint8, ``{split}_labels`` (N,)
uint8 and ``{split}_indices`` (N,) uint16 (positions in the official split). Zip entries carry a
fixed timestamp, so the same inputs give the same bytes.

    python tools/make_fashion_mnist_subset.py [--source /usr/share/datasets/fashion-mnist]
"""

from __future__ import annotations

import argparse
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled
from ibot.data.fashion_mnist import CLASSES, DEBIAN_DIR, SUBSET_PATH, load_idx_split


def stratified_indices(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """``per_class`` random positions of each class, sorted."""
    chosen = []
    for c in range(len(CLASSES)):
        pool = np.flatnonzero(labels == c)
        if len(pool) < per_class:
            raise ValueError(f"class {c} has {len(pool)} images, fewer than {per_class}")
        chosen.append(rng.choice(pool, size=per_class, replace=False))
    return np.sort(np.concatenate(chosen))


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez_compressed`` with fixed zip timestamps (byte-reproducible)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buffer.getvalue(), compresslevel=9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=DEBIAN_DIR, help="folder of IDX .gz files")
    parser.add_argument("--output", type=Path, default=SUBSET_PATH)
    parser.add_argument("--train-per-class", type=int, default=600)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    arrays = {}
    for split, per_class in (("train", args.train_per_class), ("test", args.test_per_class)):
        images, labels = load_idx_split(args.source, split)
        keep = stratified_indices(labels, per_class, rng)
        arrays[f"{split}_images"] = images[keep]
        arrays[f"{split}_labels"] = labels[keep]
        arrays[f"{split}_indices"] = keep.astype(np.uint16)
    write_npz(args.output, arrays)
    sizes = ", ".join(f"{k} {v.shape}" for k, v in arrays.items())
    print(f"wrote {args.output} ({args.output.stat().st_size / 1e6:.2f} MB): {sizes}")


if __name__ == "__main__":
    main()
