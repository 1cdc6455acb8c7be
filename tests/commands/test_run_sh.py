"""``./run.sh`` and the cycle behind it (``ibot.cycle``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ibot import cycle
from tests.eval.helpers import session_tiny_run

ROOT = Path(__file__).resolve().parents[2]
QUIET = "--no-progress --num-workers 0"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return session_tiny_run(tmp_path_factory)


def run_sh(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "IBOT_PYTHON": sys.executable}  # this interpreter, not a fresh .venv
    return subprocess.run([str(ROOT / "run.sh"), *args], capture_output=True, text=True, env=env, cwd=cwd)


def test_help_explains_the_stages():
    done = run_sh("--help")
    assert done.returncode == 0
    for stage in cycle.STAGES:
        assert f"\n  {stage} " in done.stdout
    assert "--finetune-args" in done.stdout and "--preset" in done.stdout


def test_unknown_stage_is_refused():
    done = run_sh("pretrain+knm")
    assert done.returncode == 2 and "unknown stage(s) knm" in done.stderr


def test_failing_stage_stops_the_chain(tiny_run, tmp_path):
    checkpoint, folder = tiny_run
    done = run_sh("knn+linear", "--checkpoint", str(checkpoint), "--data", str(folder),
                  "--output-dir", str(tmp_path), "--knn-args", "--no-such-option")
    assert done.returncode == 2
    assert "stage 'knn' failed with exit status 2" in done.stderr
    assert "=== stage linear" not in done.stdout and not (tmp_path / "eval" / "linear.json").exists()


def test_the_pretrain_stage_replaces_its_own_run_unless_resumed():
    args = cycle.parse_args([])
    command = cycle.stage_command("pretrain", args, Path("runs/cycle"), Path("unused"))
    assert command[3:] == ["pretrain", "--preset", "cpu", "--data", cycle.EMBEDDED_DATA, "--output-dir",
                           str(Path("runs/cycle/pretrain")), "--overwrite", "--no-knn"]
    resumed = cycle.stage_command("pretrain", cycle.parse_args(["--pretrain-args", "--resume auto"]), Path("x"),
                                  Path("unused"))
    assert "--overwrite" not in resumed and "--preset" not in resumed and resumed[-2:] == ["--resume", "auto"]


@pytest.mark.slow
def test_pretraining_twice_in_a_row(tmp_path, monkeypatch):
    from ibot.cli import main
    from tests.tiny import TINY_CROP_OVERRIDES, TINY_MODEL_OVERRIDES
    from tests.train.helpers import make_image_folder

    folder = make_image_folder(tmp_path / "images")
    monkeypatch.chdir(tmp_path)  # the copy of results.json lands in the working directory
    tiny = " ".join([*TINY_MODEL_OVERRIDES, *TINY_CROP_OVERRIDES, "data.num_workers=0", "optim.warmup_epochs=1",
                     "loss.warmup_teacher_temp_epochs=1", "--batch-size-per-device 4 --epochs 2 --no-progress"])
    first = cycle.parse_args(["pretrain", "--data", str(folder), "--output-dir", str(tmp_path / "cycle"),
                              "--pretrain-args", f"{tiny} --max-steps 2"])
    assert main(cycle.stage_command("pretrain", first, tmp_path / "cycle", Path())[3:]) == 0  # in this process
    assert cycle.main(["pretrain", "--data", str(folder), "--output-dir", str(tmp_path / "cycle"),
                       "--pretrain-args", f"{tiny} --max-steps 1"]) == 0
    log = (tmp_path / "cycle" / "pretrain" / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["global_step"] for line in log] == [1]  # the second cycle's run alone


def test_cycle_chains_stages_and_reports(tiny_run, tmp_path, monkeypatch, capsys):
    checkpoint, folder = tiny_run
    monkeypatch.chdir(tmp_path)  # the copy of results.json lands in the working directory
    out = tmp_path / "run"
    status = cycle.main(["knn+linear", "--checkpoint", str(checkpoint), "--data", str(folder), "--output-dir", str(out),
                         "--knn-args", f"--ks 1 3 {QUIET}",
                         "--linear-args", f"--epochs 2 --lrs 0.1 1 --train-batch-size 8 {QUIET}"])
    assert status == 0
    results = json.loads((out / "results.json").read_text())
    assert results == json.loads((tmp_path / "results.json").read_text())
    assert results["stages"] == ["knn", "linear"] and set(results["seconds"]) == {"knn", "linear"}
    assert results["linear"]["epochs"] == 2  # the user's --epochs came after the cpu budget's and won
    assert results["model"]["arch"] == "ViT-Ti/4 (depth 1, width 32)" and results["model"]["pretrain_epochs"] == 0
    table = capsys.readouterr().out
    header = "| Arch." in table and "| Par." in table and "| k-NN" in table and "| Fin." in table
    assert header and f"{results['knn']['results']['3']['top1']:.1f}%" in results["table"]


def test_table_and_curves(tmp_path):
    results = {"model": {"arch": "ViT-S/16", "params_m": 21.7, "pretrain_epochs": 800, "pred_shape": "block"},
               "knn": {"results": {"10": {"top1": 74.0}, "20": {"top1": 75.2}}, "top1": 75.2, "best_k": 20},
               "linear": {"top1": 77.9}}
    table = cycle.format_table(results).splitlines()
    assert [c.strip() for c in table[0].split("|")[1:-1]] == ["Arch.", "Par.", "PS", "Ep.", "k-NN", "Lin.", "Fin."]
    assert [c.strip() for c in table[2].split("|")[1:-1]] == ["ViT-S/16", "21.7M", "Block", "800", "75.2%", "77.9%", "\\"]
    (tmp_path / "pretrain").mkdir()
    steps = [{"type": "step", "global_step": i, "loss": 9.0 - i, "cls": 6.0, "patch": 3.0 - i} for i in (1, 2)]
    (tmp_path / "pretrain" / "log.jsonl").write_text("\n".join(json.dumps(s) for s in steps) + "\n")
    png = cycle.plot_curves(tmp_path, tmp_path / "curves.png")
    assert png is not None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cycle.plot_curves(tmp_path / "empty", tmp_path / "none.png") is None


def test_finetune_recipe_follows_the_preset(tmp_path):
    """The cpu demo fine-tunes with the short recipe; official-size presets keep the official one."""
    def finetune_argv(*options):
        args = cycle.parse_args(["finetune", "--checkpoint", "ck.safetensors", *options])
        return cycle.stage_command("finetune", args, tmp_path, tmp_path / "ck.safetensors")

    demo = finetune_argv()
    assert demo[demo.index("--recipe") + 1] == "short"
    assert "--recipe" not in finetune_argv("--preset", "vit_small_16")
