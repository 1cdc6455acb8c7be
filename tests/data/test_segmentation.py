"""Segmentation datasets: the ADE20K and Pascal VOC layouts, bad masks, the built-in scenes."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ibot.data.segmentation import (ADE20K, IGNORE_INDEX, FashionMNISTScenes, PascalVOC,
                                    build_segmentation_dataset)


def _pair(image_path: Path, mask_path: Path, mask: np.ndarray, palette: bool = False) -> None:
    image_path.parent.mkdir(parents=True, exist_ok=True)
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*mask.shape, 3), 90, np.uint8)).save(image_path)
    png = Image.fromarray(mask.astype(np.uint8), mode="L")
    if palette:
        png = png.convert("P")
        png.putpalette([v for i in range(256) for v in (i, 255 - i, i // 2)])
        png = Image.fromarray(mask.astype(np.uint8), mode="P")
        png.putpalette([v for i in range(256) for v in (i, 255 - i, i // 2)])
    png.save(mask_path)


def make_ade(root: Path, masks: dict[str, list[np.ndarray]]) -> Path:
    for split, items in masks.items():
        for i, mask in enumerate(items):
            _pair(root / "images" / split / f"ADE_{i}.jpg", root / "annotations" / split / f"ADE_{i}.png", mask)
    return root


def make_voc(root: Path, masks: dict[str, list[np.ndarray]]) -> Path:
    voc = root / "VOCdevkit" / "VOC2012"
    for split, items in masks.items():
        ids = [f"2007_{split}_{i}" for i in range(len(items))]
        for name, mask in zip(ids, items):
            _pair(voc / "JPEGImages" / f"{name}.jpg", voc / "SegmentationClass" / f"{name}.png", mask, palette=True)
        (voc / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


def test_ade20k_layout_shifts_classes_and_ignores_zero(tmp_path):
    mask = np.array([[0, 1, 150], [2, 2, 0]])
    root = make_ade(tmp_path, {"training": [mask], "validation": [mask, mask]})
    train = build_segmentation_dataset(str(root), "train")
    assert isinstance(train, ADE20K) and len(train) == 1 and len(build_segmentation_dataset(str(root), "val")) == 2
    image, labels = train[0]
    assert image.size == (3, 2) and image.mode == "RGB"
    assert labels.tolist() == [[IGNORE_INDEX, 0, 149], [1, 1, IGNORE_INDEX]]


def test_voc_layout_reads_palette_indices_from_any_of_its_roots(tmp_path):
    mask = np.array([[0, 20, 255], [3, 3, 0]])
    root = make_voc(tmp_path, {"train": [mask], "val": [mask]})
    for where in (root, root / "VOCdevkit", root / "VOCdevkit" / "VOC2012"):
        data = build_segmentation_dataset(str(where), "train")
        assert isinstance(data, PascalVOC) and data.classes[0] == "background" and len(data.classes) == 21
        assert data[0][1].tolist() == mask.tolist()


def test_missing_mask_names_the_image(tmp_path):
    root = make_ade(tmp_path, {"training": [np.ones((2, 2))]})
    (root / "annotations" / "training" / "ADE_0.png").unlink()
    with pytest.raises(FileNotFoundError, match="no mask for .*ADE_0.jpg"):
        ADE20K(root, "train")


def test_mask_of_another_size_names_both_files(tmp_path):
    root = make_ade(tmp_path, {"training": [np.ones((2, 2))]})
    Image.fromarray(np.ones((3, 2), np.uint8)).save(root / "annotations" / "training" / "ADE_0.png")
    with pytest.raises(ValueError, match=r"ADE_0.png is 2x3 but its image .*ADE_0.jpg is 2x2"):
        ADE20K(root, "train")[0]


@pytest.mark.parametrize("layout, value", [("ade", 151), ("voc", 21)])
def test_class_index_out_of_range_names_the_mask(tmp_path, layout, value):
    mask = np.array([[0, value]])
    if layout == "ade":
        data = ADE20K(make_ade(tmp_path, {"training": [mask]}), "train")
    else:
        data = PascalVOC(make_voc(tmp_path, {"train": [mask]}), "train")
    with pytest.raises(ValueError, match=rf"\.png holds class index {value}, outside"):
        data[0]


def test_unknown_layouts_and_splits_are_one_line_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="segmentation data not found"):
        build_segmentation_dataset(str(tmp_path / "nothing"))
    with pytest.raises(ValueError, match="neither in the ADE20K layout"):
        build_segmentation_dataset(str(tmp_path))
    with pytest.raises(ValueError, match="split must be 'train' or 'val'"):
        build_segmentation_dataset("fashion-mnist-scenes", "test")
    root = make_voc(tmp_path / "v", {"train": [np.zeros((2, 2))]})
    with pytest.raises(FileNotFoundError, match="val.txt"):
        build_segmentation_dataset(str(root), "val")


def test_scenes_are_deterministic_and_labelled_where_items_are_drawn():
    a, b = FashionMNISTScenes("train", num_scenes=20), FashionMNISTScenes("train", num_scenes=20)
    for i in (0, 7, 19):
        image_a, mask_a = a[i]
        image_b, mask_b = b[i]
        assert np.array_equal(np.asarray(image_a), np.asarray(image_b)) and np.array_equal(mask_a, mask_b)
        pixels = np.asarray(image_a)[..., 0]
        assert image_a.size == (56, 56) and mask_a.min() >= 0 and mask_a.max() <= 10
        assert (pixels[mask_a == 0] == 0).all() and (pixels[mask_a > 0] > 20).all()
        assert 1 <= len(np.unique(mask_a[mask_a > 0])) <= 4
    assert not np.array_equal(a[0][1], a[1][1])
    other_seed, val = FashionMNISTScenes("train", num_scenes=2, seed=1), FashionMNISTScenes("val", num_scenes=2)
    assert not np.array_equal(other_seed[0][1], a[0][1]) and not np.array_equal(val[0][1], a[0][1])
    assert val.source.split == "test" and a.source.split == "train"
    assert len(FashionMNISTScenes("train")) == 3000 and FashionMNISTScenes("val").classes[0] == "background"
