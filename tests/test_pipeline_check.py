"""The lite pipeline check (what CI runs): every stage through the real CLI, outputs compared."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["pretrain", "knn", "finetune", "export_features", "export_classifier", "infer_features",
          "infer_classifier", "compare"]


@pytest.mark.slow
def test_lite_pipeline_check_passes(tmp_path):
    out = tmp_path / "tipc"
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "pipeline_check.py"), "--lite", "--output-dir", str(out),
                           "--timeout", "300"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = (out / "pipeline_check.log").read_text().splitlines()
    assert [line.split(" | ")[1].strip() for line in lines] == STAGES
    for line in lines:
        status, _, seconds, cpu, peak = line.split(" | ")[:5]
        assert status.strip() == "Run successfully"
        assert float(seconds.split()[0]) > 0 and float(cpu.split()[1]) > 0 and float(peak.split()[1]) > 10  # MB
    assert "python -m ibot.cli pretrain" in lines[0]
    compare = json.loads((out / "compare.json").read_text())
    assert compare["features_max_abs_diff"] < 1e-4 and compare["classifier_max_abs_diff"] < 1e-4
    assert compare["same_top1"] and compare["images"] == 20  # 2 validation images per class


def test_a_failing_stage_is_logged_and_fails_the_check(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import pipeline_check
    finally:
        sys.path.remove(str(ROOT / "tools"))
    out = tmp_path / "tipc"
    (out / "logs").mkdir(parents=True)
    stages = [pipeline_check.Stage("export_features", pipeline_check.ibot("export", "-c", str(tmp_path / "missing.safetensors"),
                                                                          "-o", str(out / "m.onnx"))),
              pipeline_check.Stage("infer_features", pipeline_check.ibot("infer", str(out / "m.onnx"), str(out)),
                                   needs=["export_features"])]
    monkeypatch.setattr(pipeline_check, "build_stages", lambda out, lite: stages)
    monkeypatch.setattr(pipeline_check, "write_image_folder", lambda root, *counts: root)
    assert pipeline_check.main(["--output-dir", str(out)]) == 1
    lines = (out / "pipeline_check.log").read_text().splitlines()
    assert lines[0].startswith("Run failed") and "exit status 2" in lines[0] and "missing.safetensors" in lines[0]
    assert lines[1].startswith("Run failed") and "not run: export_features failed" in lines[1]
    assert "missing.safetensors" in (out / "logs" / "export_features.log").read_text()
