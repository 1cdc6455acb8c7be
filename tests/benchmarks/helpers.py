"""Helpers of the benchmark tests: the scripts live outside the package, in ``benchmarks/``."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def import_benchmark(name: str) -> Iterator[ModuleType]:
    """Yield the script ``benchmarks/<name>.py`` as a module (for a module-scoped fixture)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCHMARKS))
