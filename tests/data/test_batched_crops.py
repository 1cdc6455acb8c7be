"""The batched crop path: its boxes against RandomResizedCrop's rules, its pixels against exact
resampling, and the batches it makes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms.v2 import RandomResizedCrop

from ibot.data.batched_color import NUM_PARAMS
from ibot.data.batched_crops import BOX_COLUMNS, CropBoxSampler, CropPlan, cut_crops, pad_images
from ibot.data.masking import MaskGenerator
from ibot.data.pretrain import EpochBatchSampler, PretrainDataset, collate_pretrain
from ibot.data.transforms import MultiCropAugmentation

from .test_batched_color import as_tensor, photo
from .test_pretrain import Images


def draw_boxes(sampler: CropBoxSampler, height: int, width: int, n: int, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.stack([sampler(height, width) for _ in range(n)])


@pytest.mark.parametrize("scale", [(0.4, 1.0), (0.1, 0.4), (0.05, 0.25)])
def test_boxes_follow_random_resized_crop(scale):
    height, width = 28, 36
    boxes = draw_boxes(CropBoxSampler(scale), height, width, 2000)
    x1, y1, x2, y2, flip = boxes.double().unbind(1)
    w, h = x2 - x1, y2 - y1
    eps = 1e-5
    assert (x1 >= -eps).all() and (y1 >= -eps).all() and (x2 <= width + eps).all() and (y2 <= height + eps).all()
    area = w * h / (height * width)
    assert (area >= scale[0] - eps).all() and (area <= scale[1] + eps).all()
    aspect = w / h
    assert (aspect >= 3 / 4 - eps).all() and (aspect <= 4 / 3 + eps).all()
    # the sizes torchvision draws (whole pixels there): the same mean area and aspect
    reference = RandomResizedCrop(8, scale=scale)
    torch.manual_seed(1)
    drawn = [reference.make_params([torch.zeros(3, height, width)]) for _ in range(2000)]
    ref_area = np.mean([p["height"] * p["width"] for p in drawn]) / (height * width)
    ref_aspect = np.mean([math.log(p["width"] / p["height"]) for p in drawn])
    assert abs(float(area.mean()) - ref_area) < 0.015
    assert abs(float(aspect.log().mean()) - ref_aspect) < 0.03
    # positions uniform, flips fair
    left_share = x1 / (width - w).clamp(min=1e-9)
    assert abs(float(left_share.mean()) - 0.5) < 0.03
    assert abs(float(flip.mean()) - 0.5) < 0.04 and set(flip.tolist()) == {0.0, 1.0}


def test_no_fitting_box_falls_back_to_the_centred_clamped_image():
    """A 100 x 10 strip cannot hold 90% of its area at aspect <= 4/3: the central 13.3 x 10 box."""
    boxes = draw_boxes(CropBoxSampler((0.9, 1.0)), 10, 100, 20)
    expected = torch.tensor([(100 - 40 / 3) / 2, 0.0, (100 + 40 / 3) / 2, 10.0])
    assert torch.allclose(boxes[:, :4], expected.expand(20, 4), atol=1e-4)
    tall = draw_boxes(CropBoxSampler((0.9, 1.0)), 100, 10, 1)[0]
    assert torch.allclose(tall[:4], torch.tensor([0.0, (100 - 40 / 3) / 2, 10.0, (100 + 40 / 3) / 2]), atol=1e-4)


def test_boxes_are_a_function_of_the_seed():
    sampler = CropBoxSampler((0.1, 0.4))
    assert torch.equal(draw_boxes(sampler, 28, 28, 5, seed=3), draw_boxes(sampler, 28, 28, 5, seed=3))
    assert not torch.equal(draw_boxes(sampler, 28, 28, 5, seed=3), draw_boxes(sampler, 28, 28, 5, seed=4))


def ramp(height: int = 12, width: int = 16) -> torch.Tensor:
    """(1, 3, H, W) float: channel 0 = x / W, 1 = y / H, 2 = constant 0.5."""
    y, x = torch.meshgrid(torch.arange(height) / height, torch.arange(width) / width, indexing="ij")
    return torch.stack((x, y, torch.full_like(x, 0.5))).unsqueeze(0)


def test_cut_crops_samples_where_a_resize_of_the_box_samples():
    """Bilinear sampling is exact on a linear ramp: output pixel j of a box [x1, x2] resized to S
    reads x = x1 + (j + 0.5) (x2 - x1) / S - 0.5 (half-pixel centres, as PIL and torch resize)."""
    image, size = ramp(), 8
    box = torch.tensor([[3.0, 2.5, 7.0, 6.5, 0.0]])  # a 4 x 4 box upscaled to 8 x 8
    crop = cut_crops(image, box, size)[0]
    j = torch.arange(size, dtype=torch.float32)
    x = 3.0 + (j + 0.5) * 4 / size - 0.5
    y = 2.5 + (j + 0.5) * 4 / size - 0.5
    assert torch.allclose(crop[0], (x / 16).expand(size, size), atol=1e-6)
    assert torch.allclose(crop[1], (y / 12).unsqueeze(1).expand(size, size), atol=1e-6)
    assert torch.allclose(crop[2], torch.full((size, size), 0.5))


def test_whole_image_box_at_its_size_is_the_image_and_flip_mirrors_it():
    image = as_tensor(photo(size=(20, 20))).unsqueeze(0)
    whole = torch.tensor([[0.0, 0.0, 20.0, 20.0, 0.0], [0.0, 0.0, 20.0, 20.0, 1.0]])
    kept, flipped = cut_crops(image, whole, 20)
    assert torch.allclose(kept, image[0] / 255.0, atol=1e-6)
    assert torch.allclose(flipped, image[0].flip(-1) / 255.0, atol=1e-6)


def test_downscaling_averages_instead_of_aliasing():
    """A one-pixel checkerboard shrunk 4 times is mid-grey, not a sample of black or white."""
    board = ((torch.arange(32).view(-1, 1) + torch.arange(32)) % 2).float().expand(1, 3, 32, 32)
    crop = cut_crops(board, torch.tensor([[0.0, 0.0, 32.0, 32.0, 0.0]]), 8)
    assert torch.allclose(crop, torch.full_like(crop, 0.5), atol=1e-6)


def test_close_to_the_pillow_crop_of_the_same_box():
    """The official crop is bicubic on whole pixels: the bilinear cut of the same box differs
    little on a photo-like image (mean 1/100 of the range)."""
    pil = photo(size=(40, 40))
    box = (6, 4, 26, 24)  # left, top, right, bottom: 20 x 20 -> 28 x 28
    reference = as_tensor(pil.crop(box).resize((28, 28), Image.Resampling.BICUBIC)).float() / 255
    crop = cut_crops(as_tensor(pil).unsqueeze(0), torch.tensor([[*map(float, box), 0.0]]), 28)[0]
    assert float((crop - reference).abs().mean()) < 0.01


def test_rows_are_cut_crop_major_from_their_images():
    images = torch.stack([torch.full((3, 6, 6), 0, dtype=torch.uint8), torch.full((3, 6, 6), 255, dtype=torch.uint8)])
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0, 0.0]]).repeat(4, 1)  # crop 0 of images 0, 1, then crop 1
    crops = cut_crops(images, boxes, 3)
    assert [float(c.mean()) for c in crops] == [0.0, 1.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="cut_crops expects"):
        cut_crops(images, boxes[:3], 3)


def test_padding_leaves_each_crop_as_it_was_alone():
    small, large = as_tensor(photo(1, size=(10, 12))), as_tensor(photo(2, size=(20, 16)))
    batch = pad_images([small, large])
    assert batch.shape == (2, 3, 16, 20) and torch.equal(batch[1], large) and torch.equal(batch[0, :, :12, :10], small)
    box = torch.tensor([[2.0, 3.0, 10.0, 12.0, 1.0]])  # reaches the small image's right and bottom edges
    alone = cut_crops(small.unsqueeze(0), box, 16)
    padded = cut_crops(batch, torch.cat((box, torch.tensor([[0.0, 0.0, 20.0, 16.0, 0.0]]))), 16)[:1]
    assert torch.allclose(alone, padded, atol=1e-6)


def augmentation(**kwargs) -> MultiCropAugmentation:
    return MultiCropAugmentation(global_crops_size=32, local_crops_size=16, local_crops_number=3,
                                 global_crops_scale=(0.4, 1.0), local_crops_scale=(0.05, 0.25),
                                 batched_color=True, batched_crops=True, **kwargs)


def test_a_plan_holds_the_image_and_every_crops_draws():
    image = photo(size=(40, 30))
    torch.manual_seed(0)
    plan = augmentation()(image)
    assert isinstance(plan, CropPlan)
    assert torch.equal(plan.image, as_tensor(image)) and plan.image.dtype == torch.uint8
    assert plan.boxes.shape == (5, BOX_COLUMNS) and plan.color_params.shape == (5, NUM_PARAMS)
    area = (plan.boxes[:, 2] - plan.boxes[:, 0]) * (plan.boxes[:, 3] - plan.boxes[:, 1]) / (40 * 30)
    assert (area[:2] >= 0.4 - 1e-5).all() and (area[2:] <= 0.25 + 1e-5).all()
    torch.manual_seed(0)
    again = augmentation()(image)
    assert torch.equal(plan.boxes, again.boxes) and torch.equal(plan.color_params, again.color_params)
    with pytest.raises(ValueError, match="batched_crops needs batched_color"):
        MultiCropAugmentation(batched_crops=True)


def dataset() -> PretrainDataset:
    masks = MaskGenerator(pred_ratio=[0.0, 0.3], pred_ratio_var=[0.0, 0.2])
    return PretrainDataset(Images(12, corrupt={5}), augmentation(), masks, mask_stride=8, seed=7)


def test_batches_carry_images_and_boxes_crop_major():
    ds = dataset()
    items = [ds[(0, i)] for i in (3, 1, 5)]  # image 5 is unreadable: a stand-in takes its place
    batch = collate_pretrain(items)
    assert batch.global_crops is None and batch.local_crops is None
    assert batch.images.shape == (3, 3, 40, 40) and batch.images.dtype == torch.uint8
    assert batch.global_boxes.shape == (6, BOX_COLUMNS) and batch.local_boxes.shape == (9, BOX_COLUMNS)
    assert batch.masks.shape == (6, 4, 4) and batch.skipped == ("img5.jpg",)
    for i, item in enumerate(items):
        assert torch.equal(batch.images[i], item.image)
        for c in range(2):
            assert torch.equal(batch.global_boxes[c * 3 + i], item.boxes[c])
            assert torch.equal(batch.global_params[c * 3 + i], item.color_params[c])
        for c in range(3):
            assert torch.equal(batch.local_boxes[c * 3 + i], item.boxes[2 + c])
    moved = batch.to("cpu")
    assert torch.equal(moved.images, batch.images) and torch.equal(moved.local_boxes, batch.local_boxes)
    crops = cut_crops(batch.images, batch.global_boxes, 32)
    assert crops.shape == (6, 3, 32, 32) and 0 <= float(crops.min()) and float(crops.max()) <= 1


def test_workers_give_the_same_batches():
    ds = dataset()

    def batches(num_workers):
        loader = DataLoader(ds, batch_sampler=EpochBatchSampler(len(ds), 4, seed=1, start_epoch=2),
                            collate_fn=collate_pretrain, num_workers=num_workers)
        return list(loader)

    for a, b in zip(batches(0), batches(2)):
        assert torch.equal(a.images, b.images) and torch.equal(a.global_boxes, b.global_boxes)
        assert torch.equal(a.local_params, b.local_params) and torch.equal(a.masks, b.masks)


def test_boxes_of_one_sample_differ_between_epochs():
    ds = dataset()
    assert not torch.equal(ds[(0, 2)].boxes, ds[(1, 2)].boxes)
    assert torch.equal(ds[(1, 2)].boxes, ds[(1, 2)].boxes)
    assert torch.equal(ds[(0, 2)].image, ds[(1, 2)].image)
