"""Inference with an exported ONNX model (``ibot export``) through onnxruntime, without torch.

The model carries its preprocessing in its ONNX metadata (:class:`Preprocess`), applied here with
PIL and numpy exactly as the evaluation transform does it in PyTorch: resize the short side to
``resize_size`` (bicubic), centre-crop ``image_size``, scale to [0, 1], normalise by mean / std.
Images of any size and mode (RGB, grayscale, RGBA, palette, 16-bit) are accepted; a file that
cannot be decoded is reported and skipped. A features model exported with ``--tokens patch`` or
``all`` also gives the patch tokens (N, h, w, D), written beside the [CLS] features.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ibot.files import replaced_atomically, write_text_atomically
from ibot.formats.onnx_outputs import KINDS, PATCH_OUTPUT, TOKEN_CHOICES
from ibot.image_io import load_rgb

__all__ = [
    "IMAGE_EXTENSIONS",
    "InferenceResult",
    "Preprocess",
    "find_images",
    "patch_file",
    "preprocess",
    "read_model_info",
    "read_tokens",
    "run_inference",
    "top_k",
    "write_results",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
META_PREFIX = "ibot."  # keys of the ONNX metadata_props written by ibot.export


@dataclass(frozen=True)
class Preprocess:
    """What an exported model expects: the official evaluation transform is resize 256, crop 224
    (``crop_pct`` 0.875), bicubic, ImageNet mean / std."""

    image_size: int
    resize_size: int
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        if not 0 < self.image_size <= self.resize_size:
            raise ValueError(f"preprocessing needs 0 < image_size <= resize_size, got {self.image_size}, "
                             f"{self.resize_size}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"preprocessing needs 3 means and 3 positive stds, got {self.mean}, {self.std}")
        if self.interpolation not in _RESAMPLE:
            raise ValueError(f"unknown interpolation {self.interpolation!r}; use one of {', '.join(_RESAMPLE)}")


_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
             "nearest": Image.Resampling.NEAREST}


@dataclass
class InferenceResult:
    """Outputs in the order of ``files``; ``skipped`` holds ``(file, reason)`` of unreadable images.

    ``outputs`` is the model's first output, what ``OUT.npy`` holds: (N, D) [CLS] features,
    (N, C) logits, or for a model exported with ``--tokens patch`` the patch tokens (N, h, w, D);
    ``patch_outputs`` holds the patch tokens of a model that has them (``tokens`` patch or all)."""

    kind: str  # "features" or "classifier"
    files: list[str]
    outputs: np.ndarray
    skipped: list[tuple[str, str]] = field(default_factory=list)
    class_names: list[str] | None = None
    patch_outputs: np.ndarray | None = None  # (N, h, w, D)
    tokens: str = "cls"  # "cls", "patch" or "all" (ibot export --tokens)
    grid: tuple[int, int] | None = None  # (h, w) of the patch tokens, when the model records it


# ------------------------------------------------------------------------------ images
def find_images(path: str | Path) -> list[Path]:
    """``path`` itself if it is a file, else every image file under the folder (sorted, recursive)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"input not found: {path}")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise FileNotFoundError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in {path}")
    return files


def preprocess(image: Image.Image, spec: Preprocess) -> np.ndarray:
    """RGB PIL image -> (3, S, S) float32: short side to ``resize_size``, centre crop, normalise.

    Same arithmetic as torchvision's ``Resize(int)`` + ``CenterCrop`` on PIL images.
    """
    width, height = image.size
    short, long = min(width, height), max(width, height)
    new_short, new_long = spec.resize_size, int(spec.resize_size * long / short)
    size = (new_short, new_long) if width <= height else (new_long, new_short)  # (w, h)
    if size != image.size:
        image = image.resize(size, _RESAMPLE[spec.interpolation])
    top = int(round((size[1] - spec.image_size) / 2.0))
    left = int(round((size[0] - spec.image_size) / 2.0))
    image = image.crop((left, top, left + spec.image_size, top + spec.image_size))
    pixels = np.asarray(image, dtype=np.float32) / 255.0  # (S, S, 3) in [0, 1]
    pixels = (pixels - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))  # (S, S, 3) -> (3, S, S)


