import dataclasses
import math
from typing import get_type_hints

import pytest

from ibot.config import (
    OPTION_LIMITS,
    PRESETS,
    PretrainConfig,
    config_changes,
    config_from_dict,
    get_preset,
    is_run_defining,
    option_value,
    resolve_config,
)
from ibot.loss import CENTERINGS


def test_official_vit_small_recipe():
    cfg = get_preset("vit_small_16")
    assert (cfg.model.arch, cfg.model.patch_size, cfg.model.out_dim) == ("vit_small", 16, 8192)
    assert cfg.model.norm_last_layer is False and cfg.model.shared_head is True
    assert cfg.mask.pred_ratio == [0.0, 0.3] and cfg.mask.pred_ratio_var == [0.0, 0.2]
    assert (cfg.data.local_crops_number, cfg.data.local_crops_size) == (10, 96)
    assert cfg.data.global_crops_scale == (0.25, 1.0) and cfg.data.local_crops_scale == (0.05, 0.25)
    assert (cfg.loss.teacher_temp, cfg.loss.teacher_patch_temp, cfg.loss.warmup_teacher_temp_epochs) == (0.07, 0.07, 30)
    assert (cfg.optim.lr, cfg.optim.clip_grad, cfg.optim.momentum_teacher) == (5e-4, 3.0, 0.996)
    assert (cfg.optim.weight_decay, cfg.optim.weight_decay_end, cfg.optim.epochs) == (0.04, 0.4, 800)


def test_swin_and_vit_base_recipes():
    swin = get_preset("swin_tiny_14")
    assert (swin.model.arch, swin.model.patch_size, swin.model.window_size) == ("swin_tiny", 4, 14)
    assert swin.mask.pred_start_epoch == 50 and swin.optim.epochs == 300
    assert get_preset("swin_tiny_7").model.window_size == 7
    base = get_preset("vit_base_16")
    assert base.model.norm_last_layer and base.optim.freeze_last_layer == 3 and base.optim.epochs == 400
    assert get_preset("vit_base_16_rand").mask.pred_shape == "rand"


def test_presets_are_independent_copies():
    a = get_preset("vit_small_16")
    a.mask.pred_ratio.append(0.9)
    assert get_preset("vit_small_16").mask.pred_ratio == [0.0, 0.3]


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("preset: cpu\noptim:\n  lr: 0.002\n  epochs: 3\nmask:\n  pred_ratio: 0.4\n")
    cfg = resolve_config(None, path, ["optim.epochs=5", "data.global_crops_scale=[0.3, 1]"])
    assert cfg.model.arch == "vit_tiny"  # from the preset named in the file
    assert cfg.optim.lr == 0.002 and cfg.optim.epochs == 5
    assert cfg.mask.pred_ratio == 0.4
    assert cfg.data.global_crops_scale == (0.3, 1.0)


