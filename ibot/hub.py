"""Build our backbone and pre-training head from the weights of a checkpoint file, either format.

Where the weights of network ``key`` (``teacher`` or ``student``) are:

- official ``.pth`` containers (:mod:`ibot.formats.official`): a published backbone, or the
  ``backbone.*`` / ``head.*`` entries of a full training checkpoint;
- our ``.safetensors`` checkpoints (:mod:`ibot.formats.ours`): ``{key}.backbone.*``, ``{key}.head.*``.

The architecture is the caller's (``arch`` and sizes); :mod:`ibot.eval.checkpoints` reads it from
our files' metadata instead. Loads are strict: unknown or missing keys raise an error that lists
them; only ``masked_embed`` may be absent (a teacher has none; it stays zero).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ibot.formats import official, ours
from ibot.models import IBOTHead, build_backbone
from ibot.models.shapes import backbone_shape_of, expected_backbone_shape

State = dict[str, torch.Tensor]

# buffers the official Swin saves that we derive instead
DERIVED_KEYS = ("relative_position_index",)


def network_state(path: str | Path, key: str = "teacher") -> tuple[State, State]:
    """(backbone state, head state) of network ``key`` in a checkpoint of either format, prefixes
    removed; the head state is empty for backbone-only files."""
    path = Path(path)
    if ours.is_our_checkpoint(path):
        tensors, _ = ours.load_checkpoint(path, prefix=f"{key}.")
        backbone = ours.strip_prefix(f"{key}.backbone.", tensors)
        if not backbone:
            raise ValueError(f"{path} has no '{key}.backbone.*' tensors")
        return backbone, ours.strip_prefix(f"{key}.head.", tensors)
    return official.split_network(official.read_official(path).state(key))


def backbone_kwargs_from_config(config: dict[str, Any]) -> tuple[str, int, dict[str, Any]]:
    """``(arch, patch_size, build kwargs)`` of the backbone a pre-training config describes."""
    from ibot.build import backbone_kwargs
    from ibot.config import check_ranges, config_from_dict

    cfg = config_from_dict(config)
    check_ranges(cfg, sections=("model",))  # before any size is used (crafted metadata)
    kwargs = backbone_kwargs(cfg)
    return cfg.model.arch, kwargs.pop("patch_size"), kwargs


def backbone_from_file(path: str | Path, arch: str = "vit_small", patch_size: int | None = None,
                       key: str = "teacher", **overrides) -> nn.Module:
    """Our ``arch`` backbone with the weights of ``path``, in eval mode.

    ``patch_size`` None reads it from the file's ``patch_embed.proj.weight``. ``overrides`` go to
    ``build_backbone`` (e.g. ``depth``, ``window_size``); ``img_size`` of a ViT defaults to the
    size its position embedding was made for, and ``masked_im_modeling`` to whether the file has
    a ``masked_embed``.
    """
    state, _ = network_state(path, key)
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


def head_from_file(path: str | Path, key: str = "teacher", **head_kwargs) -> IBOTHead:
    """``IBOTHead(**head_kwargs)`` with the head weights of a full checkpoint, in eval mode."""
    _, state = network_state(path, key)
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
