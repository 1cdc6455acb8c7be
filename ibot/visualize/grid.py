"""Grids of equally sized pictures with a title above each (and optionally a label left of each
row), saved as PNG through matplotlib's Agg.

Pictures are placed pixel for pixel (no resampling), so a test can read a cell back from the PNG
at :meth:`GridLayout.box`. No pyplot: figures are made with ``matplotlib.figure.Figure`` and an
Agg canvas, which touches no global state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ibot.files import replaced_atomically

DPI = 100
BACKGROUND = 255


@dataclass(frozen=True)
class Cell:
    """One picture, (H, W, 3) uint8, and the title written above it."""

    pixels: np.ndarray
    title: str = ""


@dataclass(frozen=True)
class GridLayout:
    """Pixel geometry of a grid: ``rows x cols`` slots of ``cell_h x cell_w``, each under a title band,
    ``pad`` pixels around and between rows, ``gap`` pixels between columns, ``label_w`` pixels of
    row labels on the left."""

    rows: int
    cols: int
    cell_h: int
    cell_w: int
    pad: int = 6
    gap: int = 6
    title_h: int = 16
    header_h: int = 0
    label_w: int = 0

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the whole picture in pixels."""
        height = self.header_h + self.rows * (self.title_h + self.cell_h + self.pad) + self.pad
        width = self.label_w + self.cols * self.cell_w + (self.cols - 1) * self.gap + 2 * self.pad
        return height, width

    def box(self, row: int, col: int) -> tuple[int, int]:
        """(top, left) pixel of the picture in slot ``(row, col)``."""
        top = self.header_h + row * (self.title_h + self.cell_h + self.pad) + self.pad + self.title_h
        left = self.label_w + self.pad + col * (self.cell_w + self.gap)
        return top, left


def _font_size(text: str, width_px: int, band_px: int) -> float:
    """Points that fit ``text`` in ``width_px`` and the band's height (about 0.6 em per character)."""
    by_height = 0.62 * band_px * 72 / DPI
    by_width = width_px / max(len(text), 1) / 0.6 * 72 / DPI
    return max(4.0, min(by_height, by_width))


def _label_width(labels: Sequence[str], band_px: int) -> int:
    """Pixels that hold the longest of ``labels`` at the title font (about 0.6 em per character)."""
    return int(max(len(label) for label in labels) * 0.6 * 0.62 * band_px) + 1


def grid_figure(cells: Sequence[Sequence[Cell | None]], header: str = "", pad: int = 6, gap: int | None = None,
                title_h: int = 16, row_labels: Sequence[str] = ()) -> tuple[Figure, Axes, GridLayout]:
    """A figure of ``cells`` (rows of cells; None leaves a slot empty), and its pixel layout;
    ``row_labels`` (one per row) are written left of the rows.

    The returned axes spans the figure in pixel coordinates (x right, y down), for drawing on top.
    """
    pictures = [c.pixels for row in cells for c in row if c is not None]
    if not pictures:
        raise ValueError("nothing to draw")
    if row_labels and len(row_labels) != len(cells):
        raise ValueError(f"{len(row_labels)} row labels for {len(cells)} rows")
    for pixels in pictures:
        if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
            raise ValueError(f"cells must be (H, W, 3) uint8 arrays, got {pixels.shape} {pixels.dtype}")
    layout = GridLayout(rows=len(cells), cols=max(len(row) for row in cells),
                        cell_h=max(p.shape[0] for p in pictures), cell_w=max(p.shape[1] for p in pictures),
                        pad=pad, gap=pad if gap is None else gap, title_h=title_h,
                        header_h=title_h + pad if header else 0,
                        label_w=_label_width(row_labels, title_h) + pad if row_labels else 0)
    height, width = layout.size
    canvas = np.full((height, width, 3), BACKGROUND, dtype=np.uint8)
    for r, row in enumerate(cells):
        for c, cell in enumerate(row):
            if cell is not None:
                top, left = layout.box(r, c)
                canvas[top:top + cell.pixels.shape[0], left:left + cell.pixels.shape[1]] = cell.pixels

    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    ax.imshow(canvas, interpolation="nearest", extent=(0, width, height, 0))  # one pixel per data unit
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    if header:
        ax.text(width / 2, pad + title_h / 2, header, ha="center", va="center",
                fontsize=_font_size(header, width - 2 * pad, title_h))
    for r, label in enumerate(row_labels):
        top, _ = layout.box(r, 0)
        ax.text(layout.label_w, top + layout.cell_h / 2, label, ha="right", va="center",
                fontsize=_font_size(label, layout.label_w - pad, title_h))
    for r, row in enumerate(cells):
        for c, cell in enumerate(row):
            if cell is not None and cell.title:
                top, left = layout.box(r, c)
                ax.text(left + layout.cell_w / 2, top - title_h / 2, cell.title, ha="center", va="center",
                        fontsize=_font_size(cell.title, layout.cell_w + layout.gap, title_h))
    return fig, ax, layout


def save_png(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` (a ``.png``; folders are created) at its own pixel size."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"output {path} must end in .png")
    with replaced_atomically(path) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")
    return path
