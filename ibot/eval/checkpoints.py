"""Backbones (and pre-training heads) to evaluate: from our checkpoints or official ones.

- Ours (``.safetensors``, :mod:`ibot.formats.ours`): the architecture, patch size, size
  overrides and crop size come from the pre-training config stored in the file's metadata.
- Official (``.pth``): :func:`ibot.hub.backbone_from_file` with the ``arch`` the user names; the
  evaluation size is the official 224 px.

``key`` picks the ``teacher`` (default, as in the official evaluations) or the ``student``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ibot.formats.ours import check_key, checkpoint_kind, is_our_checkpoint
from ibot.hub import backbone_kwargs_from_config
from ibot.models.shapes import backbone_shape_of, expected_backbone_shape, infer_head_kwargs

OFFICIAL_IMAGE_SIZE = 224
_ARCH_NAMES = {"vit_tiny": "ViT-Ti", "vit_small": "ViT-S", "vit_base": "ViT-B", "vit_large": "ViT-L",
               "swin_tiny": "Swin-T"}


@dataclass
class LoadedBackbone:
    """A backbone in eval mode plus what an evaluation needs to know about it."""

    backbone: nn.Module
    arch: str
    patch_size: int
    image_size: int  # side of the images it was trained on (our crop size, or 224)
    path: Path | None  # None for a randomly initialised network
    key: str = "teacher"
    data: str | None = None  # the pre-training dataset spec (our checkpoints)
    build_kwargs: dict[str, Any] = field(default_factory=dict)  # build_backbone(arch, patch_size, **these)
    meta: dict[str, Any] = field(default_factory=dict)  # our checkpoints' metadata (epoch, step, config)

    @property
    def name(self) -> str:
        """Table label, e.g. ``ViT-S/16``; non-standard sizes add ``(depth 4, width 192)``."""
        label = f"{_ARCH_NAMES.get(self.arch, self.arch)}/{self.patch_size}"
        sizes = {k: self.build_kwargs[k] for k in ("depth", "embed_dim") if k in self.build_kwargs}
        if sizes:
            label += " (" + ", ".join(f"{'width' if k == 'embed_dim' else k} {v}" for k, v in sizes.items()) + ")"
        return label

    @property
    def num_params(self) -> int:
        return sum(p.numel() for name, p in self.backbone.named_parameters() if name != "masked_embed")

    def identity(self) -> dict[str, Any]:
        """What makes its features unique (keys the feature cache): file, modification time, key."""
        if self.path is None:
            return {"checkpoint": "random-init", "arch": self.arch, **self.build_kwargs}
        stat = os.stat(self.path)
        return {"checkpoint": str(self.path.resolve()), "mtime_ns": stat.st_mtime_ns, "size": stat.st_size,
                "key": self.key}


def load_backbone(path: str | Path, key: str = "teacher", arch: str | None = None, patch_size: int | None = None,
                  **overrides: Any) -> LoadedBackbone:
    """Load the ``key`` backbone of ``path`` (ours or official), in eval mode.

    ``arch``/``patch_size`` are needed for official files only (patch size: read from the weights
    when omitted); for ours they must agree with the file's config if given. ``overrides`` go to
    ``build_backbone`` (e.g. ``drop_path_rate`` for fine-tuning).
    """
    path = Path(path)
    check_key(key)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if is_our_checkpoint(path):
        return _load_ours(path, key, arch, patch_size, overrides)
    if arch is None:
        raise ValueError(f"{path} is not one of our .safetensors checkpoints: name its architecture with "
                         f"--arch, arch= in Python (vit_small, vit_base, vit_large, swin_tiny, ...)")
    from ibot import hub

    backbone = hub.backbone_from_file(path, arch, patch_size, key=key, **overrides)
    patch_size = patch_size or backbone.patch_size
    image_size = int(getattr(backbone.patch_embed, "img_size", (OFFICIAL_IMAGE_SIZE,))[0])  # its pos_embed's size
    kwargs = {k: v for k, v in overrides.items() if k not in ("drop_path_rate", "masked_im_modeling")}
    return LoadedBackbone(backbone.eval(), arch, patch_size, image_size, path, key, build_kwargs=kwargs)


def _load_ours(path: Path, key: str, arch: str | None, patch_size: int | None,
               overrides: dict[str, Any]) -> LoadedBackbone:
    from ibot.formats.ours import load_checkpoint, read_shapes, strip_prefix
    from ibot.models import build_backbone

    shapes, meta = read_shapes(path, prefix=f"{key}.backbone.")
    if checkpoint_kind(meta, path) != "pretrain":
        raise ValueError(f"{path} holds no pre-training config; is it a pre-training checkpoint?")
    file_arch, file_patch, kwargs = backbone_kwargs_from_config(meta["config"])
    if (arch and arch != file_arch) or (patch_size and patch_size != file_patch):
        raise ValueError(f"{path} holds a {file_arch}/{file_patch} backbone, but --arch/--patch-size say "
                         f"{arch or file_arch}/{patch_size or file_patch}")
    found = backbone_shape_of(strip_prefix(f"{key}.backbone.", shapes))
    if found is None:
        raise ValueError(f"{path} has no '{key}.backbone.*' tensors")
    described = expected_backbone_shape(file_arch, file_patch, **kwargs)
    if found.differences(described):  # before building: the metadata may promise a huge network
        raise ValueError(f"{path}: its metadata describes a {file_arch} {described}, but its {key} backbone's "
                         f"tensors are a {found}; the file's config does not match its weights")
    state = strip_prefix(f"{key}.backbone.", load_checkpoint(path, prefix=f"{key}.backbone.")[0])
    backbone = build_backbone(file_arch, patch_size=file_patch, masked_im_modeling="masked_embed" in state,
                              **{**kwargs, **overrides})
    try:
        backbone.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"{path}: the '{key}' backbone does not match its config ({file_arch} {described}): "
                         f"{' '.join(str(exc).split())}") from None
    return LoadedBackbone(backbone.eval(), file_arch, file_patch, kwargs["img_size"], path, key,
                          data=meta["config"]["data"]["data"], build_kwargs=kwargs, meta=meta)


def random_backbone(arch: str, patch_size: int, image_size: int, seed: int = 0, **kwargs: Any) -> LoadedBackbone:
    """The same network at random initialisation (the baseline every protocol should beat)."""
    from ibot.models import build_backbone

    torch.manual_seed(seed)
    kwargs = {**kwargs, "img_size": image_size}
    backbone = build_backbone(arch, patch_size=patch_size, **kwargs)
    return LoadedBackbone(backbone.eval(), arch, patch_size, image_size, None, build_kwargs=kwargs)


def load_head(path: str | Path, key: str = "teacher", needed_by: str = "prototype clustering") -> nn.Module:
    """The ``key`` pre-training head (``IBOTHead``) of our checkpoint or an official full one;
    ``needed_by`` names what needs it in the error for a file without one."""
    from ibot import hub

    check_key(key)
    _, state = hub.network_state(path, key)
    if not state:
        raise ValueError(f"{path} holds no '{key}' head (a backbone-only file?); {needed_by} needs "
                         "a full checkpoint")
    return hub.head_from_file(path, key, **infer_head_kwargs(state))
