"""Every error a user can cause is one line on stderr that says what to do, with exit status 2."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest
import torch

from ibot.cli import main, out_of_memory_message, shorten_lists
from ibot.commands import COMMANDS, load_all
from tests.visualize.helpers import noise_image, tiny_checkpoint

CPU_OOM = ("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to "
           "allocate 100000000000000 bytes. Error code 12 (Cannot allocate memory)")
GPU_OOM = ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.15 GiB of which 1.2 GiB "
           "is free.\nIncluding non-PyTorch memory, this process has 77.9 GiB memory in use.")


def one_line_error(argv: list[str], capsys) -> str:
    """Run ``ibot argv``; check exit status 2 and a single ``ibot: error:`` line, return it."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse errors exit from inside parsing
        code = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("ibot: error: "), err
    return err[0]


@pytest.fixture
def image(tmp_path) -> str:
    return str(noise_image(tmp_path / "img.png"))


# --- bad paths ---------------------------------------------------------------------------------
def test_missing_image(tmp_path, capsys):
    line = one_line_error(["visualize", "attention", str(tmp_path / "nope.png"), "-c", "x.safetensors"], capsys)
    assert f"image not found: {tmp_path / 'nope.png'}" in line


def test_missing_checkpoint(image, tmp_path, capsys):
    line = one_line_error(["visualize", "correspondence", image, image, "-c", str(tmp_path / "ck.safetensors")], capsys)
    assert f"checkpoint not found: {tmp_path / 'ck.safetensors'}" in line


def test_missing_run_folder_and_log(tmp_path, capsys):
    assert "run folder not found" in one_line_error(["plot", str(tmp_path / "none")], capsys)
    line = one_line_error(["plot", str(tmp_path)], capsys)
    assert "log.jsonl not found: give the --output-dir of an 'ibot pretrain' run" in line


def test_unreadable_image(tmp_path, capsys):
    (tmp_path / "fake.png").write_text("not an image")
    ckpt = tiny_checkpoint(tmp_path / "ck.safetensors")
    line = one_line_error(["visualize", "attention", str(tmp_path / "fake.png"), "-c", str(ckpt)], capsys)
    assert f"cannot decode image {tmp_path / 'fake.png'}" in line


# --- incompatible checkpoints ------------------------------------------------------------------
@pytest.mark.parametrize("name", ["text.safetensors", "text.pth"])
def test_text_file_as_checkpoint(name, image, tmp_path, capsys):
    (tmp_path / name).write_text("hello")
    line = one_line_error(["visualize", "attention", image, "-c", str(tmp_path / name), "--arch", "vit_small"],
                          capsys)
    assert f"{tmp_path / name} is not a readable" in line and "use one of our .safetensors" in line


def test_our_checkpoint_with_another_arch(image, tmp_path, capsys):
    ckpt = tiny_checkpoint(tmp_path / "ck.safetensors")
    line = one_line_error(["visualize", "attention", image, "-c", str(ckpt), "--arch", "vit_base"], capsys)
    assert "holds a vit_tiny/4 backbone, but --arch/--patch-size say vit_base/4" in line


def test_official_checkpoint_of_another_arch(image, capsys, fixtures_dir):
    path = fixtures_dir / "vit_checkpoint_teacher.pth"  # a depth-3 ViT: vit_small expects 12 blocks
    line = one_line_error(["visualize", "attention", image, "-c", str(path), "--arch", "vit_small"], capsys)
    assert "does not match VisionTransformer: missing keys" in line and "more)]" in line and len(line) < 600
    assert "official .pth file with its --arch" in line


def test_swin_attention_is_unsupported(image, tmp_path, capsys):
    ckpt = tiny_checkpoint(tmp_path / "swin.safetensors", preset="swin_tiny_7", embed_dim=24)
    line = one_line_error(["visualize", "attention", image, "-c", str(ckpt)], capsys)
    assert "attention maps need a ViT backbone; swin_tiny" in line and "use a ViT checkpoint" in line


# --- configuration -----------------------------------------------------------------------------
@pytest.mark.parametrize("command", [["pretrain", "--print-config"], ["visualize", "masks"]])
def test_unknown_preset(command, capsys):
    line = one_line_error([*command, "--preset", "vit_smal_16"], capsys)
    assert "unknown preset 'vit_smal_16'; choose one of" in line and "Did you mean 'vit_small_16'?" in line


