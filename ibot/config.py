"""Typed configuration for pre-training, with the official recipes as presets.

Every official default lives here, once, with its source. A run is described by a preset, an
optional YAML file and ``section.field=value`` overrides, applied in that order::

    cfg = resolve_config("vit_small_16", yaml_path="my.yaml", overrides=["optim.epochs=100"])
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

Ratio = Union[float, list[float]]
CENTERINGS = ("mean", "sinkhorn")  # of the teacher's outputs: the official centre, DINOv2's Sinkhorn-Knopp


@dataclass
class ModelConfig:
    """Backbone and iBOT head (official ``main_ibot.py`` arguments of the same names)."""

    arch: str = "vit_small"
    patch_size: int = 16
    window_size: int = 7  # Swin only
    img_size: int | None = None  # size the position embedding is made for (None: data.global_crops_size)
    drop_path_rate: float = 0.1  # student only
    embed_dim: int | None = None  # size overrides for non-standard backbones
    depth: int | None = None
    num_heads: int | None = None
    out_dim: int = 8192
    patch_out_dim: int = 8192
    shared_head: bool = True  # ties the [CLS] and patch last layers (student)
    shared_head_teacher: bool = True
    norm_last_layer: bool = False
    head_hidden_dim: int = 2048
    head_bottleneck_dim: int = 256
    head_nlayers: int = 3


@dataclass
class DataConfig:
    """Dataset and multi-crop augmentation (paper: 2 x 224 global, 10 x 96 local crops)."""

    data: str = "fashion-mnist"  # built-in name, "cifar10:PATH", ..., or an ImageFolder path
    global_crops_number: int = 2
    global_crops_size: int = 224
    global_crops_scale: tuple[float, float] = (0.25, 1.0)
    local_crops_number: int = 10
    local_crops_size: int = 96
    local_crops_scale: tuple[float, float] = (0.05, 0.25)
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # Gaussian blur std in pixels of the crop
    num_workers: int = 8
    # colour jitter, grayscale, blur and solarisation batched on the training device; the workers
    # only decode, crop and flip (ibot.data.batched_color)
    batched_color: bool = False


@dataclass
class MaskConfig:
    """Masked image modelling: which patches of the global crops the student does not see."""

    pred_shape: str = "block"  # "block" (BEiT) or "rand"
    pred_ratio: Ratio = field(default_factory=lambda: [0.0, 0.3])
    pred_ratio_var: Ratio = field(default_factory=lambda: [0.0, 0.2])
    pred_aspect_ratio: tuple[float, float] = (0.3, 1 / 0.3)
    pred_start_epoch: int = 0


@dataclass
class LossConfig:
    """Teacher sharpening and loss weights; temperatures warm up linearly per epoch."""

    warmup_teacher_temp: float = 0.04
    teacher_temp: float = 0.07
    warmup_teacher_patch_temp: float = 0.04
    teacher_patch_temp: float = 0.07
    warmup_teacher_temp_epochs: int = 30
    student_temp: float = 0.1
    center_momentum: float = 0.9
    lambda1: float = 1.0  # [CLS] self-distillation
    lambda2: float = 1.0  # masked image modelling
    centering: str = "mean"  # "mean": the official centre; "sinkhorn": DINOv2's Sinkhorn-Knopp (an option)
    koleo_weight: float = 0.0  # DINOv2's KoLeo on the student backbone's global [CLS] (an option; 0.1 there)


@dataclass
class OptimConfig:
    """AdamW, schedules, EMA and clipping (official values shared by every recipe)."""

    epochs: int = 800
    batch_size_per_device: int = 64
    lr: float = 5e-4  # for a total batch of 256; scaled linearly with the total batch
    min_lr: float = 1e-6
    warmup_epochs: int = 10
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    clip_grad: float = 3.0  # per-parameter gradient norm; 0 disables
    freeze_last_layer: int = 1
    momentum_teacher: float = 0.996
    fused: bool = True  # fused AdamW (CUDA, CPU); false: foreach


@dataclass
class RunConfig:
    """Where and how the run executes."""

    output_dir: str = "runs/ibot"
    seed: int = 0
    device: str = "auto"  # "auto", "cpu", "cuda"
    precision: str = "auto"  # "auto" (bf16 on GPU and on CPUs with native bf16), "fp32", "bf16", "fp16"
    log_every_steps: int = 10
    checkpoint_every_steps: int = 0  # 0: only at the end of each epoch
    max_steps: int = 0  # stop after this many steps in total (0: run all epochs); for tests
    knn_eval: bool = True  # k-NN accuracy of the teacher vs random init on the val split at the end
    eval_every: int = 0  # k-NN accuracy of the teacher on the val split every N epochs (0: never)
    compile: bool = False  # torch.compile the student and teacher (GPU; slow first steps)
    tensorboard: bool = True  # TensorBoard events under output_dir/tensorboard (if installed)
    progress: bool = True


@dataclass
class PretrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def backbone_kwargs(cfg: PretrainConfig) -> dict[str, Any]:
    """Keyword arguments of ``ibot.models.build_backbone`` (besides ``arch``) that a config fixes."""
    m = cfg.model
    kwargs: dict[str, Any] = {k: v for k, v in (("embed_dim", m.embed_dim), ("depth", m.depth),
                                                ("num_heads", m.num_heads)) if v}
    kwargs.update(patch_size=m.patch_size, img_size=m.img_size or cfg.data.global_crops_size)
    if m.arch.startswith("swin"):
        kwargs["window_size"] = m.window_size
    return kwargs


def augmentation_kwargs(data: DataConfig, local_crops_number: int | None = None) -> dict[str, Any]:
    """Keyword arguments of ``ibot.data.MultiCropAugmentation`` that a data config fixes."""
    return dict(global_crops_size=data.global_crops_size, local_crops_size=data.local_crops_size,
                global_crops_scale=tuple(data.global_crops_scale), local_crops_scale=tuple(data.local_crops_scale),
                global_crops_number=data.global_crops_number, blur_sigma=tuple(data.blur_sigma),
                local_crops_number=data.local_crops_number if local_crops_number is None else local_crops_number)


def mask_stride(cfg: PretrainConfig) -> int:
    """Pixels per mask cell: the patch size for ViT, the last stage's stride (8 patches) for Swin."""
    return cfg.model.patch_size * (8 if cfg.model.arch.startswith("swin") else 1)


