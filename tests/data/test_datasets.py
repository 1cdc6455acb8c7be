import gzip
import io
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from ibot.data import fashion_mnist
from ibot.data.datasets import (
    CorruptImageError,
    Holdout,
    build_dataset,
    collate_skip_corrupt,
    format_skipped,
    load_rgb,
    val_split_problem,
)
from ibot.data.transforms import eval_transform
from ibot.eval.features import EvalDataset


def _one_line(excinfo, *needles):
    message = str(excinfo.value)
    assert "\n" not in message
    for needle in needles:
        assert str(needle) in message, message


# ---------------------------------------------------------------- Fashion-MNIST


def _write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_subset_via_env_var(monkeypatch):
    monkeypatch.setenv(fashion_mnist.ENV_VAR, "subset")
    train = build_dataset("fashion-mnist", "train")
    assert len(train) == 6000 and train.source == str(fashion_mnist.SUBSET_PATH)
    image, label = train[123]
    assert image.mode == "RGB" and image.size == (28, 28)
    assert isinstance(label, int) and label == train.targets[123]
    r, g, b = image.split()  # gray converted to RGB: three equal channels
    assert np.array_equal(np.asarray(r), np.asarray(b)) and np.asarray(g).any()
    assert len(train.classes) == 10
    assert len(build_dataset("fashion-mnist", "val")) == len(build_dataset("fashion-mnist", "test"))


def test_subset_is_the_fallback_without_the_debian_folder(tmp_path, monkeypatch):
    monkeypatch.delenv(fashion_mnist.ENV_VAR, raising=False)
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "absent")
    assert build_dataset("fashion-mnist", "test").source == str(fashion_mnist.SUBSET_PATH)


def test_subset_is_class_balanced_and_indexed():
    with np.load(fashion_mnist.SUBSET_PATH) as npz:
        for split, per_class, total in (("train", 600, 60000), ("test", 100, 10000)):
            labels, indices = npz[f"{split}_labels"], npz[f"{split}_indices"]
            assert npz[f"{split}_images"].shape == (10 * per_class, 28, 28)
            assert npz[f"{split}_images"].dtype == np.uint8
            assert np.bincount(labels, minlength=10).tolist() == [per_class] * 10
            assert np.all(np.diff(indices.astype(int)) > 0) and indices.max() < total
    assert fashion_mnist.SUBSET_PATH.stat().st_size < 6e6
    notice = (fashion_mnist.SUBSET_PATH.parent / "FASHION_MNIST_LICENSE.txt").read_text()
    assert "Zalando SE" in notice and "Permission is hereby granted" in notice


@pytest.mark.skipif(not fashion_mnist.DEBIAN_DIR.is_dir(), reason="dataset-fashion-mnist absent")
def test_debian_folder_is_the_default_and_subset_matches_it(monkeypatch):
    monkeypatch.delenv(fashion_mnist.ENV_VAR, raising=False)
    full = {split: build_dataset("fashion-mnist", split) for split in ("train", "test")}
    assert (len(full["train"]), len(full["test"])) == (60000, 10000)
    assert full["train"].source == str(fashion_mnist.DEBIAN_DIR)
    with np.load(fashion_mnist.SUBSET_PATH) as npz:
        for split, ds in full.items():
            indices = npz[f"{split}_indices"].astype(int)
            assert np.array_equal(ds.images[indices], npz[f"{split}_images"])
            assert np.array_equal(np.asarray(ds.targets)[indices], npz[f"{split}_labels"])


def test_env_var_folder_of_idx_files(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    for split, (images_name, labels_name) in fashion_mnist.IDX_FILES.items():
        _write_idx(tmp_path / images_name, images)
        _write_idx(tmp_path / labels_name, labels)
    monkeypatch.setenv(fashion_mnist.ENV_VAR, str(tmp_path))
    ds = build_dataset("fashion-mnist")
    assert ds.source == str(tmp_path) and ds.targets == [3, 1, 4, 1, 5]
    assert np.array_equal(np.asarray(ds[2][0])[..., 0], images[2])
    monkeypatch.delenv(fashion_mnist.ENV_VAR)
    assert build_dataset(f"fashion-mnist:{tmp_path}").source == str(tmp_path)
    assert len(build_dataset("fashion-mnist:subset", "val")) == 1000

    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError) as excinfo:
        build_dataset(f"fashion-mnist:{tmp_path}", "test")
    _one_line(excinfo, tmp_path, "t10k-labels-idx1-ubyte.gz")


def test_read_idx_rejects_other_files(tmp_path):
    path = tmp_path / "bad.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"\x00\x00\x0d\x01\x00\x00\x00\x02abcdefgh")  # float type code
    with pytest.raises(ValueError) as excinfo:
        fashion_mnist.read_idx(path)
    _one_line(excinfo, path)


