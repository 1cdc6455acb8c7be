"""The official ``.pth`` containers: read once, by :func:`ibot.formats.official.read_official`."""

import argparse
import os

import pytest
import torch

from ibot import convert, hub
from ibot.formats import official


class RunsCode:
    """A pickle payload that would create ``marker`` when unpickled."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_full_checkpoint(fixtures_dir):
    found = official.read_official(fixtures_dir / "vit_full_checkpoint.pth")
    raw = official.safe_torch_load(fixtures_dir / "vit_full_checkpoint.pth")
    assert found.backbone is None and set(found.networks) == {"student", "teacher"}
    assert {f"module.{k}" for k in found.networks["student"]} == set(raw["student"])  # DDP prefix removed
    assert set(found.networks["teacher"]) == set(raw["teacher"])
    assert set(found.centres) == {"center", "center2"} and found.epoch == raw["epoch"]
    assert found.args == vars(raw["args"])
    assert found.state("student") is found.networks["student"]
    backbone, head = official.split_network(found.state("teacher"))
    assert {f"backbone.{k}" for k in backbone} | {f"head.{k}" for k in head} == set(raw["teacher"])


def test_a_published_backbone_and_a_bare_state_dict(fixtures_dir, tmp_path):
    found = official.read_official(fixtures_dir / "vit_checkpoint_teacher.pth")
    raw = official.safe_torch_load(fixtures_dir / "vit_checkpoint_teacher.pth")
    assert found.networks == {} and set(found.backbone) == set(raw["state_dict"])
    assert found.state("student") is found.backbone and found.args is None and found.epoch == 0
    torch.save({f"module.{k}": v for k, v in raw["state_dict"].items()}, tmp_path / "bare.pth")
    assert set(official.read_official(tmp_path / "bare.pth").backbone) == set(raw["state_dict"])


def test_unreadable_containers_are_refused_in_one_line(tmp_path):
    marker = tmp_path / "executed"
    torch.save({"state_dict": {"cls_token": RunsCode(str(marker))}}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="refusing to load .*evil.pth"):
        official.read_official(tmp_path / "evil.pth")
    assert not marker.exists()
    torch.save({"args": argparse.Namespace(arch="vit_small"), "epoch": 3}, tmp_path / "args.pth")
    with pytest.raises(ValueError, match="args.pth has no 'student', 'teacher' or 'state_dict' entry .*args, epoch"):
        official.read_official(tmp_path / "args.pth")
    torch.save({"teacher": [torch.ones(1)]}, tmp_path / "list.pth")
    with pytest.raises(ValueError, match="list.pth: entry 'teacher' is a list, not a state dict"):
        official.read_official(tmp_path / "list.pth")
    torch.save({"teacher": {}}, tmp_path / "teacher.pth")
    with pytest.raises(ValueError, match="teacher.pth has no 'student' or 'state_dict' entry"):
        official.read_official(tmp_path / "teacher.pth").state("student")
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        official.read_official(tmp_path / "nowhere.pth")


def test_hub_and_convert_read_the_container_through_read_official(fixtures_dir, monkeypatch):
    read = official.read_official
    calls = []
    monkeypatch.setattr(official, "read_official", lambda path: calls.append(path) or read(path))
    path = fixtures_dir / "vit_full_checkpoint.pth"
    backbone, head = hub.network_state(path, "student")
    tensors, _ = convert.official_to_ours(path)
    assert calls == [path, path]
    assert all(torch.equal(tensors[f"student.backbone.{k}"], v) for k, v in backbone.items())
    assert all(torch.equal(tensors[f"student.head.{k}"], v) for k, v in head.items())