def test_round_trip_through_dict():
    cfg = resolve_config("swin_tiny_7", overrides=["run.seed=3"])
    assert config_from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("override, message", [
    ("optim.lrr=1", "Did you mean 'optim.lr'"),
    ("optimm.lr=1", "Did you mean 'optim.lr'"),
    ("optim.epochs=abc", "optim.epochs"),
    ("model.shared_head=maybe", "true or false"),
    ("data.global_crops_size=30", "not divisible"),
    ("mask.pred_shape=grid", "mask.pred_shape"),
    ("loss.centering=median", "loss.centering must be one of mean, sinkhorn"),
])
def test_bad_overrides_name_the_option(override, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        resolve_config("cpu", overrides=[override])


def test_batched_crops_need_batched_colour():
    assert get_preset("cpu").data.batched_crops and not get_preset("vit_small_16").data.batched_crops
    assert not resolve_config("cpu", overrides=["data.batched_crops=false"]).data.batched_crops
    with pytest.raises(ValueError, match="^data.batched_crops needs data.batched_color=true"):
        resolve_config("vit_small_16", overrides=["data.batched_crops=true"])


def test_unknown_preset_suggests():
    with pytest.raises(ValueError, match="Did you mean 'vit_small_16'"):
        get_preset("vit_smal_16")
    assert "cpu" in PRESETS


def test_missing_yaml_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        resolve_config("cpu", tmp_path / "nope.yaml")


def test_every_numeric_option_has_a_range():
    cfg = PretrainConfig()
    numeric = []
    for section in dataclasses.fields(cfg):
        for name, hint in get_type_hints(type(getattr(cfg, section.name))).items():
            if any(t in str(hint) for t in ("int", "float")) and hint is not bool:
                numeric.append(f"{section.name}.{name}")
    assert sorted(numeric) == sorted(OPTION_LIMITS)


def _outside(option: str) -> list[str]:
    """Values just outside the range of ``option`` (and not-a-number for the float ones)."""
    cfg, (section, name) = PretrainConfig(), option.split(".")
    limit, value = OPTION_LIMITS[option], option_value(cfg, option)
    integer = "float" not in str(get_type_hints(type(getattr(cfg, section)))[name])
    below = limit.low if limit.low_open else limit.low - (1 if integer else 1e-3)
    values = [below] + ([limit.high if limit.high_open else limit.high + (1 if integer else 1e-3)]
                        if math.isfinite(limit.high) else [])
    values = [int(v) if integer else v for v in values] + ([] if integer else [float("nan"), float("inf")])
    if isinstance(value, (list, tuple)):  # a list or pair: the bad value in one position
        return [f"[{', '.join(str(v) for v in [*value[:-1], bad])}]" for bad in values]
    return [str(v) for v in values]


@pytest.mark.parametrize("option", sorted(OPTION_LIMITS))
def test_values_out_of_range_are_refused_naming_the_option(option):
    for text in _outside(option):
        with pytest.raises(ValueError, match=f"^{option}=.* is out of range: .*must be "):
            resolve_config("vit_small_16", overrides=[f"{option}={text}"])


def test_a_negative_lr_or_batch_is_named_as_such():
    with pytest.raises(ValueError, match=r"^optim.lr=-0.001 is out of range: must be finite and > 0$"):
        resolve_config("cpu", overrides=["optim.lr=-1e-3"])
    with pytest.raises(ValueError, match=r"^optim.batch_size_per_device=-8 is out of range: must be >= 1$"):
        resolve_config("cpu", overrides=["optim.batch_size_per_device=-8"])  # not the KoLeo term's message


@pytest.mark.parametrize("override, message", [
    ("data.global_crops_scale=[0.9, 0.4]", "data.global_crops_scale=[0.9, 0.4]: the first value (low) must not exceed"),
    ("optim.warmup_epochs=6", "optim.warmup_epochs (6) exceeds optim.epochs (5)"),
    ("run.device=gpu", "run.device must be auto, cpu, cuda or cuda:N"),
])
def test_combinations_are_checked(override, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        resolve_config("cpu", overrides=[override])


def test_changes_on_a_base_config_and_which_define_the_run():
    base = resolve_config("cpu")
    cfg = resolve_config(base=base, overrides=["optim.lr=1e-3", "data.data=/my/images", "model.depth=2"])
    assert base.optim.lr == 4e-3  # a copy was changed
    changes = config_changes(base, cfg)
    assert changes == [("model.depth", 4, 2), ("data.data", "fashion-mnist:subset", "/my/images"),
                       ("optim.lr", 4e-3, 1e-3)]
    assert [is_run_defining(key) for key, _, _ in changes] == [True, True, False]
    assert is_run_defining("optim.batch_size_per_device") and is_run_defining("data.local_crops_number")
    assert not is_run_defining("run.max_steps") and not is_run_defining("data.num_workers")


def test_config_accepts_exactly_the_loss_centerings():
    for centering in CENTERINGS:
        assert resolve_config("cpu", overrides=[f"loss.centering={centering}"]).loss.centering == centering
    with pytest.raises(ValueError, match="loss.centering"):
        resolve_config("cpu", overrides=["loss.centering=median"])