# ---------------------------------------------------------------- ImageFolder


def _save(path, size=(20, 16), seed=0, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)


@pytest.fixture
def image_tree(tmp_path):
    """root/train/{a,b}: 3 good images, a truncated JPEG, a text file named .jpg; root/test/a."""
    root = tmp_path / "images"
    _save(root / "train" / "a" / "0.png", seed=0)
    _save(root / "train" / "a" / "1.jpg", seed=1)
    _save(root / "train" / "b" / "2.png", seed=2)
    buffer = io.BytesIO()
    noise = np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buffer, format="JPEG")
    data = buffer.getvalue()
    (root / "train" / "b" / "3_truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "train" / "b" / "4_text.jpg").write_text("not an image\n")
    _save(root / "test" / "a" / "5.png", seed=5)
    return root


def test_image_folder_uses_split_subfolders(image_tree):
    train = build_dataset(str(image_tree), "train")
    assert len(train) == 5 and train.classes == ["a", "b"]
    image, label = train[0]
    assert image.mode == "RGB" and image.size == (20, 16) and label == 0
    val = build_dataset(str(image_tree), "val")  # no val/: test/ stands in
    assert len(val) == 1 and val.root == str(image_tree / "test")


def test_a_split_folder_given_finds_its_siblings(image_tree):
    """``--data ROOT/train``, as the official scripts pass it: val comes from ROOT/val (or test)."""
    train_folder = image_tree / "train"
    assert len(build_dataset(str(train_folder), "train")) == 5
    val = build_dataset(str(train_folder), "val")
    assert len(val) == 1 and val.root == str(image_tree / "test")
    assert build_dataset(str(image_tree / "test"), "train").root == str(train_folder)


def test_a_split_folder_without_a_sibling_val_is_refused(image_tree):
    shutil.rmtree(image_tree / "test")
    with pytest.raises(FileNotFoundError) as excinfo:
        build_dataset(str(image_tree / "train"), "val")
    _one_line(excinfo, "val/", "test/", image_tree)


@pytest.mark.parametrize("split", ["val", "test"])
def test_a_flat_class_tree_is_only_a_train_split(image_tree, split):
    """Class folders directly under the root: no split to evaluate on without scoring training images."""
    flat = image_tree.parent / "flat"
    shutil.copytree(image_tree / "train", flat)
    assert len(build_dataset(str(flat), "train")) == 5
    with pytest.raises(FileNotFoundError) as excinfo:
        build_dataset(str(flat), split)
    _one_line(excinfo, flat, "--holdout")


def test_holdout_splits_the_train_split_by_its_seed(image_tree):
    flat = image_tree.parent / "flat"
    for c in range(3):
        for i in range(7):
            _save(flat / f"class{c}" / f"{i}.png", seed=10 * c + i)
    holdout = Holdout(0.25, seed=0)
    train, val = build_dataset(str(flat), "train", holdout), build_dataset(str(flat), "val", holdout)
    assert (len(train), len(val)) == (16, 5) and train.classes == val.classes == ["class0", "class1", "class2"]
    assert sorted(train.indices + val.indices) == list(range(21))
    assert build_dataset(str(flat), "test", holdout).indices == val.indices
    assert build_dataset(str(flat), "val", Holdout(0.25, seed=0)).indices == val.indices
    assert build_dataset(str(flat), "val", Holdout(0.25, seed=1)).indices != val.indices
    image, label = val[0]
    assert image.mode == "RGB" and label == val.dataset.targets[val.indices[0]]
    assert "25%" in val.description and "seed 0" in val.description
    # with a val folder present, the hold-out still comes from the train split, as asked
    assert len(build_dataset(str(image_tree), "val", Holdout(0.5, seed=3))) == 2
    for fraction in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="--holdout"):
            Holdout(fraction)


def test_val_split_problem(image_tree, tmp_path):
    assert val_split_problem("fashion-mnist:subset") is None
    assert val_split_problem(str(image_tree)) is None
    flat = tmp_path / "flat"
    shutil.copytree(image_tree / "train", flat)
    assert str(flat) in val_split_problem(str(flat))
    shutil.rmtree(image_tree / "train" / "b")  # one class: no labels to score
    one_class = val_split_problem(str(image_tree))
    assert "one class" in one_class and str(image_tree / "test") in one_class


def test_an_empty_class_folder_is_skipped_with_a_warning_naming_it(image_tree):
    (image_tree / "train" / "c_empty").mkdir()
    (image_tree / "train" / "d_no_images").mkdir()
    (image_tree / "train" / "d_no_images" / "notes.txt").write_text("no image here")
    with pytest.warns(UserWarning) as warned:
        train = build_dataset(str(image_tree), "train")
    assert len(warned) == 1 and "c_empty" in str(warned[0].message) and "d_no_images" in str(warned[0].message)
    assert len(train) == 5 and train.classes == ["a", "b", "c_empty", "d_no_images"]


