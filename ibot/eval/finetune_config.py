"""Fine-tuning hyper-parameters: the official defaults (BEiT's recipe, used by iBOT's fine-tuning)
and a recipe for short budgets on small images. Kept free of torch so that ``ibot --help`` stays
fast."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

POOLS = ("cls", "mean", "grid")
"""What the classifier reads: the final-norm [CLS] (official ``--use_cls``), the mean of the final-norm
patch tokens, or the patch tokens flattened in grid order (:class:`ibot.eval.finetune_model.FinetuneModel`)."""


@dataclass
class FinetuneConfig:
    """Fine-tuning hyper-parameters; defaults are BEiT's / the official ViT-S/16 recipe. Each field
    is also the command-line option ``--NAME`` of ``ibot finetune`` (help: its comment)."""

    epochs: int = 200  # official: 200 (ViT-S), 100 (ViT-B), 50 (ViT-L)
    batch_size: int = 128
    lr: float = 5e-4  # peak learning rate for a batch of 256, scaled linearly
    min_lr: float = 1e-6
    warmup_epochs: int = 5
    weight_decay: float = 0.05
    layer_decay: float | None = None  # layer-wise lr decay (default: 0.65 for ViT-B, else 0.75)
    drop_path: float = 0.1  # stochastic depth of the last block
    mixup: float = 0.8  # mixup alpha; 0 disables
    cutmix: float = 1.0  # cutmix alpha; 0 disables
    label_smoothing: float = 0.1
    # RandAugment (None disables): the official rand-m9-mstd0.5-inc1, with the magnitude clipped at 9
    # instead of 10 (mmax9): at 10, timm's PosterizeIncreasing keeps 0 bits, which Pillow >= 11 refuses
    auto_augment: str | None = "rand-m9-mstd0.5-inc1-mmax9"  # timm RandAugment policy; 'none' disables
    reprob: float = 0.25  # random erasing probability
    min_crop_scale: float = 0.08  # RandomResizedCrop scale (min, 1)
    color_jitter: float = 0.4  # timm's default; used only without RandAugment
    clip_grad: float = 0.0  # global gradient-norm clipping; 0 disables
    pool: str = field(default="cls", metadata=dict(choices=POOLS, help=(
        "classifier input: cls (official), mean (patch tokens; BEiT's default), grid (tokens in order)")))
    head_lr_scale: float = 1.0  # lr multiplier of the top layer (classifier, final norm); official: 1
    head_init_epochs: int = 0  # >0: fit the classifier on cached frozen features first (LP-FT); official: 0
    freeze_backbone_epochs: int = 0  # first epochs train the classifier only (LP-FT); official: 0
    ema: bool = False  # keep and evaluate an EMA of the weights
    ema_decay: float = 0.9999
    image_size: int = 224  # training and evaluation size
    crop_pct: float | None = None  # evaluation crop (see ibot.eval.features.evaluation_transform)
    num_workers: int = 4  # data-loading processes
    seed: int = 0
    device: str = "auto"  # auto, cpu or cuda
    progress: bool = True  # progress bars


# Named recipes: the fields each changes from the official defaults above.
RECIPES: dict[str, dict[str, Any]] = {
    "official": {},
    # A few epochs on small images (docs/design.md, "Fine-tuning for short budgets"): the official
    # regularisation (mixup, cutmix, RandAugment, erasing, 8%-area crops) is sized for 100-300
    # epochs and keeps a few-epoch run under the linear probe. Here: the classifier is first fitted
    # on cached frozen features (LP-FT), then everything trains at the official lr on the whole
    # image (aspect-ratio jitter and flips only: half-image crops shift a centred 28-px item's
    # features a long way, cosine 0.62 to the full view's), label smoothing, no drop path, no mixing
    # or erasing.
    "short": {"epochs": 10, "warmup_epochs": 1, "head_init_epochs": 30, "drop_path": 0.0, "mixup": 0.0,
              "cutmix": 0.0, "auto_augment": None, "reprob": 0.0, "min_crop_scale": 1.0, "color_jitter": 0.0},
}


def finetune_recipe(name: str, **overrides: Any) -> FinetuneConfig:
    """The recipe ``name`` (``official`` or ``short``) with ``overrides`` (fields of
    ``FinetuneConfig``; None values are ignored, so unset command-line options keep the recipe's)."""
    if name not in RECIPES:
        raise ValueError(f"unknown fine-tuning recipe '{name}'; choose one of {', '.join(RECIPES)}")
    fields = {f.name for f in dataclasses.fields(FinetuneConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown fine-tuning option(s): {', '.join(unknown)}")
    values = {**RECIPES[name], **{k: v for k, v in overrides.items() if v is not None}}
    return FinetuneConfig(**values)


def default_layer_decay(arch: str) -> float:
    """Official values: 0.65 for ViT-B, 0.75 for ViT-S and ViT-L (and here for anything else)."""
    return 0.65 if arch == "vit_base" else 0.75
