"""Shared test helpers."""

from pathlib import Path

import pytest
import torch

OFFICIAL_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "official"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """``tests/fixtures/official``: outputs of the official code (its README says how they were made)."""
    return OFFICIAL_FIXTURES


@pytest.fixture(scope="session")
def official_arch(fixtures_dir) -> dict:
    """Sizes of the network behind the official fixtures: ``patch_size``, ``img_size``, ``local_size``,
    ``embed_dim``, ``depth``, ``num_heads``, ``out_dim``, ``patch_out_dim``, ``hidden_dim``, ``bottleneck_dim``."""
    return torch.load(fixtures_dir / "vit_reference_outputs.pt", weights_only=True)["arch"]


@pytest.fixture(scope="session")
def official_vit(official_arch) -> dict:
    """``build_backbone`` overrides that give the fixtures' ViT from ``vit_tiny``."""
    return {key: official_arch[key] for key in ("embed_dim", "depth", "num_heads")}


@pytest.fixture(scope="session")
def official_head(official_arch) -> dict:
    """``IBOTHead`` keyword arguments of the fixtures' heads (the last layer is shared)."""
    return {"in_dim": official_arch["embed_dim"], "shared_head": True,
            **{key: official_arch[key] for key in ("out_dim", "patch_out_dim", "hidden_dim", "bottleneck_dim")}}
