"""onnxruntime inference: torch-free preprocessing, image modes, corrupt files, outputs."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ibot.data.transforms import eval_transform
from ibot.export import export_onnx
from ibot.image_io import load_rgb
from ibot.infer import (Preprocess, find_images, preprocess, read_model_info, read_tokens, run_inference, top_k,
                        write_results)
from ibot.models import build_backbone
from ibot.models.tokens import patch_tokens

CLASSES = ["cat", "dog", "bird"]


class _Classifier(torch.nn.Module):
    def __init__(self, backbone: torch.nn.Module, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = torch.nn.Linear(backbone.embed_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    """A tiny features model and a tiny 3-class classifier, exported at 16 px (resize 18)."""
    out = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(0)
    backbone = build_backbone("vit_tiny", patch_size=4, img_size=16, depth=1, embed_dim=32, num_heads=2).eval()
    classifier = _Classifier(backbone, len(CLASSES)).eval()
    spec = Preprocess(image_size=16, resize_size=18)
    export_onnx(backbone, out / "features.onnx", spec)
    export_onnx(classifier, out / "classifier.onnx", spec, kind="classifier", class_names=CLASSES)
    for tokens in ("patch", "all"):
        export_onnx(backbone, out / f"{tokens}.onnx", spec, tokens=tokens)
    return {"features": (backbone, out / "features.onnx"), "classifier": (classifier, out / "classifier.onnx"),
            "patch": (backbone, out / "patch.onnx"), "all": (backbone, out / "all.onnx"), "spec": spec}


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """Real files in several sizes and modes, one in a sub-folder, one corrupt, one non-image."""
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(root / "rgb.png")
    Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8), mode="L").save(root / "gray.jpg")
    Image.fromarray(rng.integers(0, 256, (17, 50, 4), dtype=np.uint8), mode="RGBA").save(root / "sub" / "rgba.png")
    Image.fromarray(rng.integers(0, 256, (25, 25, 3), dtype=np.uint8)).convert("P").save(root / "palette.gif")
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    (root / "notes.txt").write_text("not an image")
    return root


# ------------------------------------------------------------------------------ preprocessing
@pytest.mark.parametrize("size, crop_pct", [((40, 30), 0.875), ((30, 57), 1.0), ((16, 16), 0.875), ((9, 12), 0.5)])
def test_preprocess_matches_the_pytorch_evaluation_transform(size, crop_pct):
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (*size[::-1], 3), dtype=np.uint8))
    spec = Preprocess(image_size=16, resize_size=math.floor(16 / crop_pct))
    expected = eval_transform(16, crop_pct=crop_pct)(image).numpy()
    got = preprocess(image, spec)
    assert got.shape == (3, 16, 16) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_find_images(image_folder):
    names = [p.relative_to(image_folder).as_posix() for p in find_images(image_folder)]
    assert names == ["corrupt.png", "gray.jpg", "palette.gif", "rgb.png", "sub/rgba.png"]
    assert find_images(image_folder / "rgb.png") == [image_folder / "rgb.png"]
    with pytest.raises(FileNotFoundError, match="nowhere"):
        find_images(image_folder / "nowhere")
    (image_folder / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no image files"):
        find_images(image_folder / "empty")


# ------------------------------------------------------------------------------ inference
def test_folder_inference_skips_corrupt_and_matches_pytorch(models, image_folder):
    backbone, path = models["features"]
    reported = []
    result = run_inference(path, image_folder, batch_size=3, progress=False, on_skip=lambda f, why: reported.append(f))
    assert [Path(f).name for f in result.files] == ["gray.jpg", "palette.gif", "rgb.png", "rgba.png"]
    assert [Path(f).name for f, _ in result.skipped] == ["corrupt.png"] and reported == [result.skipped[0][0]]
    assert result.kind == "features" and result.outputs.shape == (4, 32)
    batch = torch.from_numpy(np.stack([preprocess(load_rgb(f), models["spec"]) for f in result.files]))
    with torch.no_grad():
        expected = backbone(batch).numpy()
    np.testing.assert_allclose(result.outputs, expected, atol=1e-4, rtol=0)
    single = run_inference(path, image_folder / "sub" / "rgba.png", batch_size=1, progress=False)
    np.testing.assert_allclose(single.outputs, result.outputs[3:], atol=1e-5, rtol=0)


def test_all_unreadable_is_an_error(models, tmp_path):
    (tmp_path / "a.png").write_bytes(b"junk")
    with pytest.raises(ValueError, match="no readable image"):
        run_inference(models["features"][1], tmp_path, progress=False)


def test_model_without_metadata_is_refused(tmp_path):
    with pytest.raises(ValueError, match="ibot export"):
        read_model_info({}, tmp_path / "foreign.onnx")


def test_features_written_as_npy_with_index(models, image_folder, tmp_path):
    result = run_inference(models["features"][1], image_folder, progress=False)
    written = write_results(result, tmp_path / "out" / "features.npy")
    assert [p.name for p in written] == ["features.npy", "features.json"]
    np.testing.assert_array_equal(np.load(written[0]), result.outputs)
    index = json.loads(written[1].read_text())
    assert index["files"] == result.files and index["skipped"][0]["file"].endswith("corrupt.png")
    with pytest.raises(ValueError, match="writes .npy"):
        write_results(result, tmp_path / "features.csv")
    with pytest.raises(ValueError, match=".npy, .json or .csv"):
        write_results(result, tmp_path / "features.txt")


@pytest.mark.parametrize("name", ["features.npy", "p.csv"])
def test_a_failed_write_leaves_the_previous_results(models, image_folder, tmp_path, monkeypatch, name):
    """Results are written beside the target and renamed when complete: an error after part of the
    file is out (a full disk) keeps the previous file, and no temporary file is left."""
    import ibot.infer

    kind = "features" if name.endswith(".npy") else "classifier"
    result = run_inference(models[kind][1], image_folder, progress=False)
    written = write_results(result, tmp_path / "out" / name)
    before = {p: p.read_bytes() for p in written}

    def part_then_fail(handle, *args, **kwargs):
        if isinstance(handle, (str, Path)):  # np.save given a name
            Path(handle).write_bytes(b"partial")
        else:
            handle.write(b"partial" if kind == "features" else "partial")
        raise OSError("No space left on device")

    if kind == "features":
        monkeypatch.setattr(ibot.infer.np, "save", part_then_fail)
    else:
        monkeypatch.setattr(ibot.infer.csv, "writer", part_then_fail)
    with pytest.raises(OSError, match="No space left"):
        write_results(result, tmp_path / "out" / name)
    assert {p: p.read_bytes() for p in written} == before
    assert sorted((tmp_path / "out").iterdir()) == sorted(written)


def _expected_patches(backbone: torch.nn.Module, files: list[str], spec: Preprocess) -> np.ndarray:
    batch = torch.from_numpy(np.stack([preprocess(load_rgb(f), spec) for f in files]))
    with torch.no_grad():
        return patch_tokens(backbone, batch).numpy()


def test_patch_tokens_written_as_npy(models, image_folder, tmp_path):
    backbone, path = models["patch"]
    result = run_inference(path, image_folder, batch_size=3, progress=False)
    assert (result.tokens, result.grid) == ("patch", (4, 4)) and result.outputs.shape == (4, 4, 4, 32)
    np.testing.assert_allclose(result.patch_outputs, _expected_patches(backbone, result.files, models["spec"]),
                               atol=1e-4, rtol=0)
    written = write_results(result, tmp_path / "tokens.npy")
    assert [p.name for p in written] == ["tokens.npy", "tokens.json"]
    np.testing.assert_array_equal(np.load(written[0]), result.patch_outputs)
    index = json.loads(written[1].read_text())
    assert (index["tokens"], index["grid"], index["shape"]) == ("patch", [4, 4], [4, 4, 4, 32])
    assert "patch_file" not in index and index["files"] == result.files


def test_cls_and_patch_tokens_written_side_by_side(models, image_folder, tmp_path):
    backbone, path = models["all"]
    result = run_inference(path, image_folder, batch_size=3, progress=False)
    cls_only = run_inference(models["features"][1], image_folder, progress=False)
    assert (result.tokens, result.grid) == ("all", (4, 4))
    np.testing.assert_allclose(result.outputs, cls_only.outputs, atol=1e-5, rtol=0)
    np.testing.assert_allclose(result.patch_outputs, _expected_patches(backbone, result.files, models["spec"]),
                               atol=1e-4, rtol=0)
    written = write_results(result, tmp_path / "out" / "features.npy")
    assert [p.name for p in written] == ["features.npy", "features_patch.npy", "features.json"]
    assert np.load(written[0]).shape == (4, 32) and np.load(written[1]).shape == (4, 4, 4, 32)
    np.testing.assert_array_equal(np.load(written[1]), result.patch_outputs)
    index = json.loads(written[2].read_text())
    assert (index["tokens"], index["grid"], index["patch_file"]) == ("all", [4, 4], "features_patch.npy")
    assert index["shape"] == [4, 32] and index["patch_shape"] == [4, 4, 4, 32]


def test_model_exported_before_tokens_reads_as_cls(models, image_folder, tmp_path):
    import onnx

    model = onnx.load(str(models["features"][1]))
    kept = {p.key: p.value for p in model.metadata_props if p.key not in ("ibot.tokens", "ibot.grid")}
    assert len(kept) == len(model.metadata_props) - 2  # the new export does write both
    onnx.helper.set_model_props(model, kept)
    onnx.save(model, str(tmp_path / "old.onnx"))
    assert read_tokens(kept) == ("cls", None) and read_model_info(kept)[0] == "features"
    result = run_inference(tmp_path / "old.onnx", image_folder, progress=False)
    assert (result.tokens, result.grid, result.patch_outputs) == ("cls", None, None)
    assert result.outputs.shape == (4, 32)
    written = write_results(result, tmp_path / "old.npy")
    index = json.loads(written[1].read_text())
    assert len(written) == 2 and (index["tokens"], index["grid"]) == ("cls", None)


def test_bad_token_metadata_is_refused():
    with pytest.raises(ValueError, match="unknown tokens 'dense'"):
        read_tokens({"ibot.tokens": "dense"}, "m.onnx")
    with pytest.raises(ValueError, match="unreadable token grid"):
        read_tokens({"ibot.tokens": "patch", "ibot.grid": "[4]"}, "m.onnx")


def test_classifier_top5_as_json_and_csv(models, image_folder, tmp_path):
    classifier, path = models["classifier"]
    result = run_inference(path, image_folder, progress=False)
    assert result.kind == "classifier" and result.class_names == CLASSES
    rows = json.loads(write_results(result, tmp_path / "p.json")[0].read_text())["predictions"]
    batch = torch.from_numpy(np.stack([preprocess(load_rgb(f), models["spec"]) for f in result.files]))
    with torch.no_grad():
        probs = classifier(batch).softmax(dim=1).numpy()
    for row, p in zip(rows, probs):
        assert len(row["top5"]) == 3  # min(5, number of classes)
        assert [c["index"] for c in row["top5"]] == list(np.argsort(-p))
        assert row["top5"][0]["class"] == CLASSES[int(p.argmax())]
        assert row["top5"][0]["probability"] == pytest.approx(float(p.max()), abs=1e-5)
    with (write_results(result, tmp_path / "p.csv")[0]).open() as handle:
        table = list(csv.reader(handle))
    assert table[0] == ["file", "class_1", "probability_1", "class_2", "probability_2", "class_3", "probability_3"]
    assert [r[1] for r in table[1:]] == [r["top5"][0]["class"] for r in rows]


def test_top_k_orders_probabilities():
    logits = np.array([[0.0, 3.0, 1.0, 2.0, -1.0, 5.0, 4.0]], dtype=np.float32)
    probs, index = top_k(logits)
    assert index.tolist() == [[5, 6, 1, 3, 2]]
    assert np.all(np.diff(probs[0]) < 0) and probs.sum() < 1


def test_inference_does_not_import_torch(models, image_folder, tmp_path):
    import subprocess
    import sys

    code = ("import sys; from ibot.infer import run_inference, write_results; "
            f"r = run_inference({str(models['classifier'][1])!r}, {str(image_folder)!r}, progress=False); "
            f"write_results(r, {str(tmp_path / 'p.csv')!r}); assert 'torch' not in sys.modules, 'torch imported'")
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, capture_output=True, text=True)
