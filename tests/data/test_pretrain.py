import random

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ibot.data.datasets import CorruptImageError, build_dataset
from ibot.data.batched_color import NUM_PARAMS
from ibot.data.masking import MaskGenerator
from ibot.data.pretrain import (
    EpochBatchSampler,
    PretrainBatch,
    PretrainDataset,
    bucket_rows,
    collate_pretrain,
    crop_major,
    pad_mask_index,
    split_global_local,
)
from ibot.data.transforms import MultiCropAugmentation

STRIDE = 8


class Images(Dataset):
    """``n`` random 40 x 40 images (image i: noise drawn with seed i); the indices in
    ``corrupt`` raise :class:`CorruptImageError` like an unreadable file."""

    def __init__(self, n, corrupt=()):
        self.n, self.corrupt = n, set(corrupt)

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        if index in self.corrupt:
            raise CorruptImageError(f"img{index}.jpg", "truncated")
        pixels = np.random.default_rng(index).integers(0, 256, (40, 40, 3), dtype=np.uint8)
        return Image.fromarray(pixels), index % 3


class Identity:
    """Stand-in augmentation: every crop is the image itself, unchanged (40 x 40)."""

    global_crops_number = 2

    def __call__(self, image):
        crop = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
        return [crop.float()] * 3


def _dataset(n=12, corrupt=(), local_crops_number=2, augmentation=None):
    augmentation = augmentation or MultiCropAugmentation(
        global_crops_size=32, local_crops_size=16, local_crops_number=local_crops_number
    )
    masks = MaskGenerator(pred_ratio=[0.0, 0.3], pred_ratio_var=[0.0, 0.2])
    return PretrainDataset(Images(n, corrupt), augmentation, masks, mask_stride=STRIDE, seed=7)


def _same_sample(a, b):
    pairs = zip(a.global_crops + a.local_crops + a.masks, b.global_crops + b.local_crops + b.masks)
    return all(torch.equal(x, y) for x, y in pairs)


def _same_batch(a, b):
    return (
        torch.equal(a.global_crops, b.global_crops)
        and torch.equal(a.local_crops, b.local_crops)
        and torch.equal(a.masks, b.masks)
        and torch.equal(a.mask_index, b.mask_index) and a.num_masked == b.num_masked
        and a.skipped == b.skipped
    )


def test_sample_is_a_function_of_epoch_and_index():
    ds = _dataset()
    torch_state, python_state = torch.get_rng_state(), random.getstate()
    a, b = ds[(1, 5)], ds[(1, 5)]
    assert torch.equal(torch.get_rng_state(), torch_state) and random.getstate() == python_state
    assert _same_sample(a, b)
    assert not torch.equal(a.global_crops[0], ds[(2, 5)].global_crops[0])
    assert not torch.equal(a.global_crops[0], ds[(1, 6)].global_crops[0])
    assert [tuple(m.shape) for m in a.masks] == [(4, 4), (4, 4)] and a.masks[0].dtype == torch.bool
    assert a.skipped == ()


def test_masks_vary_across_samples():
    ds = _dataset()
    masks = torch.stack([m for i in range(12) for m in ds[(0, i)].masks])
    assert masks.any() and not masks.all(dim=(1, 2)).any()  # some masked, none fully
    assert len({m.numpy().tobytes() for m in masks}) > 2


