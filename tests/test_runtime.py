"""run.precision=auto: bf16 on GPU and on CPUs with native bf16, fp32 on other CPUs."""

from __future__ import annotations

import pytest
import torch

from ibot import runtime as precision


def test_cpuinfo_flags_reads_the_flags_line(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx2 amx_bf16 amx_tile\n\n"
                    "processor\t: 1\nflags\t\t: fpu\n")
    assert precision.cpuinfo_flags(info) == {"fpu", "avx2", "amx_bf16", "amx_tile"}
    assert precision.cpuinfo_flags(tmp_path / "absent") == frozenset()


@pytest.mark.parametrize(("flags", "native"), [({"avx2", "avx512f"}, False), ({"avx512f", "avx512_bf16"}, True),
                                               ({"amx_tile", "amx_bf16"}, True), (set(), False)])
def test_native_bf16_from_flags(flags, native):
    assert precision.cpu_has_native_bf16(frozenset(flags)) is native


@pytest.mark.parametrize("native", [True, False])
def test_auto_on_cpu_follows_native_bf16(monkeypatch, native):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    expected = torch.bfloat16 if native else None
    assert precision.resolve_precision("auto", torch.device("cpu")) is expected
    # explicit choices are never overridden
    assert precision.resolve_precision("fp32", torch.device("cpu")) is None
    assert precision.resolve_precision("bf16", torch.device("cpu")) is torch.bfloat16


def test_auto_on_gpu_is_bf16_and_bad_names_fail(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert precision.resolve_precision("auto", torch.device("cuda")) is torch.bfloat16
    with pytest.raises(ValueError, match="precision"):
        precision.resolve_precision("fp8", torch.device("cpu"))


@pytest.mark.parametrize(("attention", "device", "explicit"), [
    ("auto", "cpu", True), ("auto", "cuda", False), ("fused", "cpu", False), ("explicit", "cuda", True)])
def test_attention_auto_is_explicit_on_the_cpu_only(attention, device, explicit):
    assert precision.resolve_attention(attention, torch.device(device)) is explicit


def test_run_attention_is_checked_when_set():
    from ibot.config import PretrainConfig, set_option

    cfg = PretrainConfig()
    set_option(cfg, "run.attention", "fused")
    assert cfg.run.attention == "fused"
    with pytest.raises(ValueError, match="run.attention must be one of auto, fused, explicit"):
        set_option(cfg, "run.attention", "flash")
