"""``ibot pretrain --init-from``: a new run from a checkpoint's weights, distinct from ``--resume``."""

from __future__ import annotations

import yaml

from ibot.cli import main
from ibot.formats import ours as ckpt
from ibot.train import init_from
from ibot.train.trainer import Pretrainer
from tests.commands.test_pretrain import folder, forbid_building, logged_steps, new_run  # noqa: F401 (fixture)
from tests.test_cli_errors import one_line_error


def test_init_from_starts_a_new_run_and_a_resume_keeps_its_own_weights(tmp_path, folder, capsys, monkeypatch):
    assert main(new_run(tmp_path / "first", folder, "--max-steps", "3")) == 0
    source = tmp_path / "first" / "checkpoint.safetensors"
    out = tmp_path / "second"
    capsys.readouterr()
    assert main(new_run(out, folder, "--init-from", str(source), "--max-steps", "1")) == 0
    assert f"starting from the weights of {source} (student <- its student" in capsys.readouterr().err
    assert logged_steps(out) == [1]  # epoch 0, step 1: not the source's step 4
    _, meta = ckpt.load_checkpoint(out / "checkpoint.safetensors")
    assert meta["config"]["run"]["init_from"] == str(source) and (meta["epoch"], meta["global_step"]) == (0, 1)
    assert yaml.safe_load((out / "config.yaml").read_text())["run"]["init_from"] == str(source)

    def refuse(*args, **kwargs):
        raise AssertionError("the init_from file was read again")

    monkeypatch.setattr(init_from, "read_init_weights", refuse)
    monkeypatch.setattr(Pretrainer, "init_weights", refuse)
    assert main(["pretrain", "--resume", "auto", "--output-dir", str(out), "--max-steps", "2"]) == 0
    assert logged_steps(out) == [1, 2]


def test_init_from_with_a_resumed_checkpoint_is_refused(tmp_path, folder, capsys, monkeypatch):
    forbid_building(monkeypatch)
    source = tmp_path / "checkpoint.safetensors"
    for given in (["--init-from", str(source)], [f"run.init_from={source}"]):
        line = one_line_error(new_run(tmp_path / "run", folder, "--resume", str(source), *given), capsys)
        assert "--init-from starts a new run" in line and "--resume CHECKPOINT continues a run" in line


def test_resume_auto_with_init_from_starts_from_it_once(tmp_path, folder, capsys, monkeypatch):
    """A requeued job's line (docs/launch/slurm_pretrain.sh): the first launch starts from the file's
    weights, later ones continue the run's own checkpoint."""
    assert main(new_run(tmp_path / "first", folder, "--max-steps", "3")) == 0
    source, out = tmp_path / "first" / "checkpoint.safetensors", tmp_path / "job"
    line = new_run(out, folder, "--resume", "auto", "--init-from", str(source))
    capsys.readouterr()
    assert main([*line, "--max-steps", "1"]) == 0
    assert f"starting from the weights of {source}" in capsys.readouterr().err and logged_steps(out) == [1]
    monkeypatch.setattr(init_from, "read_init_weights", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    assert main([*line, "--max-steps", "2"]) == 0
    assert logged_steps(out) == [1, 2]


def test_init_from_another_architecture_is_one_line_before_building(tmp_path, folder, capsys, monkeypatch):
    assert main(new_run(tmp_path / "first", folder, "--max-steps", "1")) == 0
    source = tmp_path / "first" / "checkpoint.safetensors"
    capsys.readouterr()
    forbid_building(monkeypatch)
    line = one_line_error(new_run(tmp_path / "wide", folder, "--init-from", str(source), "model.embed_dim=64"), capsys)
    assert line.startswith(f"ibot: error: {source} holds a ViT with patch 4, width 32, depth 1")
    assert "this run's config builds model.arch=vit_tiny, a ViT with patch 4, width 64, depth 1" in line
    assert not (tmp_path / "wide").exists()  # refused before the folder was prepared


def test_init_from_in_a_folder_holding_a_run_is_refused_as_a_new_run(tmp_path, folder, capsys, monkeypatch):
    out = tmp_path / "run"
    assert main(new_run(out, folder, "--max-steps", "1")) == 0
    capsys.readouterr()
    source = tmp_path / "source.safetensors"
    (out / "checkpoint.safetensors").rename(source)
    (out / "checkpoint.safetensors").write_bytes(source.read_bytes())
    with monkeypatch.context() as patch:
        forbid_building(patch)
        line = one_line_error(new_run(out, folder, "--init-from", str(source), "--max-steps", "1"), capsys)
        assert f"{out} already holds a run" in line and "--overwrite" in line
    assert main(new_run(out, folder, "--init-from", str(source), "--max-steps", "1", "--overwrite")) == 0
    assert logged_steps(out) == [1]