# --------------------------------------------------------------------------------------------
# Presets. Sources: the official README commands and OFFICIAL_NOTES (recipes table); the totals
# of the official runs are noted so that a user on fewer devices can keep them.
# --------------------------------------------------------------------------------------------
def _vit_small_16() -> PretrainConfig:
    # README: 16 GPUs x 64 = 1024, 800 epochs, norm_last_layer false, freeze_last_layer 1.
    return PretrainConfig()


def _vit_base_16() -> PretrainConfig:
    # Paper: 400 epochs, total batch 1024; norm_last_layer true, freeze_last_layer 3.
    cfg = PretrainConfig()
    cfg.model.arch = "vit_base"
    cfg.model.norm_last_layer = True
    cfg.optim.epochs = 400
    cfg.optim.freeze_last_layer = 3
    return cfg


def _vit_large_16() -> PretrainConfig:
    # Paper: 250 epochs, total batch 1024 (64 GPUs x 16).
    cfg = _vit_base_16()
    cfg.model.arch = "vit_large"
    cfg.optim.epochs = 250
    cfg.optim.batch_size_per_device = 16
    return cfg


def _swin_tiny(window: int) -> PretrainConfig:
    # README: Swin-T/14 on 40 GPUs x 26 = 1040, 300 epochs, pred_start_epoch 50, patch 4.
    cfg = PretrainConfig()
    cfg.model.arch = "swin_tiny"
    cfg.model.patch_size = 4
    cfg.model.window_size = window
    cfg.optim.epochs = 300
    cfg.optim.batch_size_per_device = 26
    cfg.mask.pred_start_epoch = 50
    return cfg


def _cpu() -> PretrainConfig:
    """A small ViT on the embedded Fashion-MNIST subset (6,000 images of 28 px) that learns
    visibly in a few minutes on 2 CPU cores. Not an official recipe: sizes scaled down (4 x 4
    patches of 7 px per global crop, 2 x 2 per 14-px local crop), the blur radius scaled with the
    crop (224 -> 28 px), every global crop masked (30% +- 20%: the masked-patch loss is what
    learns fastest here), a higher lr and no frozen last layer for the short schedule, and
    DINOv2's KoLeo term on the student's [CLS] (weight 0.3): without it the [CLS] features drift
    together and the [CLS] self-distillation stalls on this budget (``docs/design.md`` has the
    measured alternatives). The colour half of the augmentation runs batched in the main process
    (``data.batched_color``): about 1.4 times the images/s of the per-crop Pillow path here."""
    cfg = PretrainConfig()
    cfg.model = ModelConfig(
        arch="vit_tiny", patch_size=7, depth=4, embed_dim=128, num_heads=4, drop_path_rate=0.0,
        out_dim=512, patch_out_dim=512, head_hidden_dim=256, head_bottleneck_dim=64,
        norm_last_layer=True,  # steadier than the ViT-S recipe's false on this short run
    )
    cfg.data = DataConfig(
        data="fashion-mnist:subset", global_crops_size=28, local_crops_size=14, local_crops_number=4,
        global_crops_scale=(0.4, 1.0), local_crops_scale=(0.1, 0.4), num_workers=2,
        blur_sigma=(0.1 / 8, 2.0 / 8), batched_color=True,
    )
    cfg.mask.pred_ratio, cfg.mask.pred_ratio_var = 0.3, 0.2
    cfg.optim = OptimConfig(epochs=5, batch_size_per_device=64, lr=4e-3, warmup_epochs=1,
                            freeze_last_layer=0, momentum_teacher=0.99)
    cfg.loss.warmup_teacher_temp_epochs = 2
    # a sharper teacher throughout: at 0.07 this short run drifted towards a uniform teacher
    cfg.loss.teacher_temp = cfg.loss.teacher_patch_temp = 0.04
    cfg.loss.koleo_weight = 0.3
    cfg.run.output_dir = "runs/cpu"
    cfg.run.log_every_steps = 10
    return cfg


