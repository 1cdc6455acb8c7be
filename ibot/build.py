"""Where configuration meets constructors: a :class:`PretrainConfig` turned into the objects of a
pre-training run (backbones, heads, the student / teacher pair, the loss, the mask generator, the
multi-crop augmentation), and the check that a checkpoint's tensors fit the networks a config
builds. The modules below take plain arguments only; every renaming of a config field to a
constructor argument is here, once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ibot.config import DataConfig, MaskConfig, PretrainConfig
from ibot.data.masking import MaskGenerator
from ibot.data.transforms import MultiCropAugmentation
from ibot.formats import ours as ckpt
from ibot.loss import IBOTLoss
from ibot.models import IBOTHead, MultiCropWrapper, build_backbone
from ibot.models.shapes import backbone_shape_of, expected_backbone_shape, infer_head_kwargs

__all__ = ["backbone_kwargs", "build_augmentation", "build_head", "build_loss", "build_mask_generator",
           "build_student_teacher", "check_checkpoint_shapes", "head_differences"]


def backbone_kwargs(cfg: PretrainConfig) -> dict[str, Any]:
    """Keyword arguments of ``ibot.models.build_backbone`` (besides ``arch``) that a config fixes."""
    m = cfg.model
    kwargs: dict[str, Any] = {k: v for k, v in (("embed_dim", m.embed_dim), ("depth", m.depth),
                                                ("num_heads", m.num_heads)) if v}
    kwargs.update(patch_size=m.patch_size, img_size=m.img_size or cfg.data.global_crops_size)
    if m.arch.startswith("swin"):
        kwargs["window_size"] = m.window_size
    return kwargs


def build_head(cfg: PretrainConfig, embed_dim: int, student: bool) -> IBOTHead:
    """The student's head (``norm_last_layer``, ``shared_head``) or the teacher's
    (``shared_head_teacher``) on a backbone of width ``embed_dim``."""
    m = cfg.model
    head = dict(out_dim=m.out_dim, patch_out_dim=m.patch_out_dim, hidden_dim=m.head_hidden_dim,
                bottleneck_dim=m.head_bottleneck_dim, nlayers=m.head_nlayers)
    if student:
        return IBOTHead(embed_dim, norm_last_layer=m.norm_last_layer, shared_head=m.shared_head, **head)
    return IBOTHead(embed_dim, shared_head=m.shared_head_teacher, **head)


def build_student_teacher(cfg: PretrainConfig) -> tuple[MultiCropWrapper, MultiCropWrapper]:
    """Student (drop path, mask token, activation checkpointing with ``model.grad_checkpointing``)
    and teacher (same weights, no mask token) networks."""
    m = cfg.model
    common = backbone_kwargs(cfg)
    student_bb = build_backbone(m.arch, drop_path_rate=m.drop_path_rate, masked_im_modeling=True, **common)
    student_bb.set_grad_checkpointing(m.grad_checkpointing)  # the teacher records no gradient
    teacher_bb = build_backbone(m.arch, drop_path_rate=0.0, masked_im_modeling=False, **common)
    student = MultiCropWrapper(student_bb, build_head(cfg, student_bb.embed_dim, student=True))
    teacher = MultiCropWrapper(teacher_bb, build_head(cfg, teacher_bb.embed_dim, student=False))
    missing, unexpected = teacher.load_state_dict(student.state_dict(), strict=False)
    if missing or [k for k in unexpected if "masked_embed" not in k]:
        raise RuntimeError(f"teacher/student mismatch: missing {missing}, unexpected {unexpected}")
    for param in teacher.parameters():
        param.requires_grad_(False)
    return student, teacher


# IBOTHead argument -> model.* option
HEAD_OPTIONS = {"out_dim": "out_dim", "patch_out_dim": "patch_out_dim", "nlayers": "head_nlayers",
                "hidden_dim": "head_hidden_dim", "bottleneck_dim": "head_bottleneck_dim"}


def check_checkpoint_shapes(cfg: PretrainConfig, shapes: Mapping[str, Sequence[int]], source: str,
                            config_name: str = "this run's config") -> None:
    """One-line error naming both architectures when the student / teacher tensors of a checkpoint
    (their shapes) cannot load into the networks ``cfg`` describes; builds nothing."""
    m = cfg.model
    expected = expected_backbone_shape(m.arch, **backbone_kwargs(cfg))
    for name in ("student", "teacher"):
        found = backbone_shape_of(ckpt.strip_prefix(f"{name}.backbone.", shapes))
        if found is not None and found.differences(expected):
            raise ValueError(f"{source} holds a {found} ({name} backbone), but {config_name} builds "
                             f"model.arch={m.arch}, a {expected}")
        head = ckpt.strip_prefix(f"{name}.head.", shapes)
        differ = head_differences(cfg, head) if head else []
        if differ:
            raise ValueError(f"{source}: its {name} head does not fit {config_name}: {', '.join(differ)}")


def head_differences(cfg: PretrainConfig, head: Mapping[str, Sequence[int]]) -> list[str]:
    """``model.option=value (file: value)`` for each head size of ``cfg`` that a head's tensors (or
    their shapes, unprefixed) contradict; a ValueError when they are not a head's."""
    m, got = cfg.model, infer_head_kwargs(head)
    skip = {"hidden_dim"} if got["nlayers"] == 1 else set()  # no hidden layer to read it from
    skip |= set() if "last_layer2.weight_v" in head else {"patch_out_dim"}
    return [f"model.{option}={getattr(m, option)} (file: {got[kwarg]})" for kwarg, option in HEAD_OPTIONS.items()
            if kwarg not in skip and got[kwarg] != getattr(m, option)]


