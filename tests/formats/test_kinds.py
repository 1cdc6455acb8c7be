"""The ``kind`` of our checkpoints: stamped by each writer, derived for files written without one."""

import json

import pytest
import torch
from safetensors.torch import save_file

import ibot
from ibot.eval.checkpoints import load_backbone
from ibot.export import load_exportable
from ibot.formats import ours


def write_without_kind(path, tensors, meta):
    """A file as our writer made it before ``kind`` was stamped."""
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path),
              metadata={"ibot": json.dumps({"format": ours.FORMAT, "version": ours.VERSION, **meta})})
    return path


def test_the_trainer_stamps_pretrain(tiny_run):
    checkpoint, _ = tiny_run
    meta = ours.read_metadata(checkpoint)
    assert meta["kind"] == "pretrain" and ours.checkpoint_kind(meta) == "pretrain"


def test_save_checkpoint_stamps_the_kind_it_is_given(tmp_path):
    for kind in ours.KINDS:
        path = ours.save_checkpoint(tmp_path / f"{kind}.safetensors", {"w": torch.ones(2)}, {"epoch": 1}, kind=kind)
        assert ours.read_metadata(path)["kind"] == kind
    with pytest.raises(ValueError, match="x.safetensors: kind must be one of pretrain, finetune, linear_head"):
        ours.save_checkpoint(tmp_path / "x.safetensors", {"w": torch.ones(2)}, {}, kind="features")
    with pytest.raises(ValueError, match="as a pretrain checkpoint: its metadata says kind 'finetune'"):
        ours.save_checkpoint(tmp_path / "x.safetensors", {"w": torch.ones(2)}, {"kind": "finetune"}, kind="pretrain")
    assert not (tmp_path / "x.safetensors").exists()


def test_files_without_a_kind_are_classified_as_before():
    assert ours.checkpoint_kind({"epoch": 1, "config": {}}) == "pretrain"  # trainer and convert
    assert ours.checkpoint_kind({"kind": "finetune", "epoch": 1}) == "finetune"
    assert ours.checkpoint_kind({"kind": "linear-head", "lr": 0.1}) == "linear_head"  # the old spelling
    assert ours.checkpoint_kind({"epoch": 1}) is None
    with pytest.raises(ValueError, match="odd.safetensors has an unknown kind 'detector'"):
        ours.checkpoint_kind({"kind": "detector"}, "odd.safetensors")


def test_an_old_pretraining_file_still_loads(tiny_run, tmp_path):
    checkpoint, _ = tiny_run
    tensors, meta = ours.load_checkpoint(checkpoint)
    meta.pop("kind")
    old = write_without_kind(tmp_path / "old.safetensors", tensors, meta)
    assert "kind" not in ours.read_metadata(old)
    size = load_backbone(checkpoint).image_size
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(ibot.load_backbone(old)(x), ibot.load_backbone(checkpoint)(x))
    assert load_exportable(old).kind == "features"


def test_read_metadata_reads_what_load_checkpoint_reads(tiny_run):
    checkpoint, _ = tiny_run
    assert ours.read_metadata(checkpoint) == ours.load_checkpoint(checkpoint, prefix="loss.")[1]
    with pytest.raises(FileNotFoundError, match="nothere.safetensors"):
        ours.read_metadata(checkpoint.parent / "nothere.safetensors")
