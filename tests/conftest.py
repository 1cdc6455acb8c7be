"""Shared test helpers."""

from pathlib import Path

import pytest

OFFICIAL_FIXTURES = Path(__file__).resolve().parents[1] / ".." / "shared" / "fixtures" / "official"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """``<repo>/../shared/fixtures/official`` (outputs of the official code); skips when absent."""
    if not OFFICIAL_FIXTURES.is_dir():
        pytest.skip(f"official fixtures not found at {OFFICIAL_FIXTURES.resolve()}; "
                    "they live in ../shared/fixtures beside the checkout")
    return OFFICIAL_FIXTURES