def test_crop_major_takes_lists_and_tensors_alike():
    per_sample = [torch.arange(5 * 3).view(5, 3) + 100 * b for b in range(4)]  # 4 samples of 5 rows
    rows = crop_major(per_sample)
    assert torch.equal(rows, crop_major([list(t) for t in per_sample]))
    assert [int(r[0]) // 100 for r in rows[:4]] == [0, 1, 2, 3] and torch.equal(rows[5], per_sample[1][1])
    first, rest = split_global_local(rows, 2 * 4)
    assert torch.equal(first, rows[:8]) and torch.equal(rest, rows[8:])
    assert split_global_local(rows[:8], 8)[1] is None


def test_collate_is_crop_major():
    ds = _dataset()
    items = [ds[(0, i)] for i in (3, 1, 4)]
    batch = collate_pretrain(items)
    assert isinstance(batch, PretrainBatch)
    assert batch.global_crops.shape == (6, 3, 32, 32)
    assert batch.local_crops.shape == (6, 3, 16, 16)
    assert batch.masks.shape == (6, 4, 4) and batch.masks.dtype == torch.bool
    for c in range(2):
        for i, item in enumerate(items):
            assert torch.equal(batch.global_crops[c * 3 + i], item.global_crops[c])
            assert torch.equal(batch.local_crops[c * 3 + i], item.local_crops[c])
            assert torch.equal(batch.masks[c * 3 + i], item.masks[c])
    no_local = collate_pretrain([_dataset(local_crops_number=0)[(0, i)] for i in range(2)])
    assert no_local.local_crops is None and no_local.global_crops.shape == (4, 3, 32, 32)


def test_collate_gives_the_padded_index_of_the_masked_tokens():
    ds = _dataset()
    batch = collate_pretrain([ds[(0, i)] for i in range(6)])
    index = batch.masks.flatten(1).nonzero()  # (M, 2): (crop, patch), crop-major
    assert batch.num_masked == len(index) > 0
    assert batch.mask_index.shape == (bucket_rows(len(index)), 2) and batch.mask_index.dtype == torch.int64
    assert torch.equal(batch.mask_index[:batch.num_masked], index)
    assert not batch.mask_index[batch.num_masked:].any()  # (0, 0) padding rows after the real ones
    moved = batch.to("cpu")
    assert torch.equal(moved.mask_index, batch.mask_index) and moved.num_masked == batch.num_masked
    unmasked = PretrainDataset(Images(2), Identity(), MaskGenerator(pred_ratio=0.0, pred_ratio_var=0.0), STRIDE)
    nothing = collate_pretrain([unmasked[(0, i)] for i in range(2)])
    assert nothing.num_masked == 0 and nothing.mask_index.shape == (0, 2)


def test_batched_colour_samples_carry_their_parameters_crop_major():
    ds = _dataset(augmentation=MultiCropAugmentation(global_crops_size=32, local_crops_size=16,
                                                     local_crops_number=2, batched_color=True))
    items = [ds[(0, i)] for i in (3, 1, 4)]
    assert _same_sample(ds[(0, 3)], items[0]) and torch.equal(ds[(0, 3)].color_params[3], items[0].color_params[3])
    batch = collate_pretrain(items)
    assert batch.global_crops.dtype == batch.local_crops.dtype == torch.uint8
    assert batch.global_params.shape == (6, NUM_PARAMS) and batch.local_params.shape == (6, NUM_PARAMS)
    for c in range(2):
        for i, item in enumerate(items):
            assert torch.equal(batch.global_params[c * 3 + i], item.color_params[c])
            assert torch.equal(batch.local_params[c * 3 + i], item.color_params[2 + c])
    moved = batch.to("cpu")
    assert torch.equal(moved.local_params, batch.local_params)
    assert collate_pretrain([_dataset()[(0, 1)]]).global_params is None  # the Pillow path: none


def _source_image(sample, n=12):
    """Which image of :class:`Images` a sample made with :class:`Identity` shows."""
    images = Images(n)
    return next(i for i in range(n) if torch.equal(sample.global_crops[0], Identity()(images[i][0])[0]))


def test_an_unreadable_image_is_replaced_by_a_seeded_random_readable_one():
    corrupt = {1, 2, 11}
    ds = _dataset(corrupt=corrupt, augmentation=Identity())
    stand_ins = [_source_image(ds[(epoch, 1)]) for epoch in range(20)]
    assert not corrupt & set(stand_ins)
    assert stand_ins == [_source_image(ds[(epoch, 1)]) for epoch in range(20)]  # a function of (epoch, index)
    assert len(set(stand_ins)) > 3  # drawn, not always the next readable image (3), which would weigh double
    assert [_source_image(ds[(0, i)]) for i in range(12) if i not in corrupt] == sorted(set(range(12)) - corrupt)


def test_each_unreadable_file_is_named_once():
    """Four bad files, two pairs of neighbours: four names, whatever stand-ins were tried."""
    corrupt = {4, 5, 8, 9}
    ds = _dataset(corrupt=corrupt, augmentation=Identity())
    samples = [ds[(3, i)] for i in range(12)]
    for i, sample in enumerate(samples):
        assert sample.skipped[:1] == ((f"img{i}.jpg",) if i in corrupt else ())
        assert len(set(sample.skipped)) == len(sample.skipped)
        assert set(sample.skipped) <= {f"img{j}.jpg" for j in corrupt}
    batch = collate_pretrain(samples)
    assert sorted(batch.skipped) == sorted(f"img{j}.jpg" for j in corrupt)
    with pytest.raises(ValueError, match="no readable image.*skipped 3 unreadable images"):
        _dataset(n=3, corrupt={0, 1, 2}, augmentation=Identity())[(0, 0)]


def test_dataloader_workers_give_the_same_batches():
    ds = _dataset(corrupt={4})

    def batches(num_workers):
        sampler = EpochBatchSampler(len(ds), 4, seed=1, start_epoch=2)
        loader = DataLoader(
            ds, batch_sampler=sampler, collate_fn=collate_pretrain, num_workers=num_workers
        )
        return list(loader)

    serial, parallel = batches(0), batches(2)
    assert len(serial) == len(parallel) == 3
    assert all(_same_batch(a, b) for a, b in zip(serial, parallel))
    assert [path for b in serial for path in b.skipped] == ["img4.jpg"]


def test_sampler_union_of_ranks_equals_the_single_process_batch():
    single = EpochBatchSampler(50, 8, seed=3, start_epoch=4)
    ranks = [EpochBatchSampler(50, 8, world_size=2, rank=r, seed=3, start_epoch=4) for r in (0, 1)]
    assert len(single) == len(ranks[0]) == 6  # 50 // 8, last batch dropped
    one, (zero_half, one_half) = list(single), [list(s) for s in ranks]
    assert len(one) == len(zero_half) == 6
    for full, a, b in zip(one, zero_half, one_half):
        assert len(a) == len(b) == 4 and not set(a) & set(b)
        assert a + b == full and all(epoch == 4 for epoch, _ in full)
    indices = [i for batch in one for _, i in batch]
    assert len(set(indices)) == 48 and set(indices) <= set(range(50))


def test_sampler_epochs_and_resume():
    sampler = EpochBatchSampler(20, 4, seed=0)
    epoch0, epoch1 = list(sampler), list(sampler)  # each __iter__ is one epoch, then the next
    assert {e for b in epoch0 for e, _ in b} == {0} and {e for b in epoch1 for e, _ in b} == {1}
    assert [i for b in epoch0 for _, i in b] != [i for b in epoch1 for _, i in b]
    resumed = EpochBatchSampler(20, 4, seed=0, start_epoch=1, start_step=3)
    assert len(resumed) == 5
    assert list(resumed) == epoch1[3:]
    assert (resumed.epoch, resumed.start_step) == (2, 0)
    assert list(resumed) == list(EpochBatchSampler(20, 4, seed=0).batches(2))
    assert list(EpochBatchSampler(20, 4, seed=1).batches(0)) != epoch0


def test_sampler_rejects_bad_arguments():
    with pytest.raises(ValueError, match="multiple of world_size"):
        EpochBatchSampler(100, 10, world_size=3, rank=0)
    with pytest.raises(ValueError, match="rank"):
        EpochBatchSampler(100, 10, world_size=2, rank=2)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        EpochBatchSampler(5, 8)
    with pytest.raises(ValueError, match="start_step"):
        EpochBatchSampler(20, 4, start_step=5)


def test_fashion_mnist_end_to_end(monkeypatch):
    monkeypatch.setenv("IBOT_FASHION_MNIST", "subset")
    aug = MultiCropAugmentation(global_crops_size=32, local_crops_size=16, local_crops_number=1)
    masks = MaskGenerator(pred_ratio=0.3, pred_ratio_var=0.0)
    ds = PretrainDataset(build_dataset("fashion-mnist"), aug, masks, mask_stride=16, seed=0)
    sampler = EpochBatchSampler(len(ds), 2, seed=0)
    batch = collate_pretrain([ds[key] for key in next(iter(sampler))])
    assert batch.global_crops.shape == (4, 3, 32, 32) and batch.local_crops.shape == (2, 3, 16, 16)
    assert batch.masks.shape == (4, 2, 2)
    assert batch.to("cpu").masks.dtype == torch.bool


def test_bucket_rows_pads_little_and_recurs():
    assert [bucket_rows(m) for m in (0, 1, 64, 65, 1024, 1025)] == [0, 64, 64, 128, 1024, 1088]
    counts = range(2000, 6000)  # e.g. ViT-S/16 at batch 64: about 3800 +- 1200 masked tokens
    padded = [bucket_rows(m) for m in counts]
    assert all(m <= p <= m * 1.0625 for m, p in zip(counts, padded))
    assert len(set(padded)) <= 40  # shapes recur, so per-shape kernel caches stay bounded
    index = torch.tensor([[1, 2], [3, 4]])
    assert pad_mask_index(index).tolist() == [[1, 2], [3, 4]] + [[0, 0]] * 62
    assert pad_mask_index(index[:0]).shape == (0, 2)