def _with_rand_masks(base) -> Any:
    """The "Rand" prediction shape of the official model table: random masks, same ratios."""

    def preset() -> PretrainConfig:
        cfg = base()
        cfg.mask.pred_shape = "rand"
        return cfg

    return preset


PRESETS = {
    "vit_small_16": _vit_small_16,
    "vit_base_16": _vit_base_16,
    "vit_large_16": _vit_large_16,
    "swin_tiny_7": lambda: _swin_tiny(7),
    "swin_tiny_14": lambda: _swin_tiny(14),
    "vit_small_16_rand": _with_rand_masks(_vit_small_16),
    "vit_base_16_rand": _with_rand_masks(_vit_base_16),
    "cpu": _cpu,
}


# Overrides that shrink any preset to a 1-block, 32-wide ViT with small heads and two local crops:
# the smoke-test model of the test suite and of tools/pipeline_check.py (seconds per step on a CPU).
TINY_MODEL_OVERRIDES: tuple[str, ...] = (
    "model.depth=1", "model.embed_dim=32", "model.num_heads=2", "model.out_dim=64", "model.patch_out_dim=64",
    "model.head_hidden_dim=32", "model.head_bottleneck_dim=16", "data.local_crops_number=2")
# ... and 16/8-px crops of 4-px patches for it (4 x 4 and 2 x 2 patches).
TINY_CROP_OVERRIDES: tuple[str, ...] = ("data.global_crops_size=16", "data.local_crops_size=8", "model.patch_size=4")


def get_preset(name: str) -> PretrainConfig:
    if name not in PRESETS:
        hint = difflib.get_close_matches(name, PRESETS, n=1)
        extra = f" Did you mean '{hint[0]}'?" if hint else ""
        raise ValueError(f"unknown preset '{name}'; choose one of {', '.join(PRESETS)}.{extra}")
    return PRESETS[name]()


# --------------------------------------------------------------------------------------------
# Overrides
# --------------------------------------------------------------------------------------------
def _coerce(value: Any, annotation: Any, name: str) -> Any:
    """Convert a YAML/CLI value to the field's declared type."""
    origin = get_origin(annotation)
    args = get_args(annotation)
    if annotation is Any:
        return value
    if origin is Union or (origin is not None and type(None) in args) or str(origin) == "types.UnionType":
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, name)
            except (TypeError, ValueError) as exc:
                errors.append(str(exc))
        raise ValueError(f"option '{name}': cannot read {value!r} ({'; '.join(errors)})")
    if origin in (list, tuple):
        if isinstance(value, str):
            value = yaml.safe_load(value if value.startswith("[") else f"[{value}]")
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"option '{name}' expects a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(v, inner, name) for v in value]
        if origin is tuple:
            if len(args) == 2 and args[1] is not Ellipsis and len(items) != 2:
                raise ValueError(f"option '{name}' expects 2 values, got {value!r}")
            return tuple(items)
        return items
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ValueError(f"option '{name}' expects true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"option '{name}' expects an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ValueError(f"option '{name}' expects an integer, got {value!r}") from None
    if annotation is float:
        try:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"option '{name}' expects a number, got {value!r}") from None
    if annotation is str:
        return str(value)
    raise TypeError(f"option '{name}': unsupported type {annotation}")


