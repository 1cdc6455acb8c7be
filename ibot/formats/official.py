"""The official iBOT ``.pth`` containers, read once into an :class:`OfficialCheckpoint`.

- a full training checkpoint (``checkpoint.pth``): ``student`` (``module.backbone.*`` /
  ``module.head.*``, saved from DistributedDataParallel), ``teacher`` (``backbone.*`` / ``head.*``),
  ``ibot_loss`` (``center`` (1, K), ``center2`` (1, 1, K2)), ``epoch`` (the next epoch to run),
  ``args`` (the run's ``argparse.Namespace``) and the optimizer (not read);
- a published backbone (``checkpoint_teacher.pth``): ``{'state_dict': {...}}``, keys unprefixed;
  a bare state dict (tensors only) is read the same way.

Pickles are opened with ``torch.load(weights_only=True)``, allowing ``argparse.Namespace`` and
nothing else, so a file that would run code is refused.
"""

from __future__ import annotations

import argparse
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

State = dict[str, torch.Tensor]
NETWORKS = ("student", "teacher")
CENTRES = ("center", "center2")


@dataclass
class OfficialCheckpoint:
    """What an official container holds, ``module.`` prefixes removed."""

    path: Path
    networks: dict[str, State]  # "student" / "teacher" -> ``backbone.*`` / ``head.*``; empty for a backbone
    backbone: State | None = None  # a published backbone (``state_dict`` entry or a bare state dict)
    centres: State = field(default_factory=dict)  # the loss's ``center`` and ``center2``
    epoch: int = 0
    args: dict[str, Any] | None = None  # vars() of the run's Namespace
    entries: tuple[str, ...] = ()  # the container's top-level entries, for error messages

    def state(self, key: str) -> State:
        """The state of network ``key``, or the backbone of a backbone-only file."""
        if self.backbone is not None:
            return self.backbone
        if key not in self.networks:
            raise ValueError(f"{self.path} has no '{key}' or 'state_dict' entry (entries: {', '.join(self.entries)})")
        return self.networks[key]


def split_network(state: State) -> tuple[State, State]:
    """(backbone, head) of one network's ``backbone.*`` / ``head.*`` keys, prefixes removed; a state
    without such prefixes is a backbone. Keys outside both stay in the backbone state (so a strict
    load names them)."""
    if not any(k.startswith(("backbone.", "head.")) for k in state):
        return dict(state), {}
    backbone = {k: v for k, v in state.items() if not k.startswith(("backbone.", "head."))}
    backbone.update({k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")})
    return backbone, {k.removeprefix("head."): v for k, v in state.items() if k.startswith("head.")}


def _unwrap(state: object, path: Path, entry: str) -> State:
    """A state dict with the ``module.`` prefix of a DDP model removed."""
    if not isinstance(state, dict):
        raise ValueError(f"{path}: entry '{entry}' is a {type(state).__name__}, not a state dict")
    if state and all(k.startswith("module.") for k in state):
        return {k.removeprefix("module."): v for k, v in state.items()}
    return dict(state)


def read_official(path: str | Path) -> OfficialCheckpoint:
    """Parse the official container at ``path`` (see the module docstring) with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    checkpoint = safe_torch_load(path)
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path} holds a {type(checkpoint).__name__}, not a checkpoint dict")
    entries = tuple(map(str, checkpoint))
    args = checkpoint.get("args")
    found = OfficialCheckpoint(path, {}, epoch=int(checkpoint.get("epoch", 0)), entries=entries,
                               args=vars(args) if isinstance(args, argparse.Namespace) else None)
    if "state_dict" in checkpoint:
        found.backbone = _unwrap(checkpoint["state_dict"], path, "state_dict")
    elif any(name in checkpoint for name in NETWORKS):
        found.networks = {name: _unwrap(checkpoint[name], path, name) for name in NETWORKS if name in checkpoint}
        centres = checkpoint.get("ibot_loss") or {}
        found.centres = {k: v for k, v in centres.items() if k in CENTRES}
    elif checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        found.backbone = _unwrap(checkpoint, path, "state_dict")
    else:
        raise ValueError(f"{path} has no 'student', 'teacher' or 'state_dict' entry (entries: {', '.join(entries)})")
    return found


def safe_torch_load(path: Path) -> object:
    """``torch.load`` that unpickles tensors and ``argparse.Namespace`` only."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        if found:
            raise ValueError(f"refusing to load {path}: it needs {found.group(1)}, and only tensors and "
                             "argparse.Namespace are allowed") from None
        found = re.search(r"^(Unsupported .*)$", str(exc), re.MULTILINE)
        reason = found.group(1) if found else "unpickling failed"
        raise ValueError(f"{path} is not a readable PyTorch checkpoint ({reason}; weights_only=True reads "
                         "tensors and argparse.Namespace only)") from None
    except (RuntimeError, KeyError, EOFError) as exc:  # not a zip archive, truncated, not a pickle
        reason = f"{type(exc).__name__}: {str(exc).split('. ')[0]}"
        raise ValueError(f"{path} is not a readable PyTorch checkpoint ({reason})") from None
