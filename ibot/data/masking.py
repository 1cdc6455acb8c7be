"""Masks for masked image modelling on the global crops (official ``ImageFolderMask``).

The ratio is drawn per crop: each ``(r, v)`` pair of ``pred_ratio`` / ``pred_ratio_var`` gives
``U(r - v, r + v)`` (or ``r`` when ``v == 0``) and one of them is picked at random. With the
official ViT-S recipe ``pred_ratio=[0, 0.3]``, ``pred_ratio_var=[0, 0.2]`` half the crops are left
unmasked and the rest are masked at a ratio from ``U(0.1, 0.5)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["MaskGenerator"]

PRED_SHAPES = ("block", "rand")


def _as_list(value: float | Sequence[float], name: str) -> list[float]:
    try:
        values = np.atleast_1d(np.asarray(value, dtype=float))
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number or a list of numbers, got {value!r}") from None
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"{name} must be a number or a non-empty list of numbers, got {value!r}")
    return values.tolist()


class MaskGenerator:
    """Draws one bool mask (True = masked) per global crop on a ``(h, w)`` patch grid.

    ``pred_shape="block"`` places BEiT's random rectangles until ``ratio * h * w`` cells are
    masked (it may stop short); ``"rand"`` masks exactly ``int(ratio * h * w)`` random cells.
    Before ``pred_start_epoch`` every mask is empty.
    """

    def __init__(
        self,
        pred_ratio: float | Sequence[float],
        pred_ratio_var: float | Sequence[float],
        pred_aspect_ratio: tuple[float, float] = (0.3, 1 / 0.3),
        pred_shape: str = "block",
        pred_start_epoch: int = 0,
    ) -> None:
        ratios = _as_list(pred_ratio, "pred_ratio")
        ratio_vars = _as_list(pred_ratio_var, "pred_ratio_var")
        if len(ratio_vars) == 1:  # one variance for every ratio, as the official code allows
            ratio_vars = ratio_vars * len(ratios)
        if len(ratios) != len(ratio_vars):
            raise ValueError(
                f"pred_ratio and pred_ratio_var must have the same length, got {len(ratios)} and "
                f"{len(ratio_vars)}"
            )
        for r, v in zip(ratios, ratio_vars):
            if not (0 <= r < 1 and 0 <= v <= r and r + v <= 1):
                raise ValueError(
                    f"pred_ratio {r} / pred_ratio_var {v}: need 0 <= pred_ratio < 1 and "
                    f"0 <= pred_ratio_var <= min(pred_ratio, 1 - pred_ratio)"
                )
        if len(pred_aspect_ratio) != 2 or min(pred_aspect_ratio) <= 0:
            raise ValueError(
                f"pred_aspect_ratio must be two positive numbers, got {pred_aspect_ratio}"
            )
        if pred_shape not in PRED_SHAPES:
            raise ValueError(f"pred_shape must be one of {PRED_SHAPES}, got {pred_shape!r}")
        if pred_start_epoch < 0:
            raise ValueError(f"pred_start_epoch must be >= 0, got {pred_start_epoch}")
        self.pred_ratio = ratios
        self.pred_ratio_var = ratio_vars
        self.log_aspect_ratio = (math.log(pred_aspect_ratio[0]), math.log(pred_aspect_ratio[1]))
        self.pred_shape = pred_shape
        self.pred_start_epoch = pred_start_epoch

    def sample_ratio(self, epoch: int, rng: np.random.Generator) -> float:
        """The masking ratio of one crop: 0 before ``pred_start_epoch``."""
        if epoch < self.pred_start_epoch:
            return 0.0
        ratios = [
            rng.uniform(r - v, r + v) if v > 0 else r
            for r, v in zip(self.pred_ratio, self.pred_ratio_var)
        ]
        return float(ratios[rng.integers(len(ratios))])

    def __call__(self, grid: tuple[int, int], epoch: int, rng: np.random.Generator) -> np.ndarray:
        """A ``(h, w)`` bool mask for one global crop."""
        height, width = grid
        if height < 1 or width < 1:
            raise ValueError(f"mask grid must be positive, got {grid}")
        high = self.sample_ratio(epoch, rng) * height * width
        if self.pred_shape == "rand":
            return self._random_mask(height, width, int(high), rng)
        return self._block_mask(height, width, high, rng)

    @staticmethod
    def _random_mask(height: int, width: int, count: int, rng: np.random.Generator) -> np.ndarray:
        mask = np.zeros(height * width, dtype=bool)
        mask[rng.permutation(height * width)[:count]] = True
        return mask.reshape(height, width)

    def _block_mask(
        self, height: int, width: int, high: float, rng: np.random.Generator
    ) -> np.ndarray:
        """BEiT: add rectangles until ``high`` cells are masked or 10 tries in a row add none."""
        mask = np.zeros((height, width), dtype=bool)
        low = (min(height, width) // 3) ** 2
        count = 0
        while count < high:
            added = self._add_block(mask, low, high - count, rng)
            if added == 0:
                break
            count += added
        return mask

    def _add_block(
        self, mask: np.ndarray, low: int, budget: float, rng: np.random.Generator
    ) -> int:
        """Up to 10 tries to mask a rectangle adding between 1 and ``budget`` new cells."""
        height, width = mask.shape
        for _ in range(10):
            area = low + (budget - low) * rng.random()  # U(low, budget), also when budget < low
            aspect = math.exp(rng.uniform(*self.log_aspect_ratio))
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            if h >= height or w >= width:
                continue
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            block = mask[top:top + h, left:left + w]  # a view: writing it writes the mask
            added = h * w - int(np.count_nonzero(block))
            if 0 < added <= budget:
                block[:] = True
                return added
        return 0