# ------------------------------------------------------------------------------ model
def read_model_info(metadata: dict[str, str], model_path: str | Path = "model") -> tuple[str, Preprocess, list[str] | None]:
    """``(kind, preprocessing, class names or None)`` from the metadata written by ``ibot export``."""
    try:
        kind = metadata[f"{META_PREFIX}kind"]
        spec = json.loads(metadata[f"{META_PREFIX}preprocess"])
        names = metadata.get(f"{META_PREFIX}class_names")
        spec = Preprocess(**{**spec, "mean": tuple(spec["mean"]), "std": tuple(spec["std"])})
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{model_path} has no usable iBOT preprocessing metadata ({exc}); "
                         f"was it written by 'ibot export'?") from None
    if kind not in KINDS:
        raise ValueError(f"{model_path}: unknown model kind {kind!r} in its metadata")
    return kind, spec, json.loads(names) if names else None


def read_tokens(metadata: dict[str, str], model_path: str | Path = "model") -> tuple[str, tuple[int, int] | None]:
    """``(tokens, (h, w) grid or None)`` of an exported model; one exported before ``--tokens``
    existed gives ``("cls", None)``."""
    tokens = metadata.get(f"{META_PREFIX}tokens", "cls")
    if tokens not in TOKEN_CHOICES:
        raise ValueError(f"{model_path}: unknown tokens {tokens!r} in its metadata")
    grid = metadata.get(f"{META_PREFIX}grid")
    if grid is None:
        return tokens, None
    try:
        h, w = json.loads(grid)
        return tokens, (int(h), int(w))
    except (TypeError, ValueError):
        raise ValueError(f"{model_path}: unreadable token grid {grid!r} in its metadata") from None


def _session(model_path: Path):
    import onnxruntime as ort

    if not model_path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {model_path}")
    try:
        return ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for invalid files
        raise ValueError(f"{model_path} is not a readable ONNX model ({str(exc).splitlines()[0]})") from None


def run_inference(model_path: str | Path, inputs: str | Path | Sequence[str | Path], batch_size: int = 32,
                  progress: bool = True, on_skip: Callable[[str, str], None] | None = None) -> InferenceResult:
    """Run the model on an image file, a folder of images or a list of files.

    Unreadable images are skipped; ``on_skip(file, reason)`` is called for each as it happens.
    """
    from ibot.progress import progress_bar

    if batch_size < 1:
        raise ValueError(f"--batch-size must be positive, got {batch_size}")
    files = find_images(inputs) if isinstance(inputs, (str, Path)) else [Path(p) for p in inputs]
    model_path = Path(model_path)
    session = _session(model_path)
    metadata = session.get_modelmeta().custom_metadata_map
    kind, spec, class_names = read_model_info(metadata, model_path)
    tokens, grid = read_tokens(metadata, model_path)
    input_name = session.get_inputs()[0].name
    names = [out.name for out in session.get_outputs()]
    if tokens != "cls" and PATCH_OUTPUT not in names:
        raise ValueError(f"{model_path}: its metadata says tokens {tokens!r} but it has no {PATCH_OUTPUT} output")

    kept: list[str] = []
    outputs: dict[str, list[np.ndarray]] = {name: [] for name in names}
    skipped: list[tuple[str, str]] = []
    batch: list[np.ndarray] = []

    def flush() -> None:
        if batch:  # (b, 3, S, S) -> (b, D) features or logits and / or (b, h, w, D) patch tokens
            for name, out in zip(names, session.run(None, {input_name: np.stack(batch)})):
                outputs[name].append(out)
            batch.clear()

    for path in progress_bar(files, desc="infer", unit="img", disable=not progress):
        try:
            batch.append(preprocess(load_rgb(path), spec))
        except ValueError as exc:
            skipped.append((str(path), str(exc)))
            if on_skip is not None:
                on_skip(str(path), str(exc))
            continue
        kept.append(str(path))
        if len(batch) == batch_size:
            flush()
    flush()
    if not kept:
        raise ValueError(f"no readable image among the {len(files)} input file(s)")
    arrays = {name: np.concatenate(parts).astype(np.float32) for name, parts in outputs.items()}
    return InferenceResult(kind, kept, arrays[names[0]], skipped, class_names,
                           patch_outputs=arrays.get(PATCH_OUTPUT) if tokens != "cls" else None, tokens=tokens,
                           grid=grid)


