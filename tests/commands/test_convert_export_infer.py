"""``ibot convert``, ``ibot export`` and ``ibot infer`` from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ibot import hub
from ibot.build import build_student_teacher
from ibot.cli import main
from ibot.config import config_from_dict
from ibot.eval.checkpoints import load_backbone
from ibot.formats.official import safe_torch_load
from ibot.formats.ours import load_checkpoint, strip_prefix
from tests.test_export import write_tiny_checkpoint



@pytest.fixture
def vit_options(official_vit) -> list[str]:
    """``--arch vit_tiny`` with the fixtures' sizes (a small ViT/16)."""
    return ["--arch", "vit_tiny", *(f"--{key.replace('_', '-')}={value}" for key, value in official_vit.items())]


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ibot: error:"), err
    return err[0]


# ------------------------------------------------------------------------------ convert
def test_convert_full_checkpoint_keeps_both_networks_and_centres(fixtures_dir, tmp_path, vit_options, official_arch,
                                                                  official_vit):
    src = fixtures_dir / "vit_full_checkpoint.pth"
    out = tmp_path / "converted.safetensors"
    assert main(["convert", str(src), "-o", str(out), *vit_options]) == 0
    reference = torch.load(fixtures_dir / "vit_reference_outputs.pt", weights_only=True)
    x = reference["x_global"]
    for key in ("teacher", "student"):
        ours = load_backbone(out, key=key)
        official = hub.backbone_from_file(src, "vit_tiny", official_arch["patch_size"], key=key, **official_vit)
        with torch.no_grad():
            got = ours.backbone(x, return_all_tokens=True)
            torch.testing.assert_close(got, official(x, return_all_tokens=True), atol=0, rtol=0)
    with torch.no_grad():  # and the official teacher's outputs, as the parity tests of ibot.hub
        torch.testing.assert_close(load_backbone(out).backbone(x, return_all_tokens=True),
                                   reference["tokens_global"], atol=1e-5, rtol=0)

    tensors, meta = load_checkpoint(out)
    raw = safe_torch_load(src)
    torch.testing.assert_close(tensors["loss.center"], raw["ibot_loss"]["center"], atol=0, rtol=0)
    torch.testing.assert_close(tensors["loss.center2"], raw["ibot_loss"]["center2"], atol=0, rtol=0)
    torch.testing.assert_close(tensors["teacher.head.last_layer.weight_g"], raw["teacher"]["head.last_layer.weight_g"])
    assert "student.backbone.masked_embed" in tensors and "teacher.backbone.masked_embed" not in tensors
    assert meta["epoch"] == raw["epoch"] and meta["step_in_epoch"] == 0
    assert meta["kind"] == "pretrain"
    cfg = config_from_dict(meta["config"])
    a = official_arch
    assert (cfg.model.arch, cfg.model.patch_size, cfg.model.img_size) == ("vit_tiny", a["patch_size"], a["img_size"])
    assert {key: getattr(cfg.model, key) for key in official_vit} == official_vit
    assert (cfg.model.out_dim, cfg.model.patch_out_dim) == (a["out_dim"], a["patch_out_dim"])
    assert (cfg.model.head_hidden_dim, cfg.model.head_bottleneck_dim) == (a["hidden_dim"], a["bottleneck_dim"])
    assert cfg.model.shared_head is True and cfg.model.norm_last_layer is False
    args = raw["args"]  # the official Namespace
    assert (cfg.optim.epochs, cfg.loss.teacher_temp, cfg.mask.pred_start_epoch) == (
        args.epochs, args.teacher_temp, args.pred_start_epoch)
    assert cfg.data.local_crops_number == args.local_crops_number
    student, teacher = build_student_teacher(cfg)  # what pre-training builds from that config
    student.load_state_dict(strip_prefix("student.", tensors))
    teacher.load_state_dict(strip_prefix("teacher.", tensors))


