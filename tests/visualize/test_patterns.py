"""Patch-head patterns: the running top-k search on planted answers, the head's probabilities, the
crops read back from the PNG, and the command."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ibot.cli import main
from ibot.models import IBOTHead, build_backbone
from ibot.visualize.patterns import (
    OUTLINE,
    PatchTopK,
    TopPatches,
    find_top_patches,
    patch_crop,
    patch_probabilities,
    save_patterns,
    spread_indices,
)
from tests.test_cli_errors import one_line_error
from tests.train.helpers import make_image_folder
from tests.visualize.helpers import tiny_checkpoint

HEAD = dict(out_dim=32, patch_out_dim=32, head_hidden_dim=16, head_bottleneck_dim=8)  # small head sizes


def random_probs(b: int = 6, h: int = 3, w: int = 4, p: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, h, w, p, generator=torch.Generator().manual_seed(seed)).softmax(-1)


def brute_force(probs: torch.Tensor, image_ids: torch.Tensor, prototype: int, k: int) -> list[tuple[int, int, int]]:
    """(image, row, col) of the k highest probabilities of ``prototype``, by sorting everything."""
    b, h, w, _ = probs.shape
    order = probs[..., prototype].flatten().argsort(descending=True)[:k]
    return [(int(image_ids[i // (h * w)]), int(i // w % h), int(i % w)) for i in order]


def test_a_planted_patch_is_found_first():
    probs, ids = random_probs(), torch.arange(10, 16)
    probs[4, 1, 3] = torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0])  # image 14, cell (1, 3): surely prototype 2
    top = find_top_patches([(probs, ids)], top_k=3, prototype_ids=[2])
    assert top.prototypes.tolist() == [2] and top.entries(0)[0] == (1.0, 14, 1, 3)
    assert [e[1:] for e in top.entries(0)] == brute_force(probs, ids, 2, 3)
    assert (top.scores[0, :-1] >= top.scores[0, 1:]).all()


def test_streaming_over_batches_gives_the_answer_of_all_at_once():
    probs, ids = random_probs(b=7, p=6, seed=1), torch.tensor([3, 9, 1, 0, 7, 8, 2])
    whole = find_top_patches([(probs, ids)], top_k=5, num_shown=6)
    parts = [(probs[s], ids[s]) for s in (slice(0, 1), slice(1, 3), slice(3, 7))]
    streamed = find_top_patches(parts, top_k=5, num_shown=6)
    for name in ("prototypes", "scores", "images", "rows", "cols", "counts"):
        torch.testing.assert_close(getattr(streamed, name), getattr(whole, name))
    for r, prototype in enumerate(whole.prototypes.tolist()):
        assert [e[1:] for e in streamed.entries(r)] == brute_force(probs, ids, prototype, 5)
    assert streamed.num_patches == 7 * 12


def test_the_most_used_prototypes_are_shown_most_used_first():
    winners = torch.tensor([3, 3, 3, 1, 1, 0, 4, 4, 4, 4, 2, 0])  # argmax per patch: 4 x4, 3 x3, then 0, 1 x2
    probs = torch.full((1, 3, 4, 5), 0.1).index_put_((torch.zeros(12, dtype=torch.long), torch.arange(12) // 4,
                                                      torch.arange(12) % 4, winners), torch.tensor(0.6))
    top = find_top_patches([(probs, torch.tensor([0]))], top_k=2, num_shown=4)
    assert top.prototypes.tolist() == [4, 3, 0, 1]  # ties: lower id first
    assert top.counts.tolist() == [4, 3, 2, 2]


def test_fewer_patches_than_top_k_leave_empty_slots():
    top = find_top_patches([(random_probs(b=1, h=1, w=2), torch.tensor([5]))], top_k=4, prototype_ids=[0, 4])
    assert [len(top.entries(r)) for r in range(2)] == [2, 2] and (top.images[:, 2:] == -1).all()
    assert {e[1:] for e in top.entries(1)} == {(5, 0, 0), (5, 0, 1)}


def test_bad_requests_are_refused():
    with pytest.raises(ValueError, match="out of range: the patch head has 5 prototypes"):
        PatchTopK(5, 2, prototype_ids=[1, 5])
    with pytest.raises(ValueError, match="--top-k must be at least 1"):
        PatchTopK(5, 0)
    with pytest.raises(ValueError, match="no patches"):
        find_top_patches([], top_k=2)
    assert spread_indices(10, 4) == [0, 2, 5, 7] and spread_indices(3, 8) == [0, 1, 2]


def test_patch_probabilities_are_the_softmax_of_the_patch_head():
    torch.manual_seed(0)
    vit = build_backbone("vit_tiny", patch_size=4, img_size=16, depth=1, embed_dim=16, num_heads=2).eval()
    head = IBOTHead(16, out_dim=8, patch_out_dim=6, hidden_dim=16, bottleneck_dim=8).eval()
    x = torch.randn(2, 3, 16, 20)
    probs = patch_probabilities(vit, head, x, temperature=0.1)
    assert probs.shape == (2, 4, 5, 6)
    with torch.no_grad():
        _, logits = head(vit(x, return_all_tokens=True))  # (B, N, patch_out_dim) in raster order
    torch.testing.assert_close(probs, (logits / 0.1).softmax(-1).reshape(2, 4, 5, 6))


def test_crops_are_shifted_inside_the_image():
    pixels = np.arange(20 * 24 * 3, dtype=np.int64).reshape(20, 24, 3)  # a 5 x 6 grid of 4-px cells
    crop, y, x = patch_crop(pixels, 2, 3, stride=4, context=1)
    assert (y, x) == (4, 4) and np.array_equal(crop, pixels[4:16, 8:20])
    crop, y, x = patch_crop(pixels, 0, 5, stride=4, context=1)  # corner: the window moves in
    assert (y, x) == (0, 8) and np.array_equal(crop, pixels[0:12, 12:24])
    crop, y, x = patch_crop(pixels, 4, 0, stride=4, context=3)  # larger than the image: all of it
    assert (y, x) == (16, 0) and np.array_equal(crop, pixels)


def test_png_shows_each_crop_with_its_patch_outlined(tmp_path):
    rng = np.random.default_rng(0)
    images = {i: rng.integers(0, 200, (16, 16, 3), dtype=np.uint8) for i in (7, 9)}  # no outline colour in them
    top = TopPatches(prototypes=torch.tensor([11, 2]), scores=torch.tensor([[0.9, 0.5], [0.8, -float("inf")]]),
                     images=torch.tensor([[7, 9], [9, -1]]), rows=torch.tensor([[1, 3], [0, -1]]),
                     cols=torch.tensor([[2, 0], [0, -1]]), counts=torch.tensor([5, 3]), num_patches=32)
    path, layout = save_patterns(top, images.__getitem__, tmp_path / "p.png", stride=4, context=1, title="test")
    png = np.asarray(Image.open(path).convert("RGB"))
    assert png.shape[:2] == layout.size and (layout.rows, layout.cols) == (2, 2) and layout.label_w > 0
    zoom = layout.cell_h // 12  # 12-px crops (3 x 3 cells of 4 px) shown zoomed
    assert zoom == 8 and layout.cell_w == 96
    for (r, c), (index, (top_px, left_px), (y, x)) in {
        (0, 0): (7, (0, 4), (4, 4)),  # cell (1, 2): window from pixel (0, 4), the patch at (4, 4) in it
        (0, 1): (9, (4, 0), (8, 0)),  # cell (3, 0): window from (4, 0), the patch at (8, 0)
        (1, 0): (9, (0, 0), (0, 0)),
    }.items():
        t, l = layout.box(r, c)
        shown = png[t:t + 96, l:l + 96].astype(int)
        expected = np.kron(images[index][top_px:top_px + 12, left_px:left_px + 12], np.ones((zoom, zoom, 1)))
        inside = np.ones((96, 96), bool)
        inside[y * zoom:(y + 4) * zoom, x * zoom:(x + 4) * zoom] = False
        assert np.array_equal(shown[inside], expected[inside])  # the crop, pixel for pixel, around the patch
        assert (shown[y * zoom, x * zoom:(x + 4) * zoom] == OUTLINE).all()  # the patch's top edge is framed
        assert (shown[(y + 4) * zoom - 1, x * zoom:(x + 4) * zoom] == OUTLINE).all()
    t, l = layout.box(1, 1)
    assert (png[t:t + 96, l:l + 96] == 255).all()  # prototype 2 has one patch: the second slot stays empty


@pytest.mark.parametrize("preset, model", [("cpu", HEAD), ("swin_tiny_7", dict(embed_dim=24, **HEAD))])
def test_command_draws_one_row_per_prototype(preset, model, tmp_path, capsys):
    ckpt = tiny_checkpoint(tmp_path / "ckpt.safetensors", preset=preset, head=True, **model)
    out = tmp_path / "patterns.png"
    assert main(["visualize", "patterns", "-c", str(ckpt), "--data", "fashion-mnist:subset", "--max-images", "6",
                 "--batch-size", "4", "--num-workers", "0", "--prototypes", "3", "--top-k", "4", "--no-progress",
                 "--output", str(out)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("prototypes (argmax of how many of ") and line.endswith(f"-> {out}")
    patches = 6 * (49 if preset == "cpu" else 4)  # 28-px images, 4-px tokens; 64-px images, 32-px Swin tokens
    assert f"of {patches} patches)" in line and len(line.split("#")) == 4
    png = Image.open(out)
    crop = 12 if preset == "cpu" else 64  # 3 x 3 cells, or all of a 2 x 2 grid
    zoom = -(-96 // crop)
    assert png.height == 22 + 3 * (16 + crop * zoom + 6) + 6  # header, three rows


def test_command_with_prototype_ids_on_an_image_folder(tmp_path, capsys):
    ckpt = tiny_checkpoint(tmp_path / "ckpt.safetensors", head=True, **HEAD)
    folder = make_image_folder(tmp_path / "images", n_per_class=3, classes=2, size=30)
    out = tmp_path / "patterns.png"
    assert main(["visualize", "patterns", "-c", str(ckpt), "--data", str(folder), "--num-workers", "0",
                 "--prototype-ids", "31", "0", "--top-k", "2", "--no-progress", "--output", str(out)]) == 0
    line = capsys.readouterr().out
    assert "of 294 patches): #31 (" in line and "#0 (" in line  # 6 images of 7 x 7 tokens
    assert Image.open(out).height == 22 + 2 * (16 + 96 + 6) + 6


def test_command_errors_are_one_line(tmp_path, capsys):
    bare = tiny_checkpoint(tmp_path / "bare.safetensors")  # a teacher backbone, no head
    line = one_line_error(["visualize", "patterns", "-c", str(bare), "--data", "fashion-mnist:subset"], capsys)
    assert f"{bare} holds no 'teacher' head" in line and "'ibot visualize patterns' needs a full checkpoint" in line
    ckpt = tiny_checkpoint(tmp_path / "ckpt.safetensors", head=True, **HEAD)
    line = one_line_error(["visualize", "patterns", "-c", str(ckpt), "--data", "fashion-mnist:subset",
                           "--max-images", "2", "--num-workers", "0", "--prototype-ids", "3", "32"], capsys)
    assert "prototype ids [32] are out of range: the patch head has 32 prototypes (0 to 31)" in line
    line = one_line_error(["visualize", "patterns", "-c", str(ckpt), "--top-k", "0"], capsys)
    assert "--top-k must be at least 1, got 0" in line
    line = one_line_error(["visualize", "patterns", "-c", str(ckpt), "--temperature", "0"], capsys)
    assert "--temperature must be positive" in line
