"""Official iBOT checkpoints in our format: ``ibot convert``, and resuming pre-training from them.

:func:`official_to_ours` renames what :func:`ibot.formats.official.read_official` reads from an
official container (both networks and the loss centres of a full checkpoint, or a published
backbone) to our keys (``student.backbone.*``, ``teacher.head.*``,
``loss.center``, ...); :func:`convert_checkpoint` adds the pre-training config that the official
``args`` and the tensor shapes describe, checks every tensor against the networks that config
builds, and writes one of our ``.safetensors`` checkpoints (:mod:`ibot.formats.ours`).

The official optimizer state is not carried over: its moments are indexed by the official
parameter order, so AdamW restarts them on resume.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ibot.config import PretrainConfig, config_from_dict, set_option
from ibot.formats import official
from ibot.formats.official import NETWORKS
from ibot.formats.ours import check_key, is_our_checkpoint, save_checkpoint, strip_prefix

__all__ = ["OFFICIAL_ARGS", "convert_checkpoint", "official_config", "official_to_ours", "official_training_state"]

# official main_ibot.py argument -> our config option
OFFICIAL_ARGS = {
    "arch": "model.arch", "patch_size": "model.patch_size", "window_size": "model.window_size",
    "drop_path": "model.drop_path_rate", "norm_last_layer": "model.norm_last_layer",
    "pred_ratio": "mask.pred_ratio", "pred_ratio_var": "mask.pred_ratio_var", "pred_shape": "mask.pred_shape",
    "pred_start_epoch": "mask.pred_start_epoch",
    "lambda1": "loss.lambda1", "lambda2": "loss.lambda2", "warmup_teacher_temp": "loss.warmup_teacher_temp",
    "teacher_temp": "loss.teacher_temp", "warmup_teacher_patch_temp": "loss.warmup_teacher_patch_temp",
    "teacher_patch_temp": "loss.teacher_patch_temp", "warmup_teacher_temp_epochs": "loss.warmup_teacher_temp_epochs",
    "epochs": "optim.epochs", "batch_size_per_gpu": "optim.batch_size_per_device", "lr": "optim.lr",
    "min_lr": "optim.min_lr", "warmup_epochs": "optim.warmup_epochs", "weight_decay": "optim.weight_decay",
    "weight_decay_end": "optim.weight_decay_end", "clip_grad": "optim.clip_grad",
    "freeze_last_layer": "optim.freeze_last_layer", "momentum_teacher": "optim.momentum_teacher",
    "global_crops_number": "data.global_crops_number", "global_crops_scale": "data.global_crops_scale",
    "local_crops_number": "data.local_crops_number", "local_crops_scale": "data.local_crops_scale",
    "seed": "run.seed",
}
SIZE_OPTIONS = ("embed_dim", "depth", "num_heads")


def _json_safe(value: Any) -> Any:
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return str(value)


def _network_tensors(state: dict[str, torch.Tensor], name: str, path: Path) -> dict[str, torch.Tensor]:
    """``backbone.*`` / ``head.*`` of one official network -> ``name.backbone.*`` / ``name.head.*``."""
    stray = sorted(k for k in state if not k.startswith(("backbone.", "head.")))
    if stray:
        raise ValueError(f"{path}: '{name}' has keys outside backbone./head.: {stray[:10]}")
    return {f"{name}.{k}": v for k, v in state.items()}


def official_to_ours(path: str | Path, key: str = "teacher") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors of an official checkpoint under our keys, and ``{"epoch", "networks", "args"}``.

    A full checkpoint gives both networks and ``loss.center`` / ``loss.center2``; a backbone-only
    file gives ``{key}.backbone.*``.
    """
    from ibot.hub import DERIVED_KEYS

    path = Path(path)
    check_key(key)
    checkpoint = official.read_official(path)
    tensors: dict[str, torch.Tensor] = {}
    if checkpoint.backbone is not None:  # published backbone
        tensors = {f"{key}.backbone.{k}": v for k, v in checkpoint.backbone.items()}
        networks = [key]
    else:
        networks = list(checkpoint.networks)
        for name, state in checkpoint.networks.items():
            tensors.update(_network_tensors(state, name, path))
        tensors.update({f"loss.{k}": v for k, v in checkpoint.centres.items()})
    # buffers the official Swin saves and we derive (relative position index)
    tensors = {k: v for k, v in tensors.items() if not k.endswith(DERIVED_KEYS)}
    args = checkpoint.args or {}
    meta = {"epoch": checkpoint.epoch, "networks": networks, "args": {k: _json_safe(v) for k, v in args.items()}}
    return tensors, meta


