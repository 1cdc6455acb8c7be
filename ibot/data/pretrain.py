"""Seeded per-sample pre-training pipeline, the epoch batch sampler and the collate function.

Every random choice for a sample (crops, colour, blur, masks, and the stand-in for an unreadable
image) is seeded from ``(seed, epoch, index)``, and the order of samples from ``(seed, epoch)``, so
a run gives the same batches whatever the number of workers, the world size or the step it was
resumed from.

Use with a torch ``DataLoader``::

    sampler = EpochBatchSampler(len(dataset), global_batch_size, world_size, rank, seed,
                                start_epoch, start_step)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_pretrain, ...)
    for epoch in range(start_epoch, epochs):
        for batch in loader:  # one epoch; the first one resumes at start_step
            ...
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from ibot.data.batched_crops import CropPlan, pad_images
from ibot.data.datasets import format_skipped, safe_getitem

__all__ = [
    "EpochBatchSampler",
    "PretrainBatch",
    "PretrainDataset",
    "PretrainSample",
    "bucket_rows",
    "collate_pretrain",
    "masked_token_index",
    "pad_mask_index",
    "sample_seeds",
    "stand_in_order",
]

MaskGeneratorFn = Callable[[tuple[int, int], int, np.random.Generator], np.ndarray]
# first word of the SeedSequence spawn key: keeps the uses of (seed, epoch, ...) apart
_SAMPLE_STREAM, _ORDER_STREAM, _STAND_IN_STREAM = 0, 1, 2


def stand_in_order(seed: int, epoch: int, index: int, n: int) -> Iterator[int]:
    """The images tried, in turn, in place of an unreadable image ``index`` of ``range(n)``: every
    other index once, in an order drawn from ``(seed, epoch, index)`` (uniform: no image stands
    in more often than another)."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_STAND_IN_STREAM, epoch, index)))
    return (int(i) for i in rng.permutation(n) if i != index)


def sample_seeds(seed: int, epoch: int, index: int) -> tuple[int, np.random.Generator]:
    """The torch seed of the augmentation and the numpy generator of the masks for one sample."""
    augment_seq, mask_seq = np.random.SeedSequence(
        seed, spawn_key=(_SAMPLE_STREAM, epoch, index)
    ).spawn(2)
    return int(augment_seq.generate_state(1, np.uint64)[0]), np.random.default_rng(mask_seq)


@dataclass
class PretrainSample:
    """One image's crops and the masks of its global crops; with batched crops, the image and the
    boxes of its crops instead of the crops."""

    global_crops: list[Tensor]  # G x (3, H, W); empty with batched crops
    local_crops: list[Tensor]  # L x (3, h, w); empty with batched crops
    masks: list[Tensor]  # G x (H // stride, W // stride) bool
    skipped: tuple[str, ...]  # unreadable files met on the way to this image (its own first), each once
    color_params: Tensor | None = None  # (G + L, NUM_PARAMS) with batched colour (uint8 crops)
    label: int = -1  # the image's class (of its stand-in, if it was unreadable); -1: unlabelled
    image: Tensor | None = None  # (3, H, W) uint8 with batched crops (ibot.data.batched_crops)
    boxes: Tensor | None = None  # (G + L, BOX_COLUMNS) with batched crops, global crops first


