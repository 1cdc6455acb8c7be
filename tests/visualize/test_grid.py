"""Picture grids written to PNG: the file appears whole or not at all."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from ibot.visualize.grid import Cell, grid_figure, save_png


def _figure(value: int) -> Figure:
    fig, _, _ = grid_figure([[Cell(np.full((8, 8, 3), value, dtype=np.uint8), "cell")]])
    return fig


def test_a_failed_save_keeps_the_previous_picture(tmp_path, monkeypatch):
    path = save_png(_figure(0), tmp_path / "out" / "grid.png")
    before = path.read_bytes()
    Image.open(path).verify()
    fig = _figure(255)

    def part_then_fail(target, *args, **kwargs):
        with open(target, "wb") as handle:
            handle.write(before[:20])  # the PNG header, then a full disk
        raise OSError("No space left on device")

    monkeypatch.setattr(fig, "savefig", part_then_fail)
    with pytest.raises(OSError, match="No space left"):
        save_png(fig, path)
    assert path.read_bytes() == before and sorted(p.name for p in path.parent.iterdir()) == ["grid.png"]
    with pytest.raises(ValueError, match="must end in .png"):
        save_png(_figure(0), tmp_path / "grid.jpg")
