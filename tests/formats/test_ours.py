import errno
import os
import stat

import pytest
import torch
from safetensors import SafetensorError

from ibot.formats import ours as ckpt


def test_round_trip_with_shared_tensors_and_optimizer(tmp_path):
    weight = torch.randn(4, 3)
    model = torch.nn.Linear(3, 4)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(2, 3)).sum().backward()
    opt.step()
    opt_tensors, groups = ckpt.optimizer_to_tensors(opt.state_dict())
    tensors = {"a.weight": weight, "b.weight": weight, **opt_tensors}  # a shared tensor, as a shared head
    path = ckpt.save_checkpoint(tmp_path / "c.safetensors", tensors, {"epoch": 3, "config": {"x": [1, 2]}},
                                kind="pretrain")
    loaded, meta = ckpt.load_checkpoint(path)
    assert meta["epoch"] == 3 and meta["config"] == {"x": [1, 2]} and meta["format"] == "ibot-checkpoint"
    assert torch.equal(loaded["a.weight"], weight) and torch.equal(loaded["b.weight"], weight)
    restored = ckpt.optimizer_from_tensors(loaded, groups)
    opt2 = torch.optim.AdamW(torch.nn.Linear(3, 4).parameters(), lr=0.1)
    opt2.load_state_dict(restored)
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = ckpt.save_checkpoint(tmp_path / "c.safetensors", {"w": torch.ones(2)}, {"epoch": 1}, kind="pretrain")

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", crash)
    with pytest.raises(OSError):
        ckpt.save_checkpoint(path, {"w": torch.zeros(2)}, {"epoch": 2}, kind="pretrain")
    tensors, meta = ckpt.load_checkpoint(path)
    assert meta["epoch"] == 1 and torch.equal(tensors["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]  # no temporary left behind


def test_foreign_and_damaged_files_are_refused(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.safetensors"):
        ckpt.load_checkpoint(junk)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        ckpt.load_checkpoint(tmp_path / "missing.safetensors")


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_checkpoint_gets_the_mode_open_gives_under_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        path = ckpt.save_checkpoint(tmp_path / "c.safetensors", {"w": torch.ones(2)}, {"epoch": 1}, kind="pretrain")
        (tmp_path / "plain.txt").write_text("x")  # a file made by open() under the same umask
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)


@pytest.mark.parametrize("error", [
    SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),  # safetensors'
    OSError(errno.ENOSPC, "No space left on device"),
])
def test_disk_full_is_one_line_naming_the_file(tmp_path, monkeypatch, error):
    def full(tensors, filename, metadata=None):
        raise error

    monkeypatch.setattr(ckpt, "save_file", full)
    path = tmp_path / "c.safetensors"
    with pytest.raises(ckpt.CheckpointWriteError) as caught:
        ckpt.save_checkpoint(path, {"w": torch.ones(2)}, {"epoch": 1}, kind="pretrain")
    assert str(caught.value) == f"cannot write checkpoint {path}: No space left on device; no checkpoint was written"
    assert caught.value.errno == errno.ENOSPC and list(tmp_path.iterdir()) == []


def test_shapes_and_metadata_without_the_tensors(tmp_path):
    path = ckpt.save_checkpoint(tmp_path / "c.safetensors", {"a.w": torch.ones(3, 2), "b": torch.ones(4)}, {"epoch": 2},
                                kind="pretrain")
    shapes, meta = ckpt.read_shapes(path, prefix="a.")
    assert shapes == {"a.w": (3, 2)} and meta["epoch"] == 2
