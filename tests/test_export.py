"""ONNX export: metadata, checker, dynamic batch and parity with PyTorch (tiny models)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from ibot.config import resolve_config
from ibot.export import compare_with_onnx, export_checkpoint, export_onnx, load_exportable, output_shapes
from ibot.formats.ours import prefixed, save_checkpoint
from ibot.infer import Preprocess, read_model_info, read_tokens
from ibot.models import build_backbone
from ibot.models.tokens import TokenOutputs, patch_tokens
from tests.tiny import TINY_CROP_OVERRIDES, TINY_MODEL_OVERRIDES

TINY = [*TINY_MODEL_OVERRIDES, *TINY_CROP_OVERRIDES]


def write_tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    """One of our pre-training checkpoints holding a random 1-block ViT (patch 4, 16 px crops)."""
    from ibot.build import build_student_teacher

    cfg = resolve_config("cpu", overrides=TINY)
    torch.manual_seed(seed)
    student, teacher = build_student_teacher(cfg)
    with torch.no_grad():  # make the teacher differ from the student
        for p in teacher.parameters():
            p.add_(0.01 * torch.randn_like(p))
    tensors = {**prefixed("student.", student.state_dict()), **prefixed("teacher.", teacher.state_dict())}
    return save_checkpoint(path, tensors, {"epoch": 1, "step_in_epoch": 0, "config": cfg.to_dict()},
                           kind="pretrain")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "checkpoint.safetensors")


def _run(path: Path, images: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": images})[0]


def test_features_round_trip_dynamic_batch(tiny_checkpoint, tmp_path):
    report = export_checkpoint(tiny_checkpoint, tmp_path / "features.onnx")
    assert report["kind"] == "features" and report["max_abs_diff"] < 1e-4 and report["same_top1"]
    backbone = load_exportable(tiny_checkpoint).model
    rng = np.random.default_rng(1)
    for batch in (1, 3):
        images = rng.standard_normal((batch, 3, 16, 16)).astype(np.float32)
        with torch.no_grad():
            expected = backbone(torch.from_numpy(images)).numpy()
        got = _run(tmp_path / "features.onnx", images)
        assert got.shape == (batch, 32)
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_metadata_records_preprocessing_and_graph_is_valid(tiny_checkpoint, tmp_path):
    export_checkpoint(tiny_checkpoint, tmp_path / "m.onnx", crop_pct=0.5, verify=False)
    model = onnx.load(str(tmp_path / "m.onnx"))
    onnx.checker.check_model(model, full_check=True)
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param == "batch" and not batch_dim.HasField("dim_value")
    meta = {p.key: p.value for p in model.metadata_props}
    kind, spec, names = read_model_info(meta)
    assert kind == "features" and names is None
    assert spec == Preprocess(image_size=16, resize_size=32)  # floor(16 / 0.5), ImageNet mean / std
    assert json.loads(meta["ibot.source"])["key"] == "teacher"


def test_a_failed_export_leaves_the_previous_graph(tiny_checkpoint, tmp_path, monkeypatch):
    """The graph is written beside the target and renamed once checked: a failure keeps the old file."""
    target = tmp_path / "m.onnx"
    export_checkpoint(tiny_checkpoint, target, verify=False)
    before = target.read_bytes()

    def refuse(*args, **kwargs):
        raise onnx.checker.ValidationError("refused by the test")

    monkeypatch.setattr(onnx.checker, "check_model", refuse)
    with pytest.raises(onnx.checker.ValidationError, match="refused by the test"):
        export_checkpoint(tiny_checkpoint, target, verify=False)
    with pytest.raises(onnx.checker.ValidationError):
        export_checkpoint(tiny_checkpoint, tmp_path / "new.onnx", verify=False)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no new file, no temporary


def test_student_and_teacher_export_differently(tiny_checkpoint, tmp_path):
    export_checkpoint(tiny_checkpoint, tmp_path / "t.onnx", verify=False)
    export_checkpoint(tiny_checkpoint, tmp_path / "s.onnx", key="student", verify=False)
    images = np.random.default_rng(2).standard_normal((2, 3, 16, 16)).astype(np.float32)
    assert np.abs(_run(tmp_path / "t.onnx", images) - _run(tmp_path / "s.onnx", images)).max() > 1e-3


def test_other_image_size_interpolates_position_embedding(tiny_checkpoint, tmp_path):
    report = export_checkpoint(tiny_checkpoint, tmp_path / "m24.onnx", image_size=24)
    assert report["preprocess"]["image_size"] == 24 and report["max_abs_diff"] < 1e-4


def test_bad_options_are_one_line_errors(tiny_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="multiple of the patch size 4"):
        export_checkpoint(tiny_checkpoint, tmp_path / "m.onnx", image_size=18)
    with pytest.raises(ValueError, match=r"\.onnx"):
        export_checkpoint(tiny_checkpoint, tmp_path / "m.bin")
    with pytest.raises(ValueError, match="--kind"):
        load_exportable(tiny_checkpoint, kind="detector")
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_exportable(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="not an 'ibot finetune' checkpoint"):
        load_exportable(tiny_checkpoint, kind="classifier")


def test_swin_exports_with_dynamic_batch(tmp_path):
    torch.manual_seed(0)
    swin = build_backbone("swin_tiny", patch_size=4, window_size=2, img_size=32, embed_dim=16, depths=(1, 1),
                          num_heads=(1, 2)).eval()
    export_onnx(swin, tmp_path / "swin.onnx", Preprocess(image_size=32, resize_size=32))
    for batch in (1, 3):
        images = np.random.default_rng(batch).standard_normal((batch, 3, 32, 32)).astype(np.float32)
        diff, same_top1 = compare_with_onnx(swin, tmp_path / "swin.onnx", images)
        assert diff < 1e-4 and same_top1


@pytest.mark.parametrize("pool", ["cls", "grid"])
def test_classifier_from_a_finetune_checkpoint(tiny_checkpoint, tmp_path, pool):
    from ibot.cli import main
    from tests.train.helpers import make_image_folder

    data = tmp_path / "images"
    make_image_folder(data / "train", n_per_class=4, classes=3)
    make_image_folder(data / "val", n_per_class=2, classes=3, seed=1)
    out = tmp_path / "finetune"
    assert main(["finetune", "--checkpoint", str(tiny_checkpoint), "--data", str(data), "--epochs", "1",
                 "--batch-size", "4", "--num-workers", "0", "--mixup", "0", "--cutmix", "0", "--auto-augment", "none",
                 "--output-dir", str(out), "--no-progress", "--pool", pool]) == 0
    report = export_checkpoint(out / "checkpoint.safetensors", tmp_path / "classifier.onnx", kind="classifier")
    assert report["max_abs_diff"] < 1e-4 and report["same_top1"] and report["classes"] == 3
    model = onnx.load(str(tmp_path / "classifier.onnx"))
    kind, spec, names = read_model_info({p.key: p.value for p in model.metadata_props})
    assert kind == "classifier" and names == ["class0", "class1", "class2"] and spec.image_size == 16
    classifier = load_exportable(out / "checkpoint.safetensors", kind="classifier").model
    images = np.random.default_rng(3).standard_normal((3, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        expected = classifier(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(_run(tmp_path / "classifier.onnx", images), expected, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="fine-tuning checkpoint: export it with --kind classifier"):
        load_exportable(out / "checkpoint.safetensors")
    if pool == "grid":  # its classifier reads the 4 x 4 grid of the 16-px images it was fine-tuned on
        with pytest.raises(ValueError, match="4x4 patch grid"):
            export_checkpoint(out / "checkpoint.safetensors", tmp_path / "other.onnx", kind="classifier", image_size=24)


# ------------------------------------------------------------------------------ patch tokens
def _run_all(path: Path, images: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [out.name for out in session.get_outputs()]
    return dict(zip(names, session.run(None, {"images": images})))


@pytest.mark.parametrize("tokens", ["patch", "all"])
def test_patch_tokens_match_pytorch_with_dynamic_batch(tiny_checkpoint, tmp_path, tokens):
    report = export_checkpoint(tiny_checkpoint, tmp_path / "m.onnx", tokens=tokens)
    assert report["max_abs_diff"] < 1e-4 and report["same_top1"]
    assert report["tokens"] == tokens and report["grid"] == [4, 4]  # 16 px, patch 4
    names = TokenOutputs(torch.nn.Identity(), tokens).output_names
    assert list(report["outputs"]) == names and report["outputs"]["patch_tokens"] == ["batch", 4, 4, 32]
    backbone = load_exportable(tiny_checkpoint).model
    rng = np.random.default_rng(1)
    for batch in (1, 3):  # traced with a batch of 2
        images = rng.standard_normal((batch, 3, 16, 16)).astype(np.float32)
        got = _run_all(tmp_path / "m.onnx", images)
        assert list(got) == names and got["patch_tokens"].shape == (batch, 4, 4, 32)
        with torch.no_grad():
            x = torch.from_numpy(images)
            np.testing.assert_allclose(got["patch_tokens"], patch_tokens(backbone, x).numpy(), atol=1e-4, rtol=0)
            if tokens == "all":
                np.testing.assert_allclose(got["features"], backbone(x).numpy(), atol=1e-4, rtol=0)


def test_token_metadata_is_read_back(tiny_checkpoint, tmp_path):
    export_checkpoint(tiny_checkpoint, tmp_path / "p.onnx", tokens="patch", image_size=24, verify=False)
    export_checkpoint(tiny_checkpoint, tmp_path / "c.onnx", verify=False)
    for name, expected in (("p.onnx", ("patch", (6, 6))), ("c.onnx", ("cls", (4, 4)))):
        meta = {p.key: p.value for p in onnx.load(str(tmp_path / name)).metadata_props}
        assert read_tokens(meta) == expected
        assert json.loads(meta["ibot.grid"]) == list(expected[1]) and read_model_info(meta)[0] == "features"
    assert output_shapes(tmp_path / "p.onnx") == {"patch_tokens": ["batch", 6, 6, 32]}
    assert output_shapes(tmp_path / "c.onnx") == {"features": ["batch", 32]}


def test_compare_with_onnx_reads_every_output(tiny_checkpoint, tmp_path):
    export_checkpoint(tiny_checkpoint, tmp_path / "all.onnx", tokens="all", verify=False)
    backbone = load_exportable(tiny_checkpoint).model

    class ShiftedPatches(torch.nn.Module):  # right [CLS], patch tokens off by 1
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            cls, patches = TokenOutputs(backbone, "all")(x)
            return cls, patches + 1.0

    images = np.random.default_rng(4).standard_normal((2, 3, 16, 16)).astype(np.float32)
    diff, same_top1 = compare_with_onnx(ShiftedPatches(), tmp_path / "all.onnx", images)
    assert diff == pytest.approx(1.0, abs=1e-4) and same_top1
    with pytest.raises(ValueError, match="has 2 outputs, the PyTorch model 1"):
        compare_with_onnx(backbone, tmp_path / "all.onnx", images)


def test_tokens_other_than_cls_are_refused_for_a_classifier(tiny_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="--tokens patch needs --kind features") as caught:
        export_checkpoint(tiny_checkpoint, tmp_path / "m.onnx", kind="classifier", tokens="patch")
    assert "\n" not in str(caught.value)
    classifier = torch.nn.Sequential(build_backbone("vit_tiny", patch_size=4, img_size=16, depth=1, embed_dim=32,
                                                    num_heads=2), torch.nn.Linear(32, 3))
    with pytest.raises(ValueError, match="--tokens all needs --kind features"):
        export_onnx(classifier, tmp_path / "m.onnx", Preprocess(16, 16), kind="classifier", tokens="all")
    with pytest.raises(ValueError, match="--tokens must be one of cls, patch, all"):
        export_checkpoint(tiny_checkpoint, tmp_path / "m.onnx", tokens="dense")
    assert not (tmp_path / "m.onnx").exists()
