"""Fine-tuning hyper-parameters with the official defaults (BEiT's recipe, used by iBOT's
fine-tuning). Kept free of torch so that ``ibot --help`` stays fast."""

from __future__ import annotations

from dataclasses import dataclass


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
    clip_grad: float = 0.0  # global gradient-norm clipping; 0 disables
    ema: bool = False  # keep and evaluate an EMA of the weights
    ema_decay: float = 0.9999
    image_size: int = 224  # training and evaluation size
    crop_pct: float | None = None  # evaluation crop (see ibot.eval.features.evaluation_transform)
    num_workers: int = 4  # data-loading processes
    seed: int = 0
    device: str = "auto"  # auto, cpu or cuda
    progress: bool = True  # progress bars


def default_layer_decay(arch: str) -> float:
    """Official values: 0.65 for ViT-B, 0.75 for ViT-S and ViT-L (and here for anything else)."""
    return 0.65 if arch == "vit_base" else 0.75
