"""The Python API exported by ``ibot`` (``ibot/api.py``)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

import ibot
from ibot.eval.checkpoints import load_backbone as load_evaluated
from ibot.eval.features import evaluation_transform
from ibot.eval.knn import knn_classify
from ibot.image_io import load_rgb
from ibot.models import vit_tiny
from ibot.models.tokens import patch_tokens
from tests.eval.helpers import session_tiny_run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return session_tiny_run(tmp_path_factory)


def folder_files(folder):
    """The images of the train split of an ImageFolder tree (``train/<class>/``), in the order
    ImageFolder reads them."""
    return sorted((folder / "train").glob("*/*.png"))


def test_the_api_is_exported():
    assert {"load_backbone", "extract_features", "extract_patch_features", "knn_classify",
            "patch_tokens"} <= set(ibot.__all__)
    assert ibot.knn_classify is knn_classify
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        ibot.nothing  # noqa: B018


def test_our_checkpoint_needs_no_architecture(tiny_run):
    checkpoint, _ = tiny_run
    backbone = ibot.load_backbone(checkpoint)
    reference = load_evaluated(checkpoint).backbone
    x = torch.randn(2, 3, 16, 16)
    assert not backbone.training
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), reference(x), rtol=0, atol=0)
    student = ibot.load_backbone(checkpoint, key="student")
    assert not torch.equal(student.blocks[0].attn.qkv.weight, backbone.blocks[0].attn.qkv.weight)


def test_official_file_takes_arch(tmp_path):
    torch.manual_seed(0)
    network = vit_tiny(patch_size=8, img_size=32, embed_dim=32, depth=1, num_heads=2).eval()
    path = tmp_path / "checkpoint_teacher.pth"
    torch.save({"state_dict": network.state_dict()}, path)
    with pytest.raises(ValueError, match="arch="):
        ibot.load_backbone(path)
    backbone = ibot.load_backbone(path, arch="vit_tiny", embed_dim=32, depth=1, num_heads=2)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), network(x), rtol=0, atol=0)


def test_features_of_a_folder_and_of_a_list_of_its_images_agree(tiny_run):
    checkpoint, folder = tiny_run
    backbone = ibot.load_backbone(checkpoint)
    features, labels = ibot.extract_features(backbone, folder)
    files = folder_files(folder)
    listed, no_labels = ibot.extract_features(backbone, [str(f) for f in files[:3]] + [Image.open(files[3])])
    assert features.shape == (len(files), backbone.embed_dim) and features.dtype == torch.float32
    assert labels.tolist() == [int(f.parent.name[len("class"):]) for f in files]
    assert no_labels.tolist() == [-1] * 4
    torch.testing.assert_close(listed, features[:4])
    accuracy = ibot.knn_classify(features, labels, features, labels, ks=(1,))
    assert accuracy[1]["top1"] == 100.0  # each image is its own nearest neighbour


def test_bad_images_are_named(tiny_run, tmp_path):
    checkpoint, folder = tiny_run
    backbone = ibot.load_backbone(checkpoint)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match="broken.png"):
        ibot.extract_features(backbone, [folder_files(folder)[0], broken])
    with pytest.raises(FileNotFoundError, match="missing.png"):
        ibot.extract_features(backbone, [tmp_path / "missing.png"])
    with pytest.raises(ValueError, match="empty"):
        ibot.extract_features(backbone, [])


def test_patch_features_are_the_patch_tokens_of_the_evaluation_transform(tiny_run):
    checkpoint, folder = tiny_run
    backbone = ibot.load_backbone(checkpoint)
    files = folder_files(folder)
    patches, labels = ibot.extract_patch_features(backbone, folder)
    _, cls_labels = ibot.extract_features(backbone, folder)
    assert patches.shape == (len(files), 4, 4, backbone.embed_dim) and patches.dtype == torch.float32
    assert torch.equal(labels, cls_labels)
    listed, no_labels = ibot.extract_patch_features(backbone, [str(f) for f in files[:3]], batch_size=2)
    batch = torch.stack([evaluation_transform(16)(load_rgb(f)) for f in files[:3]])
    with torch.no_grad():
        torch.testing.assert_close(listed, patch_tokens(backbone, batch))
    torch.testing.assert_close(listed, patches[:3])
    assert no_labels.tolist() == [-1] * 3


def test_patch_features_of_the_last_blocks_and_other_sizes(tmp_path):
    torch.manual_seed(0)
    backbone = vit_tiny(patch_size=4, img_size=16, embed_dim=32, depth=2, num_heads=2).eval()
    images = [Image.new("RGB", (30, 20), (i * 40, 90, 200 - i * 50)) for i in range(2)]
    two, _ = ibot.extract_patch_features(backbone, images, image_size=24, n_last_blocks=2)
    assert two.shape == (2, 6, 6, 64)
    batch = torch.stack([evaluation_transform(24)(image) for image in images])
    with torch.no_grad():
        torch.testing.assert_close(two, patch_tokens(backbone, batch, n_last_blocks=2))
    with pytest.raises(ValueError, match="multiple of the backbone's token stride 4"):
        ibot.extract_patch_features(backbone, images, image_size=18)
    with pytest.raises(ValueError, match="extract_patch_features: the list of images is empty"):
        ibot.extract_patch_features(backbone, [])