@dataclass
class PretrainBatch:
    """A collated batch, crop-major: rows ``[c * B:(c + 1) * B]`` are crop ``c`` of every image.
    With batched crops the crops are not cut yet: ``images`` and the crops' boxes stand for them
    (``ibot.data.batched_crops.cut_crops``), and ``global_crops`` is None."""

    global_crops: Tensor | None  # (G * B, 3, H, W)
    local_crops: Tensor | None  # (L * B, 3, h, w), None without local crops
    masks: Tensor  # (G * B, H // stride, W // stride) bool, True = masked
    # (crop, patch) of each masked token, ``masks.flatten(1).nonzero()``, then (0, 0) rows up to a
    # recurring count (:func:`pad_mask_index`); the first ``num_masked`` rows are the real ones
    mask_index: Tensor  # (bucket_rows(M), 2) int64
    num_masked: int  # M
    skipped: tuple[str, ...] = ()  # the unreadable files its samples met, each once
    # batched colour: the crops are uint8 and these rows (crop-major) hold their colour parameters
    global_params: Tensor | None = None  # (G * B, NUM_PARAMS)
    local_params: Tensor | None = None  # (L * B, NUM_PARAMS)
    labels: Tensor | None = None  # (B,) int64 classes of the images, -1 where unknown (for the NMI check)
    # batched crops: the whole images (padded with their edges to one size) and the crops' box rows, crop-major
    images: Tensor | None = None  # (B, 3, H, W) uint8
    global_boxes: Tensor | None = None  # (G * B, BOX_COLUMNS)
    local_boxes: Tensor | None = None  # (L * B, BOX_COLUMNS)

    def _map(self, fn: Callable[[Tensor], Tensor]) -> PretrainBatch:
        def maybe(t: Tensor | None) -> Tensor | None:
            return None if t is None else fn(t)

        return PretrainBatch(maybe(self.global_crops), maybe(self.local_crops), fn(self.masks), fn(self.mask_index),
                             self.num_masked, self.skipped, maybe(self.global_params), maybe(self.local_params),
                             maybe(self.labels), maybe(self.images), maybe(self.global_boxes),
                             maybe(self.local_boxes))

    def pin_memory(self) -> PretrainBatch:
        """Called by ``DataLoader(pin_memory=True)``."""
        return self._map(Tensor.pin_memory)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> PretrainBatch:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))


