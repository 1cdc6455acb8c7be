"""``ibot pretrain`` hands the trainer what it needs: an official checkpoint converted for resuming,
and the periodic k-NN as an epoch callback (the trainer itself runs no evaluation)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from ibot.cli import main
from ibot.eval import knn as knn_module
from ibot.train import trainer as trainer_module


class RecordingTrainer:
    """Stands in for :class:`Pretrainer`: records what ``fit`` is given."""

    made: list[RecordingTrainer] = []

    def __init__(self, cfg) -> None:
        self.cfg, self.dist = cfg, SimpleNamespace(is_main=True)
        RecordingTrainer.made.append(self)

    def fit(self, resume=None, on_epoch_end=None) -> list:
        self.resume, self.on_epoch_end = resume, on_epoch_end
        return []


@pytest.fixture
def recorded(monkeypatch, tmp_path):
    RecordingTrainer.made = []
    monkeypatch.setattr(trainer_module, "Pretrainer", RecordingTrainer)

    def run(*argv: str) -> RecordingTrainer:
        assert main(["pretrain", "--output-dir", str(tmp_path / "run"), "--no-knn", *argv]) == 0
        return RecordingTrainer.made[-1]

    return run


def test_official_checkpoint_is_converted_before_resuming(recorded, fixtures_dir):
    official = fixtures_dir / "vit_full_checkpoint.pth"
    tensors, meta = recorded("--resume", str(official)).resume
    raw = torch.load(official, weights_only=False)
    assert meta["epoch"] == raw["epoch"] and {"student", "teacher"} <= set(meta["networks"])
    torch.testing.assert_close(tensors["loss.center"], raw["ibot_loss"]["center"], rtol=0, atol=0)
    assert any(key.startswith("student.backbone.") for key in tensors)
    assert recorded().resume is None


def test_backbone_only_official_file_is_refused(fixtures_dir, tmp_path, capsys):
    assert main(["pretrain", "--output-dir", str(tmp_path), "--resume",
                 str(fixtures_dir / "vit_checkpoint_teacher.pth")]) == 2
    assert "full training checkpoint" in capsys.readouterr().err


def test_eval_every_becomes_an_epoch_callback(recorded, monkeypatch):
    assert recorded().on_epoch_end is None
    callback = recorded("--eval-every", "2").on_epoch_end
    seen = []

    def fake_knn(backbone, data, image_size, device, ks, progress):
        seen.append((backbone, data, image_size, ks))
        return {20: {"top1": 42.0, "top5": 90.0}}

    monkeypatch.setattr(knn_module, "backbone_knn", fake_knn)
    teacher = SimpleNamespace(backbone="teacher backbone")
    trainer = SimpleNamespace(cfg=RecordingTrainer.made[-1].cfg, teacher=teacher, device="cpu")
    assert callback(trainer, 0) == {} and not seen  # every second epoch: after epochs 1, 3, ...
    assert callback(trainer, 1) == {"knn_top1": 42.0}
    assert seen == [("teacher backbone", trainer.cfg.data.data, trainer.cfg.data.global_crops_size, (20,))]