def test_missing_split_folder_is_an_error(image_tree):
    (image_tree / "test" / "a" / "5.png").unlink()
    (image_tree / "test" / "a").rmdir()
    (image_tree / "test").rmdir()
    with pytest.raises(FileNotFoundError) as excinfo:
        build_dataset(str(image_tree), "val")
    _one_line(excinfo, image_tree, "val/")


def test_corrupt_images_raise_with_their_path(image_tree):
    with Image.open(image_tree / "train" / "b" / "3_truncated.jpg") as truncated:
        truncated.verify()  # the header is intact: only decoding finds the damage
    for name in ("3_truncated.jpg", "4_text.jpg"):
        path = image_tree / "train" / "b" / name
        with pytest.raises(CorruptImageError) as excinfo:
            load_rgb(path)
        assert excinfo.value.path == str(path)
    assert load_rgb(image_tree / "train" / "a" / "1.jpg").mode == "RGB"


@pytest.mark.parametrize("num_workers", [0, 1])
def test_skip_corrupt_counts_unreadable_images(image_tree, num_workers):
    train = build_dataset(str(image_tree), "train")
    loader = DataLoader(
        EvalDataset(train, eval_transform(16, crop_pct=1.0)), batch_size=5, num_workers=num_workers,
        collate_fn=collate_skip_corrupt,
    )
    (batch, skipped), = list(loader)
    images, labels = batch
    assert images.shape == (3, 3, 16, 16) and labels.tolist() == [0, 0, 1]
    assert sorted(skipped) == [
        str(image_tree / "train" / "b" / "3_truncated.jpg"),
        str(image_tree / "train" / "b" / "4_text.jpg"),
    ]
    message = format_skipped(len(skipped), skipped[0])
    assert message == f"skipped 2 unreadable images (e.g. {skipped[0]})"


def test_collate_skip_corrupt_with_only_corrupt_items():
    assert collate_skip_corrupt([(None, "x.jpg"), (None, "y.jpg")]) == (None, ["x.jpg", "y.jpg"])
    batch, skipped = collate_skip_corrupt([((torch.ones(2), 1), None), (None, "y.jpg")])
    assert batch[0].shape == (1, 2) and skipped == ["y.jpg"]


def test_empty_and_missing_folders_give_one_line_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError) as excinfo:
        build_dataset(str(empty))
    _one_line(excinfo, empty)
    (empty / "class_a").mkdir()  # a class folder without images
    with pytest.raises(FileNotFoundError) as excinfo:
        build_dataset(str(empty))
    _one_line(excinfo, empty)
    with pytest.raises(FileNotFoundError) as excinfo:
        build_dataset(str(tmp_path / "missing"))
    _one_line(excinfo, tmp_path / "missing")


@pytest.mark.parametrize(
    "kind, folder",
    [
        ("cifar10", "cifar-10-batches-py"),
        ("cifar100", "cifar-100-python"),
        ("stl10", "stl10_binary"),
    ],
)
def test_torchvision_specs_with_missing_folder(tmp_path, kind, folder):
    with pytest.raises(FileNotFoundError) as excinfo:
        build_dataset(f"{kind}:{tmp_path}")
    _one_line(excinfo, tmp_path / folder)


def test_torchvision_spec_with_unreadable_files(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    with pytest.raises(ValueError) as excinfo:
        build_dataset(f"cifar10:{tmp_path / 'cifar-10-batches-py'}", "test")
    _one_line(excinfo, tmp_path / "cifar-10-batches-py")


def test_bad_specs_and_splits():
    with pytest.raises(ValueError) as excinfo:
        build_dataset("cifar10:")
    _one_line(excinfo, "cifar10")
    with pytest.raises(ValueError) as excinfo:
        build_dataset("fashion-mnist", "unlabeled")
    _one_line(excinfo, "unlabeled")


def test_val_labels_are_the_train_splits_classes(image_tree):
    """A val split lacking a class keeps the train split's label numbers (b is 1 in both)."""
    shutil.move(image_tree / "test" / "a", image_tree / "test" / "b")
    val = build_dataset(str(image_tree), "val")
    assert val.classes == ["a", "b"] and [label for _, label in val.samples] == [1]
    _save(image_tree / "test" / "zebra" / "9.png")
    with pytest.raises(ValueError) as excinfo:
        build_dataset(str(image_tree), "val")
    _one_line(excinfo, "zebra", image_tree / "test")
