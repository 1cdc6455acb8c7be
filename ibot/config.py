"""Typed configuration for pre-training, with the official recipes as presets.

Every official default lives here, once, with its source. A run is described by a preset, an
optional YAML file and ``section.field=value`` overrides, applied in that order::

    cfg = resolve_config("vit_small_16", yaml_path="my.yaml", overrides=["optim.epochs=100"])
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from ibot.options import (  # noqa: F401 (set_option, parse_override: re-exported)
    Limit,
    apply,
    check_limits,
    flatten,
    from_dict,
    get_option,
    load_yaml,
    parse_override,
    read_yaml,
    set_option,
)

Ratio = Union[float, list[float]]
ATTENTIONS = ("auto", "fused", "explicit")  # run.attention (ibot.runtime.resolve_attention)


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
    # recompute each transformer block's activations in the backward instead of keeping them (student only)
    grad_checkpointing: bool = False


@dataclass
class DataConfig:
    """Dataset and multi-crop augmentation (paper: 2 x 224 global, 10 x 96 local crops)."""

    data: str = "fashion-mnist"  # built-in name, "cifar10:PATH", ..., an ImageFolder path, or unlabelled images
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
    # with batched_color: crops and flips cut on the training device too; the workers only decode
    # and draw (ibot.data.batched_crops)
    batched_crops: bool = False


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
    init_from: str | None = None  # a new run's networks start from this checkpoint's weights (ours or official)
    seed: int = 0
    device: str = "auto"  # "auto", "cpu", "cuda"
    precision: str = "auto"  # "auto" (bf16 on GPU and on CPUs with native bf16), "fp32", "bf16", "fp16"
    # attention as softmax(q k^T / sqrt(d)) v ("explicit") or scaled_dot_product_attention ("fused");
    # "auto": explicit on the CPU (faster there), fused on the GPU
    attention: str = field(default="auto", metadata=dict(choices=ATTENTIONS))
    log_every_steps: int = 10
    checkpoint_every_steps: int = 0  # 0: only at the end of each epoch
    saveckp_freq: int = 40  # also keep checkpoint_epochNNNN.safetensors every N epochs (official: 40; 0: never)
    keep_snapshots: int = 0  # how many of those to keep, the newest (0: all)
    max_steps: int = 0  # stop after this many steps in total (0: run all epochs); for tests
    knn_eval: bool = True  # k-NN accuracy of the teacher vs random init on the val split at the end
    eval_every: int = 0  # k-NN accuracy of the teacher on the val split every N epochs (0: never)
    compile: bool = False  # torch.compile the student and teacher (GPU; slow first steps; slower on the CPU)
    # "ddp": every process holds the whole networks and optimiser; "fsdp": torch's fully_shard shards
    # them over the processes of a torchrun (one process: nothing to shard, it runs as ddp)
    strategy: str = "ddp"
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


def mask_stride(cfg: PretrainConfig) -> int:
    """Pixels per mask cell: the patch size for ViT, the last stage's stride (8 patches) for Swin."""
    return cfg.model.patch_size * (8 if cfg.model.arch.startswith("swin") else 1)