class PretrainDataset(Dataset):
    """Indexed by ``(epoch, index)``: the crops of image ``index`` and masks of its global crops.

    ``base`` yields ``(image, label)``; ``augmentation(image)`` returns the global crops first
    (it must have ``global_crops_number``), then the local ones, or a
    :class:`~ibot.data.batched_crops.CropPlan` (then it must have ``global_crops_size`` too,
    which sets the masks' grid); ``mask_generator(grid, epoch,
    rng)`` draws one mask per global crop on the grid ``(H // mask_stride, W // mask_stride)``.
    An unreadable image is replaced by a readable one drawn from ``(seed, epoch, index)``
    (:func:`stand_in_order`), and the unreadable files met are named in ``skipped``.
    """

    def __init__(
        self,
        base: Dataset,
        augmentation: Callable[[object], list[Tensor]],
        mask_generator: MaskGeneratorFn,
        mask_stride: int,
        seed: int = 0,
    ) -> None:
        if mask_stride < 1:
            raise ValueError(f"mask_stride must be >= 1, got {mask_stride}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if len(base) == 0:
            raise ValueError("the pre-training dataset is empty")
        self.base = base
        self.augmentation = augmentation
        self.num_global = int(augmentation.global_crops_number)
        self.mask_generator = mask_generator
        self.mask_stride = mask_stride
        self.seed = seed

    def __len__(self) -> int:
        return len(self.base)

    def _load(self, epoch: int, index: int) -> tuple[object, int, tuple[str, ...]]:
        """Image ``index`` and its label, or its first readable stand-in's; and the unreadable files met."""
        item, unreadable = safe_getitem(self.base, index)
        if unreadable is None:
            return item[0], _label(item), ()
        skipped = [unreadable]
        for candidate in stand_in_order(self.seed, epoch, index, len(self.base)):
            item, unreadable = safe_getitem(self.base, candidate)
            if unreadable is None:
                return item[0], _label(item), tuple(skipped)
            skipped.append(unreadable)
        raise ValueError(f"no readable image in the dataset: {format_skipped(len(skipped), skipped[0])}")

    def __getitem__(self, key: tuple[int, int]) -> PretrainSample:
        epoch, index = key
        image, label, skipped = self._load(epoch, index)
        torch_seed, mask_rng = sample_seeds(self.seed, epoch, index)
        python_state = random.getstate()
        with torch.random.fork_rng(devices=[]):  # leaves the caller's generators untouched
            torch.default_generator.manual_seed(torch_seed)
            random.seed(torch_seed)
            try:
                crops = self.augmentation(image)
            finally:
                random.setstate(python_state)
        if isinstance(crops, CropPlan):  # batched crops: boxes to cut on the training device
            side = int(self.augmentation.global_crops_size) // self.mask_stride
            masks = [torch.from_numpy(self.mask_generator((side, side), epoch, mask_rng))
                     for _ in range(self.num_global)]
            return PretrainSample([], [], masks, skipped, crops.color_params, label, crops.image, crops.boxes)
        color_params = None
        if crops and isinstance(crops[0], tuple):  # batched colour: (uint8 crop, parameters)
            crops, color_params = (list(t) for t in zip(*crops))
            color_params = torch.stack(color_params)
        global_crops, local_crops = crops[: self.num_global], crops[self.num_global :]
        masks = []
        for crop in global_crops:
            grid = (crop.shape[-2] // self.mask_stride, crop.shape[-1] // self.mask_stride)
            masks.append(torch.from_numpy(self.mask_generator(grid, epoch, mask_rng)))
        return PretrainSample(global_crops, local_crops, masks, skipped, color_params, label)


def _label(item: tuple) -> int:
    label = item[1] if len(item) > 1 else -1
    return int(label) if isinstance(label, (int, np.integer)) or (torch.is_tensor(label) and label.numel() == 1) else -1


def bucket_rows(m: int) -> int:
    """``m`` rounded up to a multiple of 64, past 1024 to a multiple of 1/16 of the power of two
    below it: at most 1/16 more rows, and a count that recurs from step to step."""
    step = 64 if m <= 1024 else 1 << (m.bit_length() - 5)
    return -(-m // step) * step


def pad_mask_index(mask_index: Tensor) -> Tensor:
    """``mask_index`` (M, 2) followed by (0, 0) rows up to :func:`bucket_rows` (M) rows; the
    outputs at the padding rows (past M) are to be dropped.

    The number of masked tokens changes every step; kernels made per shape (oneDNN's bf16 matmuls
    on CPU keep one per shape in a cache; torch.compile recompiles) would otherwise pile up: with
    the exact count a bf16 CPU run's memory grew by about 12 MiB a step."""
    m = mask_index.shape[0]
    return torch.cat((mask_index, mask_index.new_zeros(bucket_rows(m) - m, 2)))


def masked_token_index(masks: Tensor) -> tuple[Tensor, int]:
    """``(pad_mask_index(masks.flatten(1).nonzero()), M)`` for masks (G * B, h, w): the (crop,
    patch) pairs of the M masked tokens, padded to a recurring count. Found on the host (in the
    data-loader workers), so a GPU never syncs to count them."""
    mask_index = masks.flatten(1).nonzero()  # (M, 2)
    return pad_mask_index(mask_index), mask_index.shape[0]


def crop_major(per_sample: Sequence[Sequence[Tensor]]) -> Tensor:
    """B samples' C tensors of one shape (a list each, or one (C, ...) tensor each) -> (C * B, ...):
    crop 0 of every sample, then crop 1, ... (the order the loss and the masks use)."""
    if all(isinstance(crops, Tensor) for crops in per_sample):
        return torch.stack(list(per_sample), dim=1).flatten(0, 1)  # (C, B, ...) -> (C * B, ...)
    return torch.stack([crops[c] for c in range(len(per_sample[0])) for crops in per_sample])


def split_global_local(rows: Tensor, num_global_rows: int) -> tuple[Tensor, Tensor | None]:
    """Crop-major rows -> the global crops' (the first ``num_global_rows``) and the local crops'
    (None without local crops)."""
    return rows[:num_global_rows], rows[num_global_rows:] if rows.shape[0] > num_global_rows else None


def collate_pretrain(items: Sequence[PretrainSample]) -> PretrainBatch:
    """Stack B samples crop-major into a :class:`PretrainBatch`, with the index of the masked
    tokens (:func:`masked_token_index`)."""
    if not items:
        raise ValueError("cannot collate an empty batch")
    num_global_rows = len(items[0].masks) * len(items)
    masks = crop_major([s.masks for s in items])
    images = global_boxes = local_boxes = global_crops = local_crops = None
    if items[0].boxes is not None:  # batched crops: the images and the boxes to cut from them
        images = pad_images([s.image for s in items])
        global_boxes, local_boxes = split_global_local(crop_major([s.boxes for s in items]), num_global_rows)
    else:
        global_crops = crop_major([s.global_crops for s in items])
        local_crops = crop_major([s.local_crops for s in items]) if items[0].local_crops else None
    global_params = local_params = None
    if items[0].color_params is not None:
        global_params, local_params = split_global_local(crop_major([s.color_params for s in items]),
                                                         num_global_rows)
    skipped = tuple(dict.fromkeys(path for s in items for path in s.skipped))  # each file once
    labels = torch.tensor([s.label for s in items], dtype=torch.long)
    return PretrainBatch(global_crops, local_crops, masks, *masked_token_index(masks), skipped, global_params,
                         local_params, labels, images, global_boxes, local_boxes)


class EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """This rank's share of each global batch, as lists of ``(epoch, index)``; one epoch per
    ``__iter__``.

    Epoch ``e`` shuffles ``range(n)`` with a generator seeded from ``(seed, e)`` and drops the
    last incomplete batch; global batch ``b`` is ``perm[b * G:(b + 1) * G]`` and rank ``r`` takes
    its ``r``-th contiguous slice of ``G / world_size`` samples, so the union over ranks does not
    depend on the world size.

    The first ``__iter__`` yields epoch ``start_epoch`` from step ``start_step``; each completed
    iteration moves on to the next epoch from step 0 (``epoch`` and ``start_step`` say where the
    next ``__iter__`` starts). ``len()`` is the number of steps of a full epoch.
    """

    def __init__(
        self,
        n: int,
        global_batch_size: int,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
        start_epoch: int = 0,
        start_step: int = 0,
    ) -> None:
        if global_batch_size < 1 or global_batch_size % world_size:
            raise ValueError(
                f"global_batch_size {global_batch_size} must be a positive multiple of "
                f"world_size {world_size}"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        if n < global_batch_size:
            raise ValueError(f"{n} images are fewer than one global batch of {global_batch_size}")
        if seed < 0 or start_epoch < 0:
            raise ValueError(f"seed and start_epoch must be >= 0, got {seed} and {start_epoch}")
        self.n = n
        self.global_batch_size = global_batch_size
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.steps_per_epoch = n // global_batch_size
        if not 0 <= start_step < self.steps_per_epoch:
            raise ValueError(
                f"start_step {start_step} is not in [0, {self.steps_per_epoch}) steps per epoch"
            )
        self.epoch = start_epoch
        self.start_step = start_step

    def __len__(self) -> int:
        return self.steps_per_epoch

    def permutation(self, epoch: int) -> np.ndarray:
        """The sample order of ``epoch``, the same on every rank."""
        seq = np.random.SeedSequence(self.seed, spawn_key=(_ORDER_STREAM, epoch))
        return np.random.default_rng(seq).permutation(self.n)

    def batches(self, epoch: int, start_step: int = 0) -> Iterator[list[tuple[int, int]]]:
        """This rank's batches of ``epoch`` from ``start_step`` on (no state change)."""
        perm = self.permutation(epoch)
        local = self.global_batch_size // self.world_size
        for step in range(start_step, self.steps_per_epoch):
            begin = step * self.global_batch_size + self.rank * local
            yield [(epoch, int(i)) for i in perm[begin : begin + local]]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        yield from self.batches(self.epoch, self.start_step)
        self.epoch += 1
        self.start_step = 0
