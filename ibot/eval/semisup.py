"""Semi-supervised classification on frozen features: logistic regression trained on a
class-balanced fraction of the labels (the paper's 1% and 10% settings), top-1 on the full val split.

The official run uses the fixed ImageNet 1% / 10% splits of SimCLRv2; for other datasets the
subset here takes the same fraction of every class (at least one image), drawn with a seed.
The classifier is scikit-learn's multinomial ``LogisticRegression`` (L-BFGS) on L2-normalised
features, like the official logistic-regression evaluation on the full label set.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def balanced_subset(labels: np.ndarray | torch.Tensor, fraction: float, seed: int = 0) -> np.ndarray:
    """Sorted indices of ``round(fraction * n_c)`` (at least 1) random images of every class c."""
    if not 0 < fraction <= 1:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        take = max(1, int(round(fraction * len(members))))
        chosen.append(rng.choice(members, size=take, replace=False))
    return np.sort(np.concatenate(chosen))


def logistic_regression_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor,
                                 val_y: torch.Tensor, C: float = 1.0, max_iter: int = 1000) -> float:
    """Top-1 accuracy (percent) on ``val`` of logistic regression fitted on ``train``."""
    from sklearn.linear_model import LogisticRegression

    def prepare(x: torch.Tensor) -> np.ndarray:
        return F.normalize(x.float(), dim=1).numpy()

    model = LogisticRegression(C=C, max_iter=max_iter)
    model.fit(prepare(train_x), np.asarray(train_y))
    return 100.0 * float((model.predict(prepare(val_x)) == np.asarray(val_y)).mean())


def semisupervised_eval(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
                        fractions: Sequence[float] = (0.01, 0.1), seed: int = 0, C: float = 1.0,
                        max_iter: int = 1000) -> dict[str, dict[str, Any]]:
    """``{"1%": {"fraction", "num_labels", "top1"}, "10%": ...}`` for each label fraction."""
    results = {}
    for fraction in fractions:
        idx = torch.from_numpy(balanced_subset(train_y, fraction, seed))
        top1 = logistic_regression_accuracy(train_x[idx], train_y[idx], val_x, val_y, C=C, max_iter=max_iter)
        results[f"{100 * fraction:g}%"] = {"fraction": fraction, "num_labels": len(idx), "top1": top1}
    return results