# ------------------------------------------------------------------------------ outputs
def top_k(logits: np.ndarray, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities and class indices of the ``k`` best classes: (N, k) each, best first."""
    k = min(k, logits.shape[1])
    shifted = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted)
    probs /= probs.sum(axis=1, keepdims=True)
    index = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(probs, index, axis=1), index


def _predictions(result: InferenceResult) -> list[dict[str, Any]]:
    probs, index = top_k(result.outputs)
    names = result.class_names or [str(i) for i in range(result.outputs.shape[1])]
    return [{"file": f, "top5": [{"class": names[c], "index": int(c), "probability": float(p)}
                                 for c, p in zip(row_idx, row_p)]}
            for f, row_idx, row_p in zip(result.files, index, probs)]


def patch_file(output: str | Path) -> Path:
    """Where ``write_results`` puts the patch tokens of a ``--tokens all`` model: ``OUT_patch.npy``."""
    output = Path(output)
    return output.with_name(f"{output.stem}_patch.npy")


def _save_npy(path: Path, array: np.ndarray) -> None:
    with replaced_atomically(path) as tmp, tmp.open("wb") as handle:  # np.save on a name would add .npy
        np.save(handle, array)


def write_results(result: InferenceResult, output: str | Path) -> list[Path]:
    """Write features / logits as ``.npy`` (+ ``<name>.json`` listing the files, the tokens and
    their grid), or a classifier's top-5 predictions as ``.json`` / ``.csv``. ``OUT.npy`` holds
    ``result.outputs`` (the patch tokens of a ``--tokens patch`` model); a ``--tokens all`` model
    writes its patch tokens to ``OUT_patch.npy`` too. Returns the files written."""
    output = Path(output)
    suffix = output.suffix.lower()
    skipped = [{"file": f, "reason": why} for f, why in result.skipped]
    if suffix == ".npy":
        _save_npy(output, result.outputs)
        written = [output]
        info: dict[str, Any] = {"kind": result.kind, "shape": list(result.outputs.shape), "tokens": result.tokens,
                                "grid": list(result.grid) if result.grid else None}
        if result.tokens == "all" and result.patch_outputs is not None:
            written.append(patch_file(output))
            _save_npy(written[-1], result.patch_outputs)
            info.update(patch_file=written[-1].name, patch_shape=list(result.patch_outputs.shape))
        index = output.with_suffix(".json")
        write_text_atomically(index, json.dumps({**info, "files": result.files, "class_names": result.class_names,
                                                 "skipped": skipped}, indent=2))
        return [*written, index]
    if suffix not in (".json", ".csv"):
        raise ValueError(f"--output {output}: use a .npy, .json or .csv file")
    if result.kind != "classifier":
        raise ValueError(f"--output {output}: a features model writes .npy (top-5 predictions need a classifier)")
    rows = _predictions(result)
    if suffix == ".json":
        write_text_atomically(output, json.dumps({"predictions": rows, "skipped": skipped}, indent=2))
    else:
        k = len(rows[0]["top5"])
        with replaced_atomically(output) as tmp, tmp.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file"] + [f"{col}_{r}" for r in range(1, k + 1) for col in ("class", "probability")])
            for row in rows:
                writer.writerow([row["file"]] + [v for p in row["top5"] for v in (p["class"], f"{p['probability']:.6f}")])
    return [output]

