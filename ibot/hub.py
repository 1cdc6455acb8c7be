"""Load official iBOT checkpoints (and ours) into this package's backbone and head.

Formats read, for backbone and head:

- published backbones (``checkpoint_teacher.pth``): ``{'state_dict': {...}}``, keys unprefixed;
- full training checkpoints (``checkpoint.pth``): ``student`` with ``module.backbone.`` /
  ``module.head.`` prefixes, ``teacher`` with ``backbone.`` / ``head.``; ``key`` picks one;
- our ``.safetensors`` checkpoints (``ibot.train.checkpoint``): ``{key}.backbone.*``, ``{key}.head.*``.

Pickles are opened with ``weights_only=True``, allowing ``argparse.Namespace`` (the official
``args``) and nothing else, so a file that would run code is refused. Loads are strict: unknown
or missing keys raise an error that lists them; only ``masked_embed`` may be absent (a teacher
has none; it stays zero).
"""

from __future__ import annotations

import argparse
import math
import pickle
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from ibot.models import IBOTHead, build_backbone
from ibot.models.shapes import backbone_shape_of, expected_backbone_shape
from ibot.train.checkpoint import is_our_checkpoint, strip_prefix

State = dict[str, torch.Tensor]

# buffers the official Swin saves that we derive instead
DERIVED_KEYS = ("relative_position_index",)


def load_official_checkpoint(path: str | Path, key: str = "teacher") -> tuple[State, State]:
    """(backbone state, head state) of a checkpoint, prefixes removed; the head state is empty for
    backbone-only files. ``key`` selects ``teacher`` or ``student`` in full checkpoints."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if is_our_checkpoint(path):
        try:
            state = load_file(str(path))
        except SafetensorError as exc:
            raise ValueError(f"{path} is not a readable safetensors file ({exc})") from None
        backbone = strip_prefix(f"{key}.backbone.", state)
        if not backbone:
            raise ValueError(f"{path} has no '{key}.backbone.*' tensors")
        return backbone, strip_prefix(f"{key}.head.", state)

    checkpoint = safe_torch_load(path)
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path} holds a {type(checkpoint).__name__}, not a checkpoint dict")
    if "state_dict" in checkpoint:
        state = checkpoint["state_dict"]
    elif key in checkpoint:
        state = checkpoint[key]
    elif checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        state = checkpoint
    else:
        raise ValueError(f"{path} has no '{key}' or 'state_dict' entry (entries: {', '.join(map(str, checkpoint))})")
    if not isinstance(state, dict):
        raise ValueError(f"{path}: entry '{key}' is a {type(state).__name__}, not a state dict")
    state = strip_prefix("module.", state) if all(k.startswith("module.") for k in state) else dict(state)
    if not any(k.startswith(("backbone.", "head.")) for k in state):
        return state, {}
    # keys outside backbone./head. stay in the backbone state, so the strict load names them
    backbone = {k: v for k, v in state.items() if not k.startswith(("backbone.", "head."))}
    backbone.update(strip_prefix("backbone.", state))
    return backbone, strip_prefix("head.", state)


def load_backbone(path: str | Path, arch: str = "vit_small", patch_size: int | None = None,
                  key: str = "teacher", **overrides) -> nn.Module:
    """Our ``arch`` backbone with the weights of ``path``, in eval mode.

    ``patch_size`` None reads it from the file's ``patch_embed.proj.weight``. ``overrides`` go to
    ``build_backbone`` (e.g. ``depth``, ``window_size``); ``img_size`` of a ViT defaults to the
    size its position embedding was made for, and ``masked_im_modeling`` to whether the file has
    a ``masked_embed``.
    """
    state, _ = load_official_checkpoint(path, key)
    state = {k: v for k, v in state.items() if not k.endswith(DERIVED_KEYS)}
    if patch_size is None and "patch_embed.proj.weight" in state:
        patch_size = state["patch_embed.proj.weight"].shape[-1]
    overrides.setdefault("masked_im_modeling", "masked_embed" in state)
    if arch.startswith("vit") and "pos_embed" in state and patch_size:
        overrides.setdefault("img_size", math.isqrt(state["pos_embed"].shape[1] - 1) * patch_size)
    model = build_backbone(arch, patch_size=patch_size, **overrides)
    try:
        _load_strict(model, state, path, optional=("masked_embed",))
    except ValueError as exc:
        found, built = backbone_shape_of(state), expected_backbone_shape(arch, patch_size, **overrides)
        if found is None or not found.differences(built):
            raise
        detail = str(exc).removeprefix(f"{path} ")
        raise ValueError(f"{path} holds a {found} (read from its weights), but --arch {arch} builds a {built}: "
                         f"{Path(path).name} {detail}") from None
    return model.eval()


def load_head(path: str | Path, key: str = "teacher", **head_kwargs) -> IBOTHead:
    """``IBOTHead(**head_kwargs)`` with the head weights of a full checkpoint, in eval mode."""
    _, state = load_official_checkpoint(path, key)
    if not state:
        raise ValueError(f"{path} holds no '{key}' head weights (a backbone-only file?)")
    head = IBOTHead(**head_kwargs)
    if head.shared_head:
        differ = [n for n in ("weight_g", "weight_v") if f"last_layer.{n}" in state and f"last_layer2.{n}" in state
                  and not torch.equal(state[f"last_layer.{n}"], state[f"last_layer2.{n}"])]
        if differ:
            raise ValueError(f"{path}: last_layer and last_layer2 differ, so the head is not shared; "
                             "build it with shared_head=False")
    _load_strict(head, state, path)
    return head.eval()


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


def _load_strict(module: nn.Module, state: State, path: Path | str, optional: tuple[str, ...] = ()) -> None:
    """``load_state_dict`` that names every unknown or missing key (except ``optional`` ones)."""
    expected = set(module.state_dict())
    missing = sorted(expected - set(state) - set(optional))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(f"{path} does not match {type(module).__name__}: missing keys {missing}, "
                         f"unexpected keys {unexpected}")
    try:
        module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise ValueError(f"{path} does not fit {type(module).__name__}: {' '.join(str(exc).split())}") from None
