"""``ibot pretrain`` start-up: output folders, resuming with the saved config, checkpoint write errors."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import SafetensorError

from ibot.cli import main
from ibot.files import temporary_files
from ibot.formats import ours as ckpt
from tests.test_cli_errors import one_line_error
from tests.tiny import TINY_CROP_OVERRIDES, TINY_MODEL_OVERRIDES
from tests.train.helpers import make_image_folder

# 16 images, batch 4: 4 steps per epoch, 2 epochs
SCHEDULE = ["--batch-size-per-device", "4", "--epochs", "2", "optim.warmup_epochs=1",
            "loss.warmup_teacher_temp_epochs=1"]
QUIET = ["--no-progress", "--no-knn", "--no-tensorboard", "data.num_workers=0"]


@pytest.fixture
def folder(tmp_path) -> Path:
    return make_image_folder(tmp_path / "images")


def new_run(out: Path, folder: Path, *extra: str) -> list[str]:
    """Arguments of a tiny new run on ``folder``."""
    return ["pretrain", "--output-dir", str(out), "--data", str(folder), *QUIET, *TINY_MODEL_OVERRIDES,
            *TINY_CROP_OVERRIDES, *SCHEDULE, *extra]


def logged_steps(out: Path) -> list[int]:
    return [r["global_step"] for r in map(json.loads, (out / "log.jsonl").read_text().splitlines())
            if r["type"] == "step"]


def final_error(argv: list[str], capsys) -> str:
    """Run ``ibot argv`` that fails after it started: exit status 2, no traceback, one error line last."""
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("ibot: error: ") and not any("Traceback" in e for e in err), err
    assert sum(e.startswith("ibot: error: ") for e in err) == 1
    return err[-1]


def forbid_building(monkeypatch) -> None:
    """Make building the pre-training networks fail loudly: start-up checks must come first."""
    from ibot.train import trainer

    def refuse(*args, **kwargs):
        raise AssertionError("networks were built")

    monkeypatch.setattr(trainer, "build_student_teacher", refuse)


# --- a new run never replaces another ----------------------------------------------------------
def test_a_new_run_in_a_folder_holding_one_is_refused(tmp_path, folder, capsys, monkeypatch):
    out = tmp_path / "run"
    assert main(new_run(out, folder, "--max-steps", "1")) == 0
    before = {name: (out / name).read_bytes() for name in ("checkpoint.safetensors", "config.yaml", "log.jsonl")}
    capsys.readouterr()
    forbid_building(monkeypatch)
    line = one_line_error(new_run(out, folder, "--max-steps", "2", "optim.lr=1e-3"), capsys)
    assert f"{out} already holds a run" in line and "--resume auto" in line and "--overwrite" in line
    assert before == {name: (out / name).read_bytes() for name in before}


def test_overwrite_starts_afresh(tmp_path, folder, capsys):
    out = tmp_path / "run"
    assert main(new_run(out, folder, "--max-steps", "2")) == 0
    assert main(new_run(out, folder, "--max-steps", "1", "--overwrite")) == 0
    assert "--overwrite: removed the previous run's checkpoint.safetensors, config.yaml, log.jsonl" in \
        capsys.readouterr().err
    assert logged_steps(out) == [1]  # the old run's log is gone, not appended to
    assert ckpt.load_checkpoint(out / "checkpoint.safetensors")[1]["global_step"] == 1


def test_a_config_yaml_alone_marks_a_run(tmp_path, folder, capsys, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("optim: {lr: 0.001}\n")
    forbid_building(monkeypatch)
    line = one_line_error(new_run(out, folder, "--max-steps", "1"), capsys)
    assert f"{out} already holds a run (config.yaml)" in line


# --- resuming continues the run that was stopped ------------------------------------------------
def test_resume_takes_the_saved_config_and_max_steps_counts_in_total(tmp_path, folder, capsys):
    out = tmp_path / "run"
    assert main(new_run(out, folder, "--max-steps", "2")) == 0
    capsys.readouterr()
    # no --data, --preset or batch size: all from the run's checkpoint, not the cpu preset
    assert main(["pretrain", "--resume", "auto", "--output-dir", str(out), "--max-steps", "3"]) == 0
    err = capsys.readouterr().err
    assert f"resuming {out / 'checkpoint.safetensors'} (epoch 0, step 2) with overrides: run.max_steps=3 (was 2)" in err
    assert logged_steps(out) == [2, 3]
    _, meta = ckpt.load_checkpoint(out / "checkpoint.safetensors")
    assert meta["global_step"] == 3 and meta["config"]["data"]["data"] == str(folder)
    assert meta["config"]["optim"]["batch_size_per_device"] == 4 and meta["config"]["model"]["embed_dim"] == 32


def test_resume_at_max_steps_trains_nothing(tmp_path, folder, capsys):
    out = tmp_path / "run"
    assert main(new_run(out, folder, "--max-steps", "2")) == 0
    assert main(["pretrain", "--resume", "auto", "--output-dir", str(out)]) == 0
    assert "run.max_steps=2: nothing to train" in capsys.readouterr().err
    assert logged_steps(out) == [2]


def test_resume_refuses_options_that_change_the_run(tmp_path, folder, capsys, monkeypatch):
    out = tmp_path / "run"
    assert main(new_run(out, folder, "--max-steps", "1")) == 0
    capsys.readouterr()
    with monkeypatch.context() as patch:
        forbid_building(patch)
        line = one_line_error(["pretrain", "--resume", "auto", "--output-dir", str(out), "--batch-size-per-device",
                               "8", "--data", "fashion-mnist:subset", "optim.lr=1e-3"], capsys)
        assert "optim.batch_size_per_device=8 (was 4)" in line and "data.data=fashion-mnist:subset" in line
        assert "--allow-changes" in line and "optim.lr" not in line  # the lr does not change what the run is
        line = one_line_error(["pretrain", "--resume", "auto", "--output-dir", str(out), "--preset", "cpu"], capsys)
        assert "--preset and --config choose a new run's options" in line
    assert main(["pretrain", "--resume", "auto", "--output-dir", str(out), "--allow-changes",
                 "--batch-size-per-device", "8", "--max-steps", "3"]) == 0
    assert "optim.batch_size_per_device=8 (was 4)" in capsys.readouterr().err
    assert ckpt.load_checkpoint(out / "checkpoint.safetensors")[1]["config"]["optim"]["batch_size_per_device"] == 8


def test_resume_auto_before_the_first_checkpoint_restarts_the_saved_run(tmp_path, folder, capsys, monkeypatch):
    out = tmp_path / "run"
    assert main(new_run(out, folder, "--max-steps", "1", "--print-config")) == 0
    saved = capsys.readouterr().out
    out.mkdir()
    (out / "config.yaml").write_text(saved)  # as a run killed before its first checkpoint leaves it
    assert main(["pretrain", "--resume", "auto", "--output-dir", str(out), "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == yaml.safe_load(saved)
    forbid_building(monkeypatch)
    with pytest.raises(AssertionError, match="networks were built"):
        main(["pretrain", "--resume", "auto", "--output-dir", str(out)])
    assert f"restarting the run saved in {out / 'config.yaml'} from its first step" in capsys.readouterr().err


# --- checkpoints of another architecture --------------------------------------------------------
def test_resuming_another_architecture_names_both(tmp_path, folder, capsys, monkeypatch):
    out = tmp_path / "run"
    assert main(new_run(out, folder, "--max-steps", "1")) == 0
    capsys.readouterr()
    forbid_building(monkeypatch)
    line = one_line_error(["pretrain", "--resume", "auto", "--output-dir", str(out), "--allow-changes",
                           "model.embed_dim=64", "model.depth=2"], capsys)
    assert "holds a ViT with patch 4, width 32, depth 1" in line
    assert ("its saved config with your overrides builds model.arch=vit_tiny, a ViT with patch 4, width 64, "
            "depth 2") in line
    assert "Error(s) in loading state_dict" not in line


def official_full_checkpoint(ours: Path, path: Path) -> Path:
    """Our checkpoint in the layout of an official full ``checkpoint.pth``."""
    tensors, meta = ckpt.load_checkpoint(ours)
    student = {f"module.{k}": v for k, v in ckpt.strip_prefix("student.", tensors).items()}
    torch.save({"student": student, "teacher": ckpt.strip_prefix("teacher.", tensors),
                "ibot_loss": {"center": tensors["loss.center"], "center2": tensors["loss.center2"]},
                "epoch": 1, "args": argparse.Namespace(arch="vit_tiny", patch_size=4)}, path)
    return path


def test_resuming_an_official_checkpoint_of_another_architecture_names_both(tmp_path, folder, capsys):
    assert main(new_run(tmp_path / "ours", folder, "--max-steps", "1")) == 0
    official = official_full_checkpoint(tmp_path / "ours" / "checkpoint.safetensors", tmp_path / "checkpoint.pth")
    capsys.readouterr()
    # the config comes from the command line for official files: here the embed_dim 64 of a mistaken option
    line = final_error(new_run(tmp_path / "new", folder, "--resume", str(official), "model.embed_dim=64"), capsys)
    assert line.startswith(f"ibot: error: {official} holds a ViT with patch 4, width 32, depth 1")
    assert "this run's config builds model.arch=vit_tiny, a ViT with patch 4, width 64, depth 1" in line
    assert main(new_run(tmp_path / "same", folder, "--resume", str(official), "--max-steps", "5")) == 0
    assert f"resuming {official} with the config of the command line" in capsys.readouterr().err


def test_metadata_promising_a_huge_network_is_refused_before_building(tmp_path, folder, capsys, monkeypatch):
    out = tmp_path / "run"
    assert main(new_run(out, folder, "--max-steps", "1")) == 0
    tensors, meta = ckpt.load_checkpoint(out / "checkpoint.safetensors")
    meta["config"]["model"]["embed_dim"] = 1_000_000
    crafted = ckpt.save_checkpoint(tmp_path / "crafted" / "checkpoint.safetensors", tensors, meta, kind="pretrain")
    capsys.readouterr()
    forbid_building(monkeypatch)
    line = one_line_error(["pretrain", "--resume", str(crafted), "--batch-size-per-device", "4"], capsys)
    assert "width 32" in line and "width 1000000" in line and "out of memory" not in line


# --- write errors and leftovers -----------------------------------------------------------------
@pytest.mark.parametrize("error", [
    SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),  # safetensors'
    OSError(28, "No space left on device"),
])
def test_disk_full_while_checkpointing_is_one_line_and_keeps_the_last_checkpoint(tmp_path, folder, capsys,
                                                                                 monkeypatch, error):
    out = tmp_path / "run"
    assert main(new_run(out, folder, "--max-steps", "1")) == 0
    capsys.readouterr()

    def disk_full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a checkpoint")
        raise error

    monkeypatch.setattr(ckpt, "save_file", disk_full)
    line = final_error(["pretrain", "--resume", "auto", "--output-dir", str(out), "--max-steps", "2"], capsys)
    assert line == (f"ibot: error: cannot write checkpoint {out / 'checkpoint.safetensors'}: No space left on device; "
                    f"the previous checkpoint is intact; make room, then continue with: ibot pretrain --resume auto "
                    f"--output-dir {out}")
    assert ckpt.load_checkpoint(out / "checkpoint.safetensors")[1]["global_step"] == 1
    assert not temporary_files(out / "checkpoint.safetensors")


def test_unwritable_output_dir_is_one_line_before_building(tmp_path, folder, capsys, monkeypatch):
    forbid_building(monkeypatch)
    (tmp_path / "file").write_text("not a folder")
    line = one_line_error(new_run(tmp_path / "file" / "run", folder), capsys)
    assert f"--output-dir {tmp_path / 'file' / 'run'} is not writable" in line

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("tempfile.TemporaryFile", denied)
    line = one_line_error(new_run(tmp_path / "run", folder), capsys)
    assert line == f"ibot: error: --output-dir {tmp_path / 'run'} is not writable (Permission denied)"


def test_stale_temporary_checkpoints_are_removed_at_the_next_start(tmp_path, folder, capsys, monkeypatch):
    out = tmp_path / "run"
    assert main(new_run(out, folder, "--max-steps", "1")) == 0
    stale = out / ".checkpoint.safetensors.k1ll3d.tmp"  # a killed process's half-written checkpoint
    stale.write_bytes(b"partial")
    capsys.readouterr()
    forbid_building(monkeypatch)
    with pytest.raises(AssertionError, match="networks were built"):
        main(["pretrain", "--resume", "auto", "--output-dir", str(out)])
    assert not stale.exists() and (out / "checkpoint.safetensors").is_file()
    assert f"removed 1 temporary file(s) of an interrupted write in {out}: {stale.name}" in \
        capsys.readouterr().err
