"""Our checkpoint format: one ``.safetensors`` file, tensors plus JSON metadata, written atomically.

Tensor keys: ``student.backbone.*``, ``student.head.*``, ``teacher.*``, ``loss.center``,
``loss.center2``, ``optimizer.state.<i>.<name>``, ``rng.*``. The metadata entry ``ibot`` holds
JSON: the resolved config, epoch and step counters, optimizer param groups, grad-scaler state.
Safetensors runs no code on load, so our own files are safe to open from anywhere.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

FORMAT = "ibot-checkpoint"
VERSION = 1


def is_our_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` names a file in our format (``.safetensors``) rather than an official ``.pth``."""
    return Path(path).suffix == ".safetensors"


def save_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write ``tensors`` and ``meta`` to ``path`` through a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    seen: set[tuple[int, int]] = set()
    plain: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        tensor = tensor.detach().to("cpu").contiguous()
        ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        # safetensors refuses tensors that share memory (a shared head's last_layer2): copy them
        plain[key] = tensor.clone() if ident in seen else tensor
        seen.add(ident)
    header = {"ibot": json.dumps({"format": FORMAT, "version": VERSION, **meta})}
    tmp = str(path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp")
    # O_EXCL as mkstemp, but created with the mode open() gives here under the umask (mkstemp's is
    # 0600), and that mode is put back after safetensors, which writes its files 0600
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    mode = stat.S_IMODE(os.fstat(fd).st_mode)
    os.close(fd)
    try:
        save_file(plain, tmp, metadata=header)
        os.chmod(tmp, mode)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_checkpoint(path: str | Path, prefix: str = "") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read the tensors whose key starts with ``prefix`` and the metadata of one of our files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta_text = (handle.metadata() or {}).get("ibot")
            tensors = {k: handle.get_tensor(k) for k in handle.keys() if k.startswith(prefix)}
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise ValueError(f"{path} is not a readable safetensors checkpoint ({exc})") from exc
    if meta_text is None:
        raise ValueError(f"{path} has no iBOT metadata; is it one of our checkpoints?")
    meta = json.loads(meta_text)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not an iBOT checkpoint (format {meta.get('format')!r})")
    return tensors, meta


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