def test_convert_backbone_only_file(fixtures_dir, tmp_path, vit_options):
    out = tmp_path / "backbone.safetensors"
    assert main(["convert", str(fixtures_dir / "vit_checkpoint_teacher.pth"), "-o", str(out), *vit_options]) == 0
    tensors, meta = load_checkpoint(out)
    assert tensors and all(k.startswith("teacher.backbone.") for k in tensors)
    reference = torch.load(fixtures_dir / "vit_reference_outputs.pt", weights_only=True)
    with torch.no_grad():
        got = load_backbone(out).backbone(reference["x_local"], return_all_tokens=True)
    torch.testing.assert_close(got, reference["tokens_local"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("extra, message", [
    ([], "--arch"),  # the fixture's args say 'vit_custom'
    (["--arch", "vit_tiny"], "missing keys (108) ['blocks.10."),  # 12 blocks expected, 3 in the file
    (["--arch", "vit_small", "--depth", "3"], "does not fit"),  # 384 wide, the file 64
])
def test_convert_mismatch_is_one_line_error(fixtures_dir, tmp_path, capsys, extra, message):
    src = fixtures_dir / "vit_full_checkpoint.pth"
    assert main(["convert", str(src), "-o", str(tmp_path / "x.safetensors"), *extra]) == 2
    assert message in _one_error_line(capsys)
    assert not (tmp_path / "x.safetensors").exists()


def test_convert_refuses_a_pickle_that_runs_code(tmp_path, capsys):
    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    bad = tmp_path / "evil.pth"
    torch.save({"state_dict": {"cls_token": torch.zeros(1)}, "payload": Evil()}, bad)
    assert main(["convert", str(bad), "-o", str(tmp_path / "x.safetensors"), "--arch", "vit_tiny"]) == 2
    assert "refusing to load" in _one_error_line(capsys)
    assert "this must never run" not in capsys.readouterr().out


# ------------------------------------------------------------------------------ export + infer
def test_export_then_infer_on_real_files(tmp_path, capsys):
    checkpoint = write_tiny_checkpoint(tmp_path / "run" / "checkpoint.safetensors")
    model = tmp_path / "model.onnx"
    assert main(["export", "-c", str(checkpoint), "-o", str(model)]) == 0
    assert "max |diff|" in capsys.readouterr().out

    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(rng.integers(0, 256, (31, 47, 3), dtype=np.uint8)).save(images / "rgb.jpg")
    Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8), mode="L").save(images / "gray.png")
    Image.fromarray(rng.integers(0, 256, (64, 20, 4), dtype=np.uint8), mode="RGBA").save(images / "rgba.png")
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(30))
    out = tmp_path / "out" / "features.npy"
    assert main(["infer", str(model), str(images), "-o", str(out), "--batch-size", "2", "--no-progress"]) == 0
    captured = capsys.readouterr()
    skipped = [line for line in captured.err.splitlines() if "skipped" in line]
    assert len(skipped) == 1 and "broken.jpg" in skipped[0]
    assert "3 images" in captured.out and "skipped 1" in captured.out
    features = np.load(out)
    index = json.loads(out.with_suffix(".json").read_text())
    assert features.shape == (3, 32) and [Path(f).name for f in index["files"]] == ["gray.png", "rgb.jpg", "rgba.png"]


def test_export_all_tokens_then_infer_writes_both(tmp_path, capsys):
    checkpoint = write_tiny_checkpoint(tmp_path / "run" / "checkpoint.safetensors")
    model = tmp_path / "model.onnx"
    assert main(["export", "-c", str(checkpoint), "-o", str(model), "--tokens", "all", "--no-verify"]) == 0
    out = capsys.readouterr().out
    assert "outputs features (batch, 32), patch_tokens (batch, 4, 4, 32)" in out and "token grid 4x4" in out
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(images / f"{i}.png")
    out = tmp_path / "out" / "f.npy"
    assert main(["infer", str(model), str(images), "-o", str(out), "--no-progress"]) == 0
    assert "f_patch.npy" in capsys.readouterr().out
    assert np.load(out).shape == (3, 32) and np.load(tmp_path / "out" / "f_patch.npy").shape == (3, 4, 4, 32)
    assert json.loads(out.with_suffix(".json").read_text())["patch_file"] == "f_patch.npy"


def test_export_classifier_with_patch_tokens_is_one_line_error(tmp_path, capsys):
    checkpoint = write_tiny_checkpoint(tmp_path / "checkpoint.safetensors")
    argv = ["export", "-c", str(checkpoint), "-o", str(tmp_path / "m.onnx"), "--kind", "classifier", "--tokens", "patch"]
    assert main(argv) == 2
    assert "--tokens patch needs --kind features" in _one_error_line(capsys)


@pytest.mark.parametrize("argv, message", [
    (["convert", "{tmp}/missing.pth", "-o", "{tmp}/out.safetensors", "--arch", "vit_small"], "missing.pth"),
    (["convert", "{tmp}/model.onnx", "-o", "{tmp}/out.pth"], "out.pth must end in .safetensors"),
    (["export", "-c", "{tmp}/missing.safetensors", "-o", "{tmp}/out.onnx"], "missing.safetensors"),
    (["infer", "{tmp}/missing.onnx", "{tmp}/image.png"], "missing.onnx"),
    (["infer", "{tmp}/model.onnx", "{tmp}/no_images"], "no_images"),
])
def test_missing_files_are_one_line_errors(argv, message, tmp_path, capsys):
    (tmp_path / "model.onnx").write_bytes(b"not a model")
    Image.new("RGB", (8, 8)).save(tmp_path / "image.png")
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    assert message in _one_error_line(capsys)
