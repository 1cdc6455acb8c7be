"""Data for pre-training and evaluation: datasets, multi-crop augmentation, masks, batching."""

from ibot.data.batched_color import ColorParamSampler, apply_color
from ibot.data.datasets import (
    CorruptImageError,
    Holdout,
    build_dataset,
    collate_skip_corrupt,
    format_skipped,
    load_rgb,
    safe_getitem,
    val_split_problem,
)
from ibot.data.fashion_mnist import FashionMNIST
from ibot.data.masking import MaskGenerator
from ibot.data.pretrain import (
    EpochBatchSampler,
    PretrainBatch,
    PretrainDataset,
    PretrainSample,
    collate_pretrain,
)
from ibot.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MultiCropAugmentation,
    eval_transform,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ColorParamSampler",
    "CorruptImageError",
    "EpochBatchSampler",
    "FashionMNIST",
    "Holdout",
    "MaskGenerator",
    "MultiCropAugmentation",
    "PretrainBatch",
    "PretrainDataset",
    "PretrainSample",
    "apply_color",
    "build_dataset",
    "collate_pretrain",
    "collate_skip_corrupt",
    "eval_transform",
    "format_skipped",
    "load_rgb",
    "safe_getitem",
    "val_split_problem",
]
