from __future__ import annotations

from pathlib import Path

import pytest

from tests.eval.helpers import session_tiny_run


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> tuple[Path, Path]:
    return session_tiny_run(tmp_path_factory)
