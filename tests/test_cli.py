"""The ``ibot`` command: a smoke run on the embedded data and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ibot.cli import main
from tests.tiny import TINY_CROP_OVERRIDES, TINY_MODEL_OVERRIDES
from tests.train.helpers import make_image_folder

TINY = [*TINY_MODEL_OVERRIDES, "data.num_workers=0"]


def test_pretrain_smoke_on_embedded_data(tmp_path, monkeypatch):
    monkeypatch.setenv("IBOT_FASHION_MNIST", "subset")
    out = tmp_path / "run"
    code = main(["pretrain", "--preset", "cpu", "--output-dir", str(out), "--max-steps", "2",
                 "--batch-size-per-device", "16", "--no-progress", *TINY])
    assert code == 0
    assert (out / "checkpoint.safetensors").is_file() and (out / "config.yaml").is_file()
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["type"] == "step"] == [2]


def test_pretrain_without_a_val_split_trains_and_says_it_skips_the_knn_checks(tmp_path, capsys):
    """A tree of class folders has no val split: pre-training says so before its first step, then
    trains without the k-NN checks instead of scoring its own training images."""
    images = make_image_folder(tmp_path / "images")
    out = tmp_path / "run"
    code = main(["pretrain", "--preset", "cpu", "--data", str(images), "--output-dir", str(out), "--epochs", "1",
                 "--batch-size-per-device", "8", "--eval-every", "1", "--no-progress", "optim.warmup_epochs=0",
                 "loss.warmup_teacher_temp_epochs=0", *TINY, *TINY_CROP_OVERRIDES])
    assert code == 0
    err = capsys.readouterr().err
    assert f"ibot pretrain: no k-NN check (end of run, --eval-every) without a labelled val split: {images}" in err
    assert err.index("no k-NN check") < err.index("iBOT pre-training:")  # before the first step
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["type"] == "epoch"] == [0] and "knn_top1" not in records[-1]
    assert not (out / "knn.json").exists()


def test_print_config_applies_overrides(capsys):
    assert main(["pretrain", "--preset", "vit_small_16", "--print-config", "optim.lr=0.001", "--epochs", "3",
                 "loss.warmup_teacher_temp_epochs=1", "optim.warmup_epochs=1"]) == 0
    text = capsys.readouterr().out
    assert "lr: 0.001" in text and "epochs: 3" in text and "arch: vit_small" in text


@pytest.mark.parametrize("argv, message", [
    (["pretrain", "--preset", "vit_smal_16", "--print-config"], "Did you mean 'vit_small_16'"),
    (["pretrain", "--print-config", "optim.lrr=1"], "Did you mean 'optim.lr'"),
    (["pretrain", "--data", "/nonexistent/folder", "--max-steps", "1"], "/nonexistent/folder"),
    (["pretrain", "--resume", "/nonexistent/ckpt.safetensors"], "/nonexistent/ckpt.safetensors"),
])
def test_user_errors_are_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ibot: error:") and message in err[0]


def test_console_script_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "ibot.cli", "--help"], capture_output=True, text=True, check=True)
    assert "pretrain" in out.stdout
