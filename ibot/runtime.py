"""Where a run executes: the device, and the autocast precision and attention kernel that ``auto``
stands for."""

from __future__ import annotations

from pathlib import Path

import torch


def resolve_device(name: str) -> torch.device:
    """``auto``: the GPU when there is one, else the CPU; ``cuda[:i]`` must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"run.device={name} but no CUDA device is available; use run.device=cpu")
    return torch.device(name)


# /proc/cpuinfo flags of CPUs that run bf16 matmuls natively (Intel AMX, AVX512-BF16 on Intel
# Cooper Lake+ and AMD Zen 4+); elsewhere oneDNN emulates bf16, slower than fp32
NATIVE_BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})


def cpuinfo_flags(path: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The feature flags of the first CPU listed in ``path`` (empty where the file is absent)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_has_native_bf16(flags: frozenset[str] | None = None) -> bool:
    """True on a CPU with bf16 matmul instructions (AMX-BF16 or AVX512-BF16): torch's own
    detection (``torch.cpu._is_amx_tile_supported`` / ``_is_avx512_bf16_supported``, where
    present) or, given or read from ``/proc/cpuinfo``, the ``amx_bf16`` / ``avx512_bf16`` flags."""
    if flags is None:
        for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
            check = getattr(torch.cpu, probe, None)
            if check is not None and check():
                return True
        flags = cpuinfo_flags()
    return bool(flags & NATIVE_BF16_FLAGS)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None: fp32). ``auto``: bf16 on GPU and on CPUs with native bf16
    (faster than fp32 on an AMX Xeon, ``benchmarks/README.md``), fp32 on other CPUs (bf16 is
    emulated there: the ``cpu`` preset's backbone step 3.8 times slower than fp32 on an AVX2 EPYC)."""
    if precision == "auto":
        native = device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())
        precision = "bf16" if native else "fp32"
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got '{precision}'")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def resolve_attention(attention: str, device: torch.device) -> bool:
    """Whether a pre-training run's ViT blocks compute attention explicitly, ``softmax(q k^T / sqrt(d))
    v`` (True), or through torch's ``scaled_dot_product_attention`` (timm's fused path, False): the
    same maths. ``attention`` is ``run.attention``: ``explicit``, ``fused``, or ``auto``: explicit
    on the CPU, fused on the GPU. On the CPU, ATen's flash-attention kernel shares short
    sequences out badly over threads (the ``cpu`` preset's step with 2 threads is faster explicit,
    ``benchmarks/README.md``) and its bf16 backward is slow; inference and fine-tuning, where
    it was as fast or faster, keep the fused kernel."""
    return attention == "explicit" or (attention == "auto" and device.type == "cpu")
