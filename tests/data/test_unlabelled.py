"""Unlabelled pre-training data: a flat folder of images and a text file listing images."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from ibot.data.datasets import CorruptImageError, build_dataset, dataset_labels, safe_getitem, val_split_problem


def _save(path, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(path)


@pytest.fixture
def flat(tmp_path):
    """images/: two images, a nested folder with one more, a text file and a broken image."""
    root = tmp_path / "images"
    _save(root / "b.png", 0)
    _save(root / "a.jpg", 1)
    _save(root / "more" / "c.png", 2)
    (root / "notes.txt").write_text("not an image")
    (root / "z_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root


def test_a_flat_folder_is_every_image_under_it_unlabelled(flat):
    data = build_dataset(str(flat), "train")
    assert [p for p, _ in data.samples] == [str(flat / n) for n in ("a.jpg", "b.png", "z_broken.png", "more/c.png")]
    assert data.classes == [] and dataset_labels(data).tolist() == [-1] * 4
    image, label = data[0]
    assert image.mode == "RGB" and image.size == (10, 12) and label == -1
    item, skipped = safe_getitem(data, 2)  # unreadable images are skipped as in an ImageFolder
    assert item is None and skipped == str(flat / "z_broken.png")
    with pytest.raises(CorruptImageError):
        data[2]


def test_a_flat_folder_has_no_labelled_val_split(flat, tmp_path):
    problem = val_split_problem(str(flat))
    assert str(flat) in problem and "unlabelled" in problem and "\n" not in problem
    layout = tmp_path / "layout"  # ROOT/train and ROOT/val of unlabelled images
    shutil.copytree(flat, layout / "train")
    shutil.copytree(flat, layout / "val")
    assert len(build_dataset(str(layout / "train"), "train")) == 4
    assert "is unlabelled: no labels to score" in val_split_problem(str(layout))


def test_class_folder_trees_stay_image_folders(tmp_path):
    root = tmp_path / "tree"
    for c in ("cat", "dog"):
        for i in range(2):
            _save(root / "train" / c / f"{i}.png", i)
    _save(root / "val" / "cat" / "0.png")
    (root / "train" / "README.txt").write_text("files beside the class folders are not images")
    for spec in (root, root / "train"):
        train = build_dataset(str(spec), "train")
        assert train.classes == ["cat", "dog"] and dataset_labels(train).tolist() == [0, 0, 1, 1]
    assert build_dataset(str(root), "val").classes == ["cat", "dog"]
    assert val_split_problem(str(root)) is None
    shutil.copytree(root / "train", tmp_path / "plain")  # a tree without split folders too
    assert build_dataset(str(tmp_path / "plain"), "train").classes == ["cat", "dog"]
    assert "a tree of class folders is a train split only" in val_split_problem(str(tmp_path / "plain"))


def test_a_text_file_lists_images(flat, tmp_path):
    listing = tmp_path / "lists" / "train.txt"
    listing.parent.mkdir()
    listing.write_text(f"# images for pre-training\n../images/a.jpg\n\n  {flat / 'more' / 'c.png'}  \n"
                       f"../images/z_broken.png\n")
    data = build_dataset(str(listing), "train")
    assert [p for p, _ in data.samples] == [str(listing.parent / "../images/a.jpg"), str(flat / "more" / "c.png"),
                                            str(listing.parent / "../images/z_broken.png")]
    assert data.classes == [] and data[1][1] == -1 and safe_getitem(data, 2)[0] is None
    problem = val_split_problem(str(listing))
    assert str(listing) in problem and "unlabelled" in problem


def test_text_file_errors_are_one_line_naming_the_entry(tmp_path, flat):
    listing = tmp_path / "list.txt"
    listing.write_text(f"{flat / 'a.jpg'}\n# a comment\nmissing/x.png\n")
    with pytest.raises(FileNotFoundError) as caught:
        build_dataset(str(listing))
    assert str(caught.value) == f"{listing}, line 3: image not found: missing/x.png ({tmp_path / 'missing/x.png'})"
    listing.write_text("# nothing\n\n")
    with pytest.raises(FileNotFoundError, match="lists no images"):
        build_dataset(str(listing))
    with pytest.raises(ValueError, match="not a text list of image paths"):
        build_dataset(str(flat / "z_broken.png"))