def build_loss(cfg: PretrainConfig) -> IBOTLoss:
    """The iBOT loss of a run: the ``loss`` section, the head sizes, the crop numbers, the number
    of epochs (temperature schedules) and the epoch MIM starts at. The patch temperatures are
    ``loss.*_teacher_patch_temp``; both centres move with ``loss.center_momentum``."""
    m, d, loss = cfg.model, cfg.data, cfg.loss
    return IBOTLoss(
        out_dim=m.out_dim, patch_out_dim=m.patch_out_dim, ngcrops=d.global_crops_number,
        nlcrops=d.local_crops_number, warmup_teacher_temp=loss.warmup_teacher_temp,
        teacher_temp=loss.teacher_temp, warmup_teacher_temp2=loss.warmup_teacher_patch_temp,
        teacher_temp2=loss.teacher_patch_temp, warmup_teacher_temp_epochs=loss.warmup_teacher_temp_epochs,
        nepochs=cfg.optim.epochs, student_temp=loss.student_temp, center_momentum=loss.center_momentum,
        center_momentum2=loss.center_momentum, lambda1=loss.lambda1, lambda2=loss.lambda2,
        mim_start_epoch=cfg.mask.pred_start_epoch, centering=loss.centering)


def build_mask_generator(mask: MaskConfig, pred_shape: str | None = None) -> MaskGenerator:
    """The masks of the ``mask`` section (``pred_shape`` overrides its shape)."""
    return MaskGenerator(mask.pred_ratio, mask.pred_ratio_var, tuple(mask.pred_aspect_ratio),
                         pred_shape or mask.pred_shape, mask.pred_start_epoch)


def build_augmentation(data: DataConfig, local_crops_number: int | None = None,
                       batched_color: bool | None = None) -> MultiCropAugmentation:
    """The multi-crop augmentation of the ``data`` section; ``local_crops_number`` and
    ``batched_color`` override the section's when given (``batched_color=False`` turns batched
    crops off too)."""
    return MultiCropAugmentation(
        global_crops_size=data.global_crops_size, local_crops_size=data.local_crops_size,
        global_crops_scale=tuple(data.global_crops_scale), local_crops_scale=tuple(data.local_crops_scale),
        global_crops_number=data.global_crops_number, blur_sigma=tuple(data.blur_sigma),
        local_crops_number=data.local_crops_number if local_crops_number is None else local_crops_number,
        batched_color=data.batched_color if batched_color is None else batched_color,
        batched_crops=data.batched_crops and batched_color is not False)