def set_option(cfg: PretrainConfig, dotted: str, value: Any) -> None:
    """Set ``section.field`` on ``cfg``; raises a one-line error naming a misspelt key."""
    section_name, _, key = dotted.partition(".")
    sections = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    if section_name not in sections or not key:
        all_keys = [f"{s}.{f.name}" for s, sec in sections.items() for f in dataclasses.fields(sec)]
        hint = difflib.get_close_matches(dotted, all_keys, n=1)
        extra = f" Did you mean '{hint[0]}'?" if hint else ""
        raise ValueError(f"unknown option '{dotted}'.{extra}")
    section = sections[section_name]
    hints = get_type_hints(type(section))
    if key not in hints:
        hint = difflib.get_close_matches(key, list(hints), n=1)
        extra = f" Did you mean '{section_name}.{hint[0]}'?" if hint else ""
        raise ValueError(f"unknown option '{dotted}'.{extra}")
    setattr(section, key, _coerce(value, hints[key], dotted))


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def load_yaml(cfg: PretrainConfig, path: str | Path) -> None:
    """Apply a YAML file of nested sections (``optim: {lr: 1e-3}``); ``preset:`` is ignored here."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    tree = yaml.safe_load(path.read_text()) or {}
    if not isinstance(tree, dict):
        raise ValueError(f"config file {path} must hold a mapping of sections")
    tree.pop("preset", None)
    for dotted, value in _flatten(tree).items():
        set_option(cfg, dotted, value)


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ValueError(f"override '{text}' must look like section.field=value")
    key, _, raw = text.partition("=")
    return key.strip(), yaml.safe_load(raw) if raw.strip() else ""


def resolve_config(preset: str | None = None, yaml_path: str | Path | None = None,
                   overrides: list[str] | tuple[str, ...] = ()) -> PretrainConfig:
    """Preset (or a YAML file's ``preset:``), then the YAML file, then ``key=value`` overrides."""
    if preset is None and yaml_path is not None:
        tree = yaml.safe_load(Path(yaml_path).read_text()) if Path(yaml_path).is_file() else {}
        preset = (tree or {}).get("preset")
    cfg = get_preset(preset) if preset else PretrainConfig()
    if yaml_path is not None:
        load_yaml(cfg, yaml_path)
    for text in overrides:
        set_option(cfg, *parse_override(text))
    validate(cfg)
    return cfg


def config_from_dict(tree: dict[str, Any]) -> PretrainConfig:
    """Rebuild a config saved with ``to_dict`` (checkpoint metadata, ``config.yaml``)."""
    cfg = PretrainConfig()
    for dotted, value in _flatten(copy.deepcopy(tree)).items():
        set_option(cfg, dotted, value)
    return cfg


def validate(cfg: PretrainConfig) -> None:
    """One-line errors for settings that cannot work, naming the option."""
    stride = mask_stride(cfg)
    unit = "Swin stage stride" if cfg.model.arch.startswith("swin") else "patch size"
    for name in ("global_crops_size", "local_crops_size"):
        size = getattr(cfg.data, name)
        if size % stride:
            raise ValueError(f"data.{name}={size} is not divisible by the {unit} {stride}; "
                             f"pick a multiple of {stride}")
    if cfg.data.global_crops_number < 1:
        raise ValueError("data.global_crops_number must be at least 1")
    if cfg.loss.centering not in CENTERINGS:
        raise ValueError(f"loss.centering must be one of {', '.join(CENTERINGS)}, got '{cfg.loss.centering}'")
    if cfg.loss.koleo_weight < 0:
        raise ValueError(f"loss.koleo_weight must be >= 0, got {cfg.loss.koleo_weight}")
    if cfg.loss.koleo_weight > 0 and cfg.optim.batch_size_per_device < 2:
        raise ValueError("loss.koleo_weight > 0 needs optim.batch_size_per_device >= 2 (nearest neighbours in the batch)")
    if cfg.mask.pred_shape not in ("block", "rand"):
        raise ValueError(f"mask.pred_shape must be 'block' or 'rand', got '{cfg.mask.pred_shape}'")
    if cfg.run.precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ValueError(f"run.precision must be auto, fp32, bf16 or fp16, got '{cfg.run.precision}'")
    if cfg.model.shared_head and cfg.model.out_dim != cfg.model.patch_out_dim:
        raise ValueError("model.shared_head needs model.out_dim == model.patch_out_dim")
    start, warmup = cfg.mask.pred_start_epoch, cfg.loss.warmup_teacher_temp_epochs
    if start + warmup > cfg.optim.epochs:
        raise ValueError(f"loss.warmup_teacher_temp_epochs ({warmup}) + mask.pred_start_epoch ({start}) exceed "
                         f"optim.epochs ({cfg.optim.epochs}); lower them for a short run")
    if cfg.optim.batch_size_per_device < 1 or cfg.optim.epochs < 1:
        raise ValueError("optim.batch_size_per_device and optim.epochs must be positive")