def official_training_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """What resuming pre-training takes from an official full ``checkpoint.pth``: both networks and
    the loss centres under our keys, and the epoch (:func:`official_to_ours`; ``source``: the file,
    for messages); a file without both networks is refused."""
    tensors, meta = official_to_ours(path)
    missing = {"student", "teacher"} - set(meta["networks"])
    if missing:
        raise ValueError(f"{path} has no {' or '.join(sorted(missing))} network; resuming needs a full "
                         f"training checkpoint (checkpoint.pth), not a backbone-only file")
    return tensors, {**meta, "source": str(path)}


def _is_shared(head: dict[str, torch.Tensor]) -> bool:
    """The last layer is tied (``shared_head``) when ``last_layer2`` repeats ``last_layer``."""
    return all(f"last_layer2.{n}" in head and torch.equal(head[f"last_layer.{n}"], head[f"last_layer2.{n}"])
               for n in ("weight_g", "weight_v"))


def official_config(tensors: dict[str, torch.Tensor], args: dict[str, Any], arch: str | None = None,
                    patch_size: int | None = None, window_size: int | None = None,
                    **sizes: int | None) -> PretrainConfig:
    """The pre-training config of an official run: defaults, then its ``args``, then the explicit
    ``arch`` / ``patch_size`` / ``window_size`` / size overrides, then what the tensors fix
    (ViT image size from ``pos_embed``, head dimensions, whether the last layers are tied)."""
    from ibot.models import BACKBONES
    from ibot.models.shapes import infer_head_kwargs

    official_arch = str(args.get("arch", "")).replace("deit", "vit")  # the official code renames DeiT
    if arch is None and official_arch not in BACKBONES:
        raise ValueError(f"name the architecture of this checkpoint with --arch ({', '.join(BACKBONES)}); "
                         f"its args say {args.get('arch', 'nothing')!r}")
    cfg = PretrainConfig()
    for name, option in OFFICIAL_ARGS.items():
        if args.get(name) is not None and name not in ("arch", "patch_size"):
            set_option(cfg, option, args[name])
    explicit = {"model.arch": arch or official_arch, "model.patch_size": patch_size,
                "model.window_size": window_size, **{f"model.{k}": sizes.get(k) for k in SIZE_OPTIONS}}
    for option, value in explicit.items():
        if value is not None:
            set_option(cfg, option, value)
    backbone = next((s for s in (strip_prefix(f"{n}.backbone.", tensors) for n in NETWORKS) if s), {})
    if patch_size is None:  # the weights know it; the official args say 16 even for Swin (patch 4)
        if "patch_embed.proj.weight" in backbone:
            cfg.model.patch_size = int(backbone["patch_embed.proj.weight"].shape[-1])
        elif args.get("patch_size"):
            cfg.model.patch_size = int(args["patch_size"])
    if cfg.model.arch.startswith("vit") and "pos_embed" in backbone:
        side = math.isqrt(backbone["pos_embed"].shape[1] - 1)  # (1, 1 + side**2, D)
        cfg.model.img_size = cfg.data.global_crops_size = side * cfg.model.patch_size
    for name in NETWORKS:
        head = strip_prefix(f"{name}.head.", tensors)
        if not head:
            continue
        kwargs = infer_head_kwargs(head)
        if kwargs["norm"] is not None:
            raise ValueError(f"the {name} head has a norm layer (official --norm_in_head), which our config cannot describe")
        cfg.model.out_dim, cfg.model.patch_out_dim = kwargs["out_dim"], kwargs["patch_out_dim"]
        cfg.model.head_hidden_dim, cfg.model.head_bottleneck_dim = kwargs["hidden_dim"], kwargs["bottleneck_dim"]
        cfg.model.head_nlayers = kwargs["nlayers"]
        setattr(cfg.model, "shared_head" if name == "student" else "shared_head_teacher", _is_shared(head))
    return cfg