def test_crop_size_not_divisible_by_the_patch_size(capsys):
    line = one_line_error(["pretrain", "--print-config", "data.global_crops_size=30"], capsys)
    assert "data.global_crops_size=30 is not divisible by the patch size 7; pick a multiple of 7" in line


def test_linear_crop_scale_out_of_range(tmp_path, capsys):
    line = one_line_error(["linear", "-c", str(tmp_path / "ck.safetensors"), "--protocol", "augmented",
                           "--min-crop-scale", "1.5"], capsys)
    assert "--min-crop-scale must be in (0, 1], got 1.5" in line


# --- out of memory -----------------------------------------------------------------------------
def raise_in(monkeypatch, name: str, error: BaseException) -> None:
    load_all()
    help_text, add_arguments, _ = COMMANDS[name]

    def run(args):
        raise error

    monkeypatch.setitem(COMMANDS, name, (help_text, add_arguments, run))


def test_gpu_out_of_memory_in_pretraining_suggests_a_smaller_batch(monkeypatch, capsys):
    raise_in(monkeypatch, "pretrain", torch.OutOfMemoryError(GPU_OOM))
    line = one_line_error(["pretrain", "--batch-size-per-device", "64"], capsys)
    assert line == ("ibot: error: out of memory on the GPU (tried to allocate 2.00 GiB): lower the batch per "
                    "device, e.g. --batch-size-per-device 32 (optim.batch_size_per_device=32)")


def test_cpu_out_of_memory_names_the_option(monkeypatch, capsys):
    raise_in(monkeypatch, "pretrain", RuntimeError(CPU_OOM))
    line = one_line_error(["pretrain"], capsys)
    assert "out of memory on the CPU (tried to allocate 93132.3 GiB)" in line
    assert "optim.batch_size_per_device=N" in line and "half the current value" in line
    raise_in(monkeypatch, "knn", RuntimeError(CPU_OOM))
    line = one_line_error(["knn", "-c", "x.safetensors", "--batch-size", "256"], capsys)
    assert "use a smaller --batch-size (now 256), e.g. --batch-size 128" in line


def test_other_errors_are_not_taken_for_out_of_memory():
    args = argparse.Namespace(batch_size=8)
    assert out_of_memory_message(RuntimeError("shape mismatch"), args) is None
    assert out_of_memory_message(MemoryError(), args).startswith("out of memory on the CPU: ")


# --- misspellings ------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, hint", [
    (["pretrian"], "invalid choice 'pretrian'; did you mean 'pretrain'?"),
    (["visualize", "atention"], "invalid choice 'atention'; did you mean 'attention'?"),
    (["pretrain", "--max-stpes", "3"], "unrecognized arguments: --max-stpes; did you mean '--max-steps'?"),
    (["plot", "run", "--outptu=x.png"], "did you mean '--output'?"),
    (["--versoin"], "did you mean '--version'?"),
    (["visualize", "attention", "a.png", "-c", "x", "--key", "teachr"], "did you mean 'teacher'?"),
    (["pretrain", "--print-config", "optim.lrr=1"], "Did you mean 'optim.lr'?"),
])
def test_misspellings_are_named_with_a_suggestion(argv, hint, capsys):
    assert hint in one_line_error(argv, capsys)


def test_argparse_errors_point_to_the_help(capsys):
    line = one_line_error(["visualize", "attention", "a.png"], capsys)
    assert "required: --checkpoint/-c (see 'ibot visualize attention --help')" in line


def test_long_lists_are_shortened():
    keys = [f"'blocks.{i}.weight'" for i in range(40)]
    text = shorten_lists(f"x does not match: missing keys [{', '.join(keys)}], unexpected keys []")
    assert text == "x does not match: missing keys ['blocks.0.weight', 'blocks.1.weight', 'blocks.2.weight', " \
                   "... (37 more)], unexpected keys []"


def test_help_groups_commands_and_shows_defaults():
    top = subprocess.run([sys.executable, "-m", "ibot.cli", "--help"], capture_output=True, text=True, check=True)
    assert "  evaluation\n    knn" in top.stdout and "  inspection\n    visualize" in top.stdout
    sub = subprocess.run([sys.executable, "-m", "ibot.cli", "visualize", "attention", "--help"], capture_output=True,
                         text=True, check=True)
    assert "(default: 0.6)" in sub.stdout and "(default: None)" not in sub.stdout