# Presets. Sources: the official README commands and OFFICIAL_NOTES (recipes table); the totals of the
# official runs are noted so that a user on fewer devices can keep them.
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
    """A small ViT on the embedded Fashion-MNIST subset (6,000 images of 28 px) that learns visibly in a
    few minutes on 2 CPU cores. Not an official recipe: sizes scaled down (4 x 4 patches of 7 px per global
    crop, 2 x 2 per 14-px local crop), the blur radius scaled with the crop (224 -> 28 px), every global
    crop masked (30% +- 20%: the masked-patch loss is what learns fastest here), a higher lr and no frozen
    last layer for the short schedule, and DINOv2's KoLeo term on the student's [CLS] (weight 0.3):
    without it the [CLS] features drift together and the [CLS] self-distillation stalls on this budget
    (``docs/design.md`` has the measured alternatives). The data-loader workers only decode each image
    and draw its crops' boxes, flips and colour parameters; the crops are cut and coloured for the whole
    batch in the training process (``data.batched_crops`` on ``data.batched_color``): per-crop Pillow
    colour gave 105 images/s on 2 EPYC cores where batched colour gave 150, and cutting the crops in
    the batch too gave 1.2 times batched colour's images/s on 2 Xeon cores, as good per epoch."""
    cfg = PretrainConfig()
    cfg.model = ModelConfig(
        arch="vit_tiny", patch_size=7, depth=4, embed_dim=128, num_heads=4, drop_path_rate=0.0,
        out_dim=512, patch_out_dim=512, head_hidden_dim=256, head_bottleneck_dim=64,
        norm_last_layer=True,  # steadier than the ViT-S recipe's false on this short run
    )
    cfg.data = DataConfig(
        data="fashion-mnist:subset", global_crops_size=28, local_crops_size=14, local_crops_number=4,
        global_crops_scale=(0.4, 1.0), local_crops_scale=(0.1, 0.4), num_workers=2,
        blur_sigma=(0.1 / 8, 2.0 / 8), batched_color=True, batched_crops=True,
    )
    cfg.mask.pred_ratio, cfg.mask.pred_ratio_var = 0.3, 0.2
    cfg.optim = OptimConfig(epochs=5, batch_size_per_device=64, lr=4e-3, warmup_epochs=1,
                            freeze_last_layer=0, momentum_teacher=0.99)
    cfg.loss.warmup_teacher_temp_epochs = 2
    # a sharper teacher throughout: at 0.07 this short run drifted towards a uniform teacher
    cfg.loss.teacher_temp = cfg.loss.teacher_patch_temp = 0.04
    cfg.loss.koleo_weight = 0.3
    cfg.run.output_dir = "runs/cpu"
    return cfg


def _with_rand_masks(cfg: PretrainConfig) -> PretrainConfig:
    """The "Rand" prediction shape of the official model table: random masks, same ratios."""
    cfg.mask.pred_shape = "rand"
    return cfg


PRESETS = {
    "vit_small_16": _vit_small_16,
    "vit_base_16": _vit_base_16,
    "vit_large_16": _vit_large_16,
    "swin_tiny_7": lambda: _swin_tiny(7),
    "swin_tiny_14": lambda: _swin_tiny(14),
    "vit_small_16_rand": lambda: _with_rand_masks(_vit_small_16()),
    "vit_base_16_rand": lambda: _with_rand_masks(_vit_base_16()),
    "cpu": _cpu,
}


def get_preset(name: str) -> PretrainConfig:
    if name not in PRESETS:
        hint = difflib.get_close_matches(name, PRESETS, n=1)
        extra = f" Did you mean '{hint[0]}'?" if hint else ""
        raise ValueError(f"unknown preset '{name}'; choose one of {', '.join(PRESETS)}.{extra}")
    return PRESETS[name]()


def resolve_config(preset: str | None = None, yaml_path: str | Path | None = None,
                   overrides: list[str] | tuple[str, ...] = (), base: PretrainConfig | None = None) -> PretrainConfig:
    """Preset (or a YAML file's ``preset:``; or a copy of ``base``, e.g. a resumed run's config),
    then the YAML file, then ``key=value`` overrides; validated."""
    if preset is None and yaml_path is not None and base is None:
        preset = read_yaml(yaml_path).get("preset")
    if base is not None:
        cfg = copy.deepcopy(base)
    else:
        cfg = get_preset(preset) if preset else PretrainConfig()
    if yaml_path is not None:
        load_yaml(cfg, yaml_path)
    apply(cfg, overrides=overrides)
    validate(cfg)
    return cfg


# options that say what a run is: changing one when resuming makes another run of the same files
RUN_DEFINING = ("model.", "data.data", "data.global_crops_", "data.local_crops_", "optim.batch_size_per_device",
                "optim.epochs")