def _check_network(tensors: dict[str, torch.Tensor], name: str, cfg: PretrainConfig, path: Path) -> None:
    """Load ``name``'s tensors into the network ``cfg`` builds; a one-line error lists the mismatches."""
    from ibot.hub import backbone_kwargs_from_config
    from ibot.models import IBOTHead, build_backbone

    arch, patch_size, kwargs = backbone_kwargs_from_config(cfg.to_dict())
    parts: list[tuple[str, nn.Module]] = []
    backbone_state = strip_prefix(f"{name}.backbone.", tensors)
    backbone = build_backbone(arch, patch_size=patch_size, masked_im_modeling="masked_embed" in backbone_state, **kwargs)
    parts.append(("backbone", backbone))
    if any(k.startswith(f"{name}.head.") for k in tensors):
        m = cfg.model
        shared = m.shared_head if name == "student" else m.shared_head_teacher
        parts.append(("head", IBOTHead(backbone.embed_dim, m.out_dim, m.patch_out_dim, nlayers=m.head_nlayers,
                                       hidden_dim=m.head_hidden_dim, bottleneck_dim=m.head_bottleneck_dim,
                                       shared_head=shared)))
    for part, module in parts:
        state = strip_prefix(f"{name}.{part}.", tensors)
        missing = sorted(set(module.state_dict()) - set(state))
        unexpected = sorted(set(state) - set(module.state_dict()))
        if missing or unexpected:
            raise ValueError(f"{path}: the {name} {part} does not fit {arch}/{patch_size} {kwargs}: "
                             f"missing keys ({len(missing)}) {missing[:8]}, unexpected keys ({len(unexpected)}) "
                             f"{unexpected[:8]} (set --arch, --patch-size, --embed-dim, --depth, --num-heads)")
        try:
            module.load_state_dict(state)
        except RuntimeError as exc:  # shape mismatches
            raise ValueError(f"{path}: the {name} {part} does not fit {arch}/{patch_size} {kwargs}: "
                             f"{' '.join(str(exc).split())[:500]} (set --embed-dim, --depth, --num-heads)") from None


def convert_checkpoint(src: str | Path, dst: str | Path, arch: str | None = None, patch_size: int | None = None,
                       key: str = "teacher", window_size: int | None = None, **sizes: int | None) -> tuple[Path, dict[str, Any]]:
    """Write the official checkpoint ``src`` as our ``dst`` (.safetensors); returns it and its metadata."""
    src, dst = Path(src), Path(dst)
    if not is_our_checkpoint(dst):
        raise ValueError(f"output {dst} must end in .safetensors (our checkpoint format)")
    if is_our_checkpoint(src):
        raise ValueError(f"{src} is already a .safetensors file; convert reads official .pth checkpoints")
    tensors, info = official_to_ours(src, key)
    cfg = official_config(tensors, info["args"], arch, patch_size, window_size, **sizes)
    for name in info["networks"]:
        _check_network(tensors, name, cfg, src)
    config = cfg.to_dict()
    config_from_dict(config)  # what every reader of our checkpoints will do with it
    meta = {"epoch": info["epoch"], "step_in_epoch": 0, "config": config,
            "source": {"format": "official", "file": src.name, "networks": info["networks"], "args": info["args"]}}
    return save_checkpoint(dst, tensors, meta, kind="pretrain"), meta
