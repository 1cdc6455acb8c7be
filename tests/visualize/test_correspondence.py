"""Mutual nearest patches: the matching rule, features, and the lines read back from the PNG."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ibot.cli import main
from ibot.data.datasets import build_dataset, dataset_labels
from ibot.models import build_backbone
from ibot.visualize.correspondence import (
    correspond,
    mutual_nearest_neighbours,
    patch_features,
    same_class_pairs,
    save_correspondence,
)
from tests.test_cli_errors import one_line_error
from tests.train.helpers import make_image_folder
from tests.visualize.helpers import BRIGHT, SIDE, bright_patch_image, noise_image, pointing_vit, tiny_checkpoint


def test_mutual_nearest_neighbours_recovers_a_permutation_most_similar_first():
    torch.manual_seed(0)
    a = F.normalize(torch.randn(10, 8), dim=-1)
    perm = torch.randperm(10)
    b = F.normalize(a[perm] + 0.01 * torch.randn(10, 8), dim=-1)  # b[j] ~ a[perm[j]]
    m = mutual_nearest_neighbours(a, b)
    assert m.num_mutual == 10 and sorted(m.index_a.tolist()) == list(range(10))
    assert (perm[m.index_b] == m.index_a).all()
    assert (m.similarity[:-1] >= m.similarity[1:]).all()
    top = mutual_nearest_neighbours(a, b, top_k=3)
    assert top.index_a.tolist() == m.index_a[:3].tolist()


def test_one_sided_neighbours_are_not_mutual():
    a = F.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]), dim=-1)
    b = F.normalize(torch.tensor([[1.0, 0.05], [0.1, 1.0]]), dim=-1)
    m = mutual_nearest_neighbours(a, b)  # a1's nearest is b0, but b0's nearest is a0
    assert list(zip(m.index_a.tolist(), m.index_b.tolist())) == [(0, 0), (2, 1)]


def test_patch_features_are_unit_patch_tokens():
    torch.manual_seed(0)
    vit = build_backbone("vit_tiny", patch_size=4, img_size=16, depth=1, embed_dim=16, num_heads=2).eval()
    x = torch.randn(1, 3, 16, 20)
    feats = patch_features(vit, x)
    assert feats.shape == (1, 4, 5, 16)
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(1, 4, 5))
    tokens = vit(x, return_all_tokens=True)[0, 1:]
    torch.testing.assert_close(feats[0, 1, 2], F.normalize(tokens[1 * 5 + 2], dim=0))


def test_an_image_matched_with_itself_gives_horizontal_lines(tmp_path):
    torch.manual_seed(0)
    vit = build_backbone("vit_tiny", patch_size=4, img_size=16, depth=1, embed_dim=16, num_heads=2).eval()
    image = Image.open(noise_image(tmp_path / "a.png", (16, 16)))
    result = correspond(vit, image, image, image_size=16, top_k=5)
    m = result.matches
    assert m.num_mutual == 16 and len(m.similarity) == 5 and (m.index_a == m.index_b).all()
    path, layout, ends_a, ends_b = save_correspondence(result, tmp_path / "c.png")
    png = np.asarray(Image.open(path).convert("RGB")).astype(int)
    assert png.shape[:2] == layout.size and layout.cell_w == 224  # 16 px shown 14x
    np.testing.assert_allclose(ends_a[:, 1], ends_b[:, 1])  # same rows on both sides
    top, left_b = layout.box(0, 1)
    x = left_b - layout.gap // 2  # a column in the white gap between the two images
    inked = np.nonzero((png[top:top + 224, x] < 250).any(-1))[0] + top
    rows = np.unique(ends_a[:, 1])
    assert len(inked) and all(np.abs(rows - y).min() <= 2 for y in inked)  # ink only on the lines
    assert all(np.abs(inked - y).min() <= 1 for y in rows)  # every line crosses the gap


def test_foreground_keeps_only_the_attended_patches():
    vit, image = pointing_vit(), bright_patch_image()  # mean of heads: half the attention on one patch
    everything = correspond(vit, image, image, image_size=SIDE).matches
    assert everything.num_mutual > 1
    m = correspond(vit, image, image, image_size=SIDE, foreground=0.4).matches
    bright = BRIGHT[0] * 4 + BRIGHT[1]
    assert m.index_a.tolist() == m.index_b.tolist() == [bright] and m.num_mutual == 1


def test_command_writes_the_picture(tmp_path, capsys):
    ckpt = tiny_checkpoint(tmp_path / "ckpt.safetensors")
    a, b = noise_image(tmp_path / "a.png", seed=1), noise_image(tmp_path / "b.jpg", (40, 28), seed=2)
    out = tmp_path / "pair.png"
    assert main(["visualize", "correspondence", str(a), str(b), "-c", str(ckpt), "--output", str(out),
                 "--top-k", "4", "--foreground", "0.6"]) == 0
    assert "mutual nearest patches" in capsys.readouterr().out
    png = Image.open(out)
    assert png.width > 2 * 224 and png.height > 224


def test_same_class_pairs_are_two_different_images_of_one_class_drawn_by_the_seed():
    labels = [0, 1, 1, 2, 0, 1, -1, -1, 3, 0]  # class 2 and 3 have one image each; -1 is unlabelled
    pairs = same_class_pairs(labels, 40, seed=3)
    assert len(pairs) == 40 and {label for label, _, _ in pairs} == {0, 1}  # both pairable classes come up
    assert all(a != b and labels[a] == labels[b] == label for label, a, b in pairs)
    assert same_class_pairs(labels, 40, seed=3) == pairs and same_class_pairs(labels, 40, seed=4) != pairs
    with pytest.raises(ValueError, match="no class of the dataset has two images"):
        same_class_pairs([0, 1, 2, -1, -1], 1)
    with pytest.raises(ValueError, match="--pairs must be at least 1"):
        same_class_pairs(labels, 0)


def test_command_draws_pairs_of_one_class_from_a_dataset(tmp_path, capsys):
    ckpt = tiny_checkpoint(tmp_path / "ckpt.safetensors")
    folder = make_image_folder(tmp_path / "images", n_per_class=3, classes=3, size=24)
    out = tmp_path / "pairs"
    assert main(["visualize", "correspondence", "--data", str(folder), "--pairs", "4", "--seed", "1", "-c", str(ckpt),
                 "--top-k", "3", "--output-dir", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    dataset = build_dataset(str(folder))
    labels = dataset_labels(dataset)
    assert labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    names = []
    for i, line in enumerate(lines):
        path, name, a, b = re.fullmatch(r"(.*): (\w+) #(\d+) - #(\d+)", line).groups()
        a, b = int(a), int(b)
        assert a != b and labels[a] == labels[b] and dataset.classes[labels[a]] == name
        assert path == str(out / f"correspondence_{name}_{i}.png") and Image.open(path).width > 2 * 224
        names.append(Path(path).name)
    assert len(lines) == 4 and sorted(p.name for p in out.iterdir()) == sorted(names)


def test_fashion_mnist_class_names_make_file_names(tmp_path, capsys):
    ckpt = tiny_checkpoint(tmp_path / "ckpt.safetensors")
    assert main(["visualize", "correspondence", "--data", "fashion-mnist:subset", "--split", "val", "--pairs", "6",
                 "-c", str(ckpt), "--output-dir", str(tmp_path)]) == 0
    names = sorted(p.name for p in tmp_path.glob("correspondence_*.png"))
    assert len(names) == 6 and all(re.fullmatch(r"correspondence_[\w.-]+_\d\.png", n) for n in names)


@pytest.mark.parametrize("args, message", [
    ([], "give two images IMG_A IMG_B, or --data SPEC"),
    (["{a}"], "give two images IMG_A IMG_B, or --data SPEC"),
    (["{a}", "{a}", "--data", "fashion-mnist:subset"], "give two images IMG_A IMG_B or --data SPEC, not both"),
    (["{a}", "{a}", "--pairs", "3", "--seed", "1"], "--pairs, --seed go with --data"),
    (["--data", "fashion-mnist:subset", "-o", "x.png"], "with --data, pictures go to --output-dir"),
    (["--data", "fashion-mnist:subset", "--pairs", "0"], "--pairs must be at least 1, got 0"),
])
def test_command_needs_two_images_or_a_dataset(args, message, tmp_path, capsys):
    image = str(noise_image(tmp_path / "a.png"))
    ckpt = tiny_checkpoint(tmp_path / "ckpt.safetensors")
    line = one_line_error(["visualize", "correspondence", *(a.format(a=image) for a in args), "-c", str(ckpt)], capsys)
    assert message in line