def config_changes(before: PretrainConfig, after: PretrainConfig) -> list[tuple[str, Any, Any]]:
    """``(option, value before, value after)`` for every option that differs."""
    old, new = flatten(before.to_dict()), flatten(after.to_dict())
    return [(key, old[key], new[key]) for key in new if old[key] != new[key]]


# ... except these, which change how it is computed, not what
NOT_RUN_DEFINING = ("model.grad_checkpointing",)


def is_run_defining(option: str) -> bool:
    """Whether ``option`` (``section.field``) is one of ``RUN_DEFINING``: data, batch, epochs, model, crops."""
    return option.startswith(RUN_DEFINING) and option not in NOT_RUN_DEFINING


def config_from_dict(tree: dict[str, Any]) -> PretrainConfig:
    """Rebuild a config saved with ``to_dict`` (checkpoint metadata, ``config.yaml``)."""
    return from_dict(PretrainConfig(), tree)


POSITIVE, NON_NEGATIVE, AT_LEAST_ONE = Limit(0, low_open=True), Limit(0), Limit(1)
UNIT, UNIT_OPEN_LOW, UNIT_OPEN_HIGH = Limit(0, 1), Limit(0, 1, low_open=True), Limit(0, 1, high_open=True)
# every numeric option and the values it may take (lists and pairs: each entry); None passes
OPTION_LIMITS: dict[str, Limit] = {
    "model.patch_size": AT_LEAST_ONE, "model.window_size": AT_LEAST_ONE, "model.img_size": AT_LEAST_ONE,
    "model.drop_path_rate": UNIT_OPEN_HIGH, "model.embed_dim": AT_LEAST_ONE, "model.depth": AT_LEAST_ONE,
    "model.num_heads": AT_LEAST_ONE, "model.out_dim": AT_LEAST_ONE, "model.patch_out_dim": AT_LEAST_ONE,
    "model.head_hidden_dim": AT_LEAST_ONE, "model.head_bottleneck_dim": AT_LEAST_ONE,
    "model.head_nlayers": AT_LEAST_ONE,
    "data.global_crops_number": AT_LEAST_ONE, "data.global_crops_size": AT_LEAST_ONE,
    "data.global_crops_scale": UNIT_OPEN_LOW, "data.local_crops_number": NON_NEGATIVE,
    "data.local_crops_size": AT_LEAST_ONE, "data.local_crops_scale": UNIT_OPEN_LOW, "data.blur_sigma": POSITIVE,
    "data.num_workers": NON_NEGATIVE,
    "mask.pred_ratio": UNIT_OPEN_HIGH, "mask.pred_ratio_var": UNIT, "mask.pred_aspect_ratio": POSITIVE,
    "mask.pred_start_epoch": NON_NEGATIVE,
    "loss.warmup_teacher_temp": POSITIVE, "loss.teacher_temp": POSITIVE, "loss.warmup_teacher_patch_temp": POSITIVE,
    "loss.teacher_patch_temp": POSITIVE, "loss.warmup_teacher_temp_epochs": NON_NEGATIVE,
    "loss.student_temp": POSITIVE, "loss.center_momentum": UNIT, "loss.lambda1": NON_NEGATIVE,
    "loss.lambda2": NON_NEGATIVE, "loss.koleo_weight": NON_NEGATIVE,
    "optim.epochs": AT_LEAST_ONE, "optim.batch_size_per_device": AT_LEAST_ONE, "optim.lr": POSITIVE,
    "optim.min_lr": NON_NEGATIVE, "optim.warmup_epochs": NON_NEGATIVE, "optim.weight_decay": NON_NEGATIVE,
    "optim.weight_decay_end": NON_NEGATIVE, "optim.clip_grad": NON_NEGATIVE, "optim.freeze_last_layer": NON_NEGATIVE,
    "optim.momentum_teacher": UNIT,
    "run.seed": NON_NEGATIVE, "run.log_every_steps": AT_LEAST_ONE, "run.checkpoint_every_steps": NON_NEGATIVE,
    "run.saveckp_freq": NON_NEGATIVE, "run.keep_snapshots": NON_NEGATIVE,
    "run.max_steps": NON_NEGATIVE, "run.eval_every": NON_NEGATIVE,
}
# pairs given as (low, high)
ORDERED_PAIRS = ("data.global_crops_scale", "data.local_crops_scale", "data.blur_sigma", "mask.pred_aspect_ratio")


