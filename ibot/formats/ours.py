"""Our checkpoint format: one ``.safetensors`` file, tensors plus JSON metadata, written atomically.

The metadata entry ``ibot`` holds JSON with ``format``, ``version`` and ``kind``, the writer that
made the file (:data:`KINDS`):

- ``pretrain`` (``ibot pretrain``, ``ibot convert``): ``student.backbone.*``, ``student.head.*``,
  ``teacher.*``, ``loss.center``, ``loss.center2``, ``optimizer.state.<i>.<name>``, ``rng.*``;
  metadata: the resolved config, epoch and step counters, optimizer param groups, grad-scaler state;
- ``finetune`` (``ibot finetune``): ``model.*``, ``ema.*``, ``optimizer.state.*``;
- ``linear_head`` (``ibot linear``): ``weight``, ``bias``.

Files written before ``kind`` was stamped are classified by :func:`checkpoint_kind`.
Safetensors runs no code on load, so our own files are safe to open from anywhere.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ibot.files import replaced_atomically

FORMAT = "ibot-checkpoint"
VERSION = 1
CHECKPOINT_NAME = "checkpoint.safetensors"  # the file a pre-training or fine-tuning run writes in its folder
KINDS = ("pretrain", "finetune", "linear_head")
NETWORKS = ("teacher", "student")  # the networks of a pre-training checkpoint; the teacher is evaluated by default
_OLD_KIND_NAMES = {"linear-head": "linear_head"}  # spelled so before kinds were stamped by the writer


def checkpoint_kind(meta: dict[str, Any], path: str | Path | None = None) -> str | None:
    """The writer of a file with metadata ``meta`` (one of :data:`KINDS`): its ``kind``, or for
    files without one, ``pretrain`` when it holds a pre-training ``config``; None when unknown."""
    kind = meta.get("kind")
    if kind is None:
        return "pretrain" if "config" in meta else None
    kind = _OLD_KIND_NAMES.get(kind, kind)
    if kind not in KINDS:
        raise ValueError(f"{path or 'checkpoint'} has an unknown kind {kind!r} (known: {', '.join(KINDS)})")
    return kind


def check_key(key: str) -> None:
    """One-line error unless ``key`` names a network of a pre-training checkpoint."""
    if key not in NETWORKS:
        raise ValueError(f"--key must be one of {', '.join(NETWORKS)}, got {key!r}")


def is_our_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` names a file in our format (``.safetensors``) rather than an official ``.pth``."""
    return Path(path).suffix == ".safetensors"


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, no permission, ...): the file it was to
    replace is intact and no temporary file is left."""

    def __str__(self) -> str:
        return str(self.args[0])


def _write_error(path: Path, exc: Exception) -> CheckpointWriteError:
    """One line for a failed write; safetensors reports I/O errors as ``SafetensorError``."""
    reason, code = getattr(exc, "strerror", None), getattr(exc, "errno", None)
    if reason is None:
        found = re.search(r"I/O error: (.*?) \(os error (\d+)\)", str(exc))
        reason, code = (found.group(1), int(found.group(2))) if found else (str(exc) or type(exc).__name__, None)
    kept = "the previous checkpoint is intact" if path.is_file() else "no checkpoint was written"
    error = CheckpointWriteError(f"cannot write checkpoint {path}: {reason}; {kept}")
    error.errno = code
    return error


def save_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any], *, kind: str) -> Path:
    """Write ``tensors`` and ``meta``, stamped with ``kind`` (one of :data:`KINDS`), to ``path``
    through a temporary file and an atomic rename; :class:`CheckpointWriteError` when that fails
    (``path`` is then as it was)."""
    path = Path(path)
    if kind not in KINDS:
        raise ValueError(f"cannot write {path}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if "kind" in meta and checkpoint_kind(meta, path) != kind:
        raise ValueError(f"cannot write {path} as a {kind} checkpoint: its metadata says kind {meta['kind']!r}")
    seen: set[tuple[int, int]] = set()
    plain: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        tensor = tensor.detach().to("cpu").contiguous()
        ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        # safetensors refuses tensors that share memory (a shared head's last_layer2): copy them
        plain[key] = tensor.clone() if ident in seen else tensor
        seen.add(ident)
    header = {"ibot": json.dumps({"format": FORMAT, "version": VERSION, **meta, "kind": kind})}
    try:
        with replaced_atomically(path) as tmp:
            save_file(plain, str(tmp), metadata=header)
    except (OSError, SafetensorError) as exc:
        raise _write_error(path, exc) from None
    return path


def _read(path: str | Path, read: Callable[[Any], dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``read(handle)`` on the opened file and its metadata, with one-line errors for foreign files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta_text = (handle.metadata() or {}).get("ibot")
            found = read(handle)
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise ValueError(f"{path} is not a readable safetensors checkpoint ({exc})") from exc
    if meta_text is None:
        raise ValueError(f"{path} has no iBOT metadata; is it one of our checkpoints?")
    try:
        meta = json.loads(meta_text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} has damaged iBOT metadata ({exc})") from None
    found_format = meta.get("format") if isinstance(meta, dict) else None
    if found_format != FORMAT:
        raise ValueError(f"{path} is not an iBOT checkpoint (format {found_format!r})")
    return found, meta


def load_checkpoint(path: str | Path, prefix: str = "") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read the tensors whose key starts with ``prefix`` and the metadata of one of our files."""
    return _read(path, lambda handle: {k: handle.get_tensor(k) for k in handle.keys() if k.startswith(prefix)})


def read_shapes(path: str | Path, prefix: str = "") -> tuple[dict[str, tuple[int, ...]], dict[str, Any]]:
    """The shapes of the tensors whose key starts with ``prefix`` (from the file's header, no
    tensor is read) and the metadata of one of our files."""
    return _read(path, lambda handle: {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()
                                       if k.startswith(prefix)})


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata of one of our files (no tensor is read)."""
    return _read(path, lambda handle: {})[1]


def prefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}{k}": v for k, v in state.items()}


def strip_prefix(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def optimizer_to_tensors(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Split ``optimizer.state_dict()`` into flat tensors and JSON-able param groups."""
    tensors = {}
    for index, slots in state["state"].items():
        for name, value in slots.items():
            tensors[f"optimizer.state.{index}.{name}"] = torch.as_tensor(value)
    return tensors, state["param_groups"]


def optimizer_from_tensors(tensors: dict[str, torch.Tensor], param_groups: list[dict]) -> dict[str, Any]:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in strip_prefix("optimizer.state.", tensors).items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": param_groups}
