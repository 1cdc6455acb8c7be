"""A new run that starts from a checkpoint's weights (``run.init_from``): epoch 0, fresh optimiser
and loss centres, the file's networks (ours, official full, official teacher-only)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ibot.formats import ours as ckpt
from ibot.hub import network_state
from ibot.train.init_from import read_init_weights
from ibot.train.trainer import Pretrainer
from tests.train.helpers import tiny_config


def assert_network_equals(network: torch.nn.Module, backbone: dict, head: dict) -> None:
    state = network.state_dict()
    for prefix, part in (("backbone.", backbone), ("head.", head)):
        for key, value in part.items():
            torch.testing.assert_close(state[prefix + key], value, rtol=0, atol=0)


def official_config(tmp_path: Path, image_folder: Path, arch: dict, *extra: str):
    """A tiny run of the official fixtures' sizes."""
    sizes = [f"model.{key}={arch[key]}" for key in ("patch_size", "img_size", "embed_dim", "depth", "num_heads",
                                                     "out_dim", "patch_out_dim")]
    return tiny_config(tmp_path, image_folder, *sizes, f"model.head_hidden_dim={arch['hidden_dim']}",
                       f"model.head_bottleneck_dim={arch['bottleneck_dim']}", "data.global_crops_size=32",
                       "data.local_crops_size=16", "run.max_steps=1", *extra)


def test_a_run_started_from_our_checkpoint_is_a_new_run_with_its_weights(tmp_path, image_folder):
    Pretrainer(tiny_config(tmp_path / "first", image_folder, "run.max_steps=3")).fit()
    source = tmp_path / "first" / "checkpoint.safetensors"
    cfg = tiny_config(tmp_path / "second", image_folder, "run.max_steps=1", f"run.init_from={source}")
    trainer = Pretrainer(cfg)
    lines = trainer.init_weights(cfg.run.init_from)
    assert lines == [f"starting from the weights of {source} (student <- its student, teacher <- its teacher: "
                     f"backbones and heads) at epoch 0, with a fresh optimiser, schedules and loss centres"]
    tensors, _ = ckpt.load_checkpoint(source)
    for name, network in (("student", trainer.student), ("teacher", trainer.teacher)):
        assert_network_equals(network, ckpt.strip_prefix(f"{name}.backbone.", tensors),
                              ckpt.strip_prefix(f"{name}.head.", tensors))
    assert not trainer.optimizer.state and not trainer.ibot_loss.center.any()  # fresh, not the file's
    records = trainer.fit()
    assert [(r["epoch"], r["step"], r["global_step"]) for r in records if r["type"] == "step"] == [(0, 1, 1)]
    assert [r["lr"] for r in records if r["type"] == "step"] == [pytest.approx(float(trainer.lr_schedule[0]))]
    _, meta = ckpt.load_checkpoint(tmp_path / "second" / "checkpoint.safetensors")
    assert (meta["epoch"], meta["global_step"]) == (0, 1) and meta["config"]["run"]["init_from"] == str(source)


def test_official_full_checkpoint_starts_both_networks(tmp_path, image_folder, fixtures_dir, official_arch):
    official = fixtures_dir / "vit_full_checkpoint.pth"
    trainer = Pretrainer(official_config(tmp_path, image_folder, official_arch))
    assert len(trainer.init_weights(official)) == 1  # no head left at random init
    for name, network in (("student", trainer.student), ("teacher", trainer.teacher)):
        assert_network_equals(network, *network_state(official, key=name))
    assert [r["epoch"] for r in trainer.fit() if r["type"] == "step"] == [0]  # not the official epoch


def test_official_teacher_only_file_starts_both_backbones_and_random_heads(tmp_path, image_folder, fixtures_dir,
                                                                           official_arch):
    teacher_only = fixtures_dir / "vit_checkpoint_teacher.pth"
    trainer = Pretrainer(official_config(tmp_path, image_folder, official_arch))
    heads = {k: v.clone() for k, v in trainer.student.head.state_dict().items()}
    lines = trainer.init_weights(teacher_only)
    assert "student <- its backbone, teacher <- its backbone: backbones)" in lines[0]
    assert lines[1:] == [f"{teacher_only}: the student and teacher heads start at random init: the file holds "
                         f"backbone weights only"]
    backbone, _ = network_state(teacher_only)
    for network in (trainer.student, trainer.teacher):
        assert_network_equals(network, backbone, heads)
    assert not trainer.student.backbone.masked_embed.any()  # the teacher has no mask token: it stays zero
    assert [r["global_step"] for r in trainer.fit() if r["type"] == "step"] == [1]


def test_a_head_of_other_sizes_starts_at_random_init(tmp_path, image_folder):
    Pretrainer(tiny_config(tmp_path / "first", image_folder, "run.max_steps=1")).fit()
    source = tmp_path / "first" / "checkpoint.safetensors"
    trainer = Pretrainer(tiny_config(tmp_path / "second", image_folder, "model.out_dim=32", "model.patch_out_dim=32"))
    heads = {k: v.clone() for k, v in trainer.student.head.state_dict().items()}
    lines = trainer.init_weights(source)
    assert lines[1:] == [f"{source}: the student and teacher heads start at random init: they do not fit this "
                         f"run's config: model.out_dim=32 (file: 64), model.patch_out_dim=32 (file: 64)"]
    tensors, _ = ckpt.load_checkpoint(source)
    assert_network_equals(trainer.student, ckpt.strip_prefix("student.backbone.", tensors), heads)


def test_another_architecture_is_refused_in_one_line(tmp_path, image_folder):
    Pretrainer(tiny_config(tmp_path / "first", image_folder, "run.max_steps=1")).fit()
    source = tmp_path / "first" / "checkpoint.safetensors"
    wider = Pretrainer(tiny_config(tmp_path / "wider", image_folder, "model.embed_dim=64"))
    with pytest.raises(ValueError) as caught:
        wider.init_weights(source)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{source} holds a ViT with patch 4, width 32, depth 1")
    assert "builds model.arch=vit_tiny, a ViT with patch 4, width 64, depth 1" in message


def test_files_that_hold_no_pretraining_weights_are_refused(tmp_path):
    ckpt.save_checkpoint(tmp_path / "head.safetensors", {"weight": torch.zeros(2, 2)}, {}, kind="linear_head")
    with pytest.raises(ValueError, match="is not a pre-training checkpoint"):
        read_init_weights(tmp_path / "head.safetensors")
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        read_init_weights(tmp_path / "missing.pth")
