"""ibot.build: what each config field becomes in the constructors."""

import pytest
import torch

from ibot.build import (backbone_kwargs, build_augmentation, build_loss, build_mask_generator,
                        build_student_teacher)
from ibot.config import get_preset, resolve_config
from tests.tiny import TINY_CROP_OVERRIDES, TINY_MODEL_OVERRIDES


def test_augmentation_kwargs_carry_the_data_section():
    assert get_preset("vit_small_16").data.blur_sigma == (0.1, 2.0)  # official radius range
    cfg = resolve_config("cpu", overrides=["data.blur_sigma=[0.05, 0.3]", "data.local_crops_number=3"])
    augmentation = build_augmentation(cfg.data, batched_color=False)  # the Pillow path, blur included
    assert augmentation.local_transform.transforms[4].sigma == (0.05, 0.3)
    assert (augmentation.global_crops_size, augmentation.local_crops_number) == (cfg.data.global_crops_size, 3)
    assert build_augmentation(cfg.data, local_crops_number=0).local_crops_number == 0
    assert build_augmentation(cfg.data).batched_color is cfg.data.batched_color is True  # the cpu preset's


def test_loss_gets_every_field_by_name():
    cfg = resolve_config("vit_small_16", overrides=[
        "loss.warmup_teacher_temp=0.03", "loss.teacher_temp=0.06", "loss.warmup_teacher_patch_temp=0.02",
        "loss.teacher_patch_temp=0.05", "loss.warmup_teacher_temp_epochs=4", "optim.epochs=10",
        "mask.pred_start_epoch=2", "loss.student_temp=0.2", "loss.center_momentum=0.8", "loss.lambda1=0.5",
        "loss.lambda2=2", "loss.centering=sinkhorn", "data.local_crops_number=3", "model.out_dim=32",
        "model.patch_out_dim=32"])
    loss = build_loss(cfg)
    assert (loss.ngcrops, loss.nlcrops, loss.student_temp, loss.lambda1, loss.lambda2) == (2, 3, 0.2, 0.5, 2.0)
    assert loss.center_momentum == loss.center_momentum2 == 0.8 and loss.centering == "sinkhorn"
    assert loss.center.shape == (1, 32) and loss.center2.shape == (1, 1, 32)
    assert len(loss.teacher_temp_schedule) == 10
    assert (loss.teacher_temp_schedule[0], loss.teacher_temp_schedule[-1]) == pytest.approx((0.03, 0.06))
    # the patch temperatures, held at their warm-up value until MIM starts at epoch 2
    assert loss.teacher_temp2_schedule[:3] == pytest.approx([0.02] * 3)
    assert loss.teacher_temp2_schedule[-1] == pytest.approx(0.05)


def test_mask_generator_follows_the_mask_section():
    cfg = resolve_config("vit_small_16", overrides=["mask.pred_shape=rand", "mask.pred_start_epoch=3"])
    masks = build_mask_generator(cfg.mask)
    assert (masks.pred_shape, masks.pred_start_epoch) == ("rand", 3)
    assert (masks.pred_ratio, masks.pred_ratio_var) == ([0.0, 0.3], [0.0, 0.2])
    assert build_mask_generator(cfg.mask, pred_shape="block").pred_shape == "block"


def test_student_and_teacher_start_equal_and_only_the_student_learns():
    cfg = resolve_config("cpu", overrides=[*TINY_MODEL_OVERRIDES, *TINY_CROP_OVERRIDES, "model.drop_path_rate=0.1"])
    student, teacher = build_student_teacher(cfg)
    teacher_state = teacher.state_dict()
    for key, value in student.state_dict().items():
        if "masked_embed" not in key:
            assert torch.equal(teacher_state[key], value), key
    assert "backbone.masked_embed" in student.state_dict() and "backbone.masked_embed" not in teacher_state
    assert all(not p.requires_grad for p in teacher.parameters())
    assert student.backbone.embed_dim == 32 and len(student.backbone.blocks) == 1
    assert student.backbone.patch_size == 4 == backbone_kwargs(cfg)["patch_size"]
    assert student.head.last_layer.weight_g.requires_grad is not cfg.model.norm_last_layer

