"""Unsupervised classification: cluster ids scored against the labels.

Two ways to get cluster ids from a frozen network:

- ``prototypes``: the argmax over the pre-training head's [CLS] prototypes (the official
  protocol; it is one-to-one with the classes only when the head's ``out_dim`` equals the number
  of classes, e.g. the official out_dim-1000 model for ImageNet);
- ``kmeans``: k-means (scikit-learn) with k = number of classes on the L2-normalised [CLS] features.

Scores: NMI and ARI (scikit-learn) and the Hungarian-matched accuracy, i.e. the accuracy of the
best one-to-one map from clusters to classes (``scipy.optimize.linear_sum_assignment``); clusters
left without a class count as wrong. ``purity`` (every cluster labelled with its majority class)
is reported too, as it stays meaningful when there are many more clusters than classes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def contingency(labels: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """``(num_clusters, num_classes)`` counts, rows in the order of ``np.unique(clusters)``."""
    _, cluster_idx = np.unique(clusters, return_inverse=True)
    _, class_idx = np.unique(labels, return_inverse=True)
    table = np.zeros((cluster_idx.max() + 1, class_idx.max() + 1), dtype=np.int64)
    np.add.at(table, (cluster_idx, class_idx), 1)
    return table


def hungarian_accuracy(labels: np.ndarray | torch.Tensor, clusters: np.ndarray | torch.Tensor) -> float:
    """Accuracy (percent) under the best one-to-one assignment of clusters to classes."""
    return _matched_accuracy(contingency(np.asarray(labels), np.asarray(clusters)))


def _matched_accuracy(table: np.ndarray) -> float:
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(table, maximize=True)
    return 100.0 * table[rows, cols].sum() / table.sum()


def cluster_scores(labels: np.ndarray | torch.Tensor, clusters: np.ndarray | torch.Tensor) -> dict[str, float]:
    """NMI and ARI (x 100), Hungarian accuracy and purity (percent), number of clusters used."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    labels, clusters = np.asarray(labels), np.asarray(clusters)
    if len(labels) != len(clusters) or len(labels) == 0:
        raise ValueError(f"need as many cluster ids as labels (got {len(clusters)} and {len(labels)})")
    table = contingency(labels, clusters)
    return {"nmi": 100.0 * normalized_mutual_info_score(labels, clusters),
            "ari": 100.0 * adjusted_rand_score(labels, clusters),
            "acc": _matched_accuracy(table),
            "purity": 100.0 * table.max(axis=1).sum() / table.sum(),
            "num_clusters": int(table.shape[0])}


def kmeans_clusters(features: torch.Tensor, num_clusters: int, seed: int = 0, n_init: int = 10) -> np.ndarray:
    """k-means cluster ids of the L2-normalised ``features`` (N, D)."""
    from sklearn.cluster import KMeans

    if not 1 <= num_clusters <= len(features):
        raise ValueError(f"k-means needs 1 <= k <= {len(features)} images, got k={num_clusters}")
    x = F.normalize(features.float(), dim=1).numpy()
    return KMeans(n_clusters=num_clusters, n_init=n_init, random_state=seed).fit_predict(x)


def prototype_assigner(backbone: nn.Module, head: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``images (B, 3, H, W) -> cluster id (B, 1)``: argmax over the head's [CLS] prototypes
    (kept as a float column so it goes through :func:`ibot.eval.features.extract_features`)."""

    def assign(images: torch.Tensor) -> torch.Tensor:
        logits = head(backbone(images))  # (B, D) -> (B, K)
        return logits.argmax(dim=1, keepdim=True).float()

    return assign