option_value = get_option


def check_ranges(cfg: PretrainConfig, sections: tuple[str, ...] | None = None) -> None:
    """One-line error for the first numeric option (of ``sections``; None: all) outside its
    ``OPTION_LIMITS`` or a pair out of order, naming the option."""
    check_limits(cfg, OPTION_LIMITS, ORDERED_PAIRS, sections)


def validate(cfg: PretrainConfig) -> None:
    """One-line errors for settings that cannot work, naming the option: every numeric option in
    its range first (``OPTION_LIMITS``), then the combinations."""
    check_ranges(cfg)
    stride = mask_stride(cfg)
    unit = "Swin stage stride" if cfg.model.arch.startswith("swin") else "patch size"
    for name in ("global_crops_size", "local_crops_size"):
        size = getattr(cfg.data, name)
        if size % stride:
            raise ValueError(f"data.{name}={size} is not divisible by the {unit} {stride}; "
                             f"pick a multiple of {stride}")
    if cfg.loss.centering not in ("mean", "sinkhorn"):  # ibot.loss.CENTERINGS: the loss checks them too
        raise ValueError(f"loss.centering must be one of mean, sinkhorn, got '{cfg.loss.centering}'")
    if cfg.loss.koleo_weight > 0 and cfg.optim.batch_size_per_device < 2:
        raise ValueError("loss.koleo_weight > 0 needs optim.batch_size_per_device >= 2 (nearest neighbours in the batch)")
    if cfg.data.batched_crops and not cfg.data.batched_color:
        raise ValueError("data.batched_crops needs data.batched_color=true (the crops are cut where the colour runs)")
    if cfg.mask.pred_shape not in ("block", "rand"):
        raise ValueError(f"mask.pred_shape must be 'block' or 'rand', got '{cfg.mask.pred_shape}'")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", cfg.run.device):
        raise ValueError(f"run.device must be auto, cpu, cuda or cuda:N, got '{cfg.run.device}'")
    if cfg.run.strategy not in ("ddp", "fsdp"):
        raise ValueError(f"run.strategy must be ddp or fsdp, got '{cfg.run.strategy}'")
    if cfg.run.strategy == "fsdp" and cfg.run.eval_every:
        raise ValueError("run.eval_every needs run.strategy=ddp: the k-NN check runs on the main process alone, "
                         "which holds a shard of the teacher under fsdp; evaluate its checkpoints with ibot knn")
    if cfg.run.precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ValueError(f"run.precision must be auto, fp32, bf16 or fp16, got '{cfg.run.precision}'")
    if cfg.model.shared_head and cfg.model.out_dim != cfg.model.patch_out_dim:
        raise ValueError("model.shared_head needs model.out_dim == model.patch_out_dim")
    start, warmup = cfg.mask.pred_start_epoch, cfg.loss.warmup_teacher_temp_epochs
    if start + warmup > cfg.optim.epochs:
        raise ValueError(f"loss.warmup_teacher_temp_epochs ({warmup}) + mask.pred_start_epoch ({start}) exceed "
                         f"optim.epochs ({cfg.optim.epochs}); lower them for a short run")
    if cfg.optim.warmup_epochs > cfg.optim.epochs:
        raise ValueError(f"optim.warmup_epochs ({cfg.optim.warmup_epochs}) exceeds optim.epochs ({cfg.optim.epochs}); "
                         f"lower it for a short run")
