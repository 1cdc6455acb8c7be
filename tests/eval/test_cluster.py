import numpy as np
import pytest
import torch

from ibot.eval.cluster import cluster_scores, hungarian_accuracy, kmeans_clusters, prototype_assigner


def test_hungarian_accuracy_of_a_permuted_labelling_is_100():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 200)
    permutation = np.array([3, 0, 4, 1, 2])
    clusters = permutation[labels] + 10  # renamed and shifted cluster ids
    assert hungarian_accuracy(labels, clusters) == 100.0
    scores = cluster_scores(labels, clusters)
    assert scores["nmi"] == pytest.approx(100.0) and scores["ari"] == pytest.approx(100.0)
    assert scores["purity"] == 100.0 and scores["num_clusters"] == 5


def test_hungarian_accuracy_is_one_to_one():
    labels = np.array([0, 0, 1, 1, 2, 2])
    merged = np.array([7, 7, 7, 7, 5, 5])  # classes 0 and 1 share a cluster: only one of them can match
    assert hungarian_accuracy(labels, merged) == pytest.approx(100.0 * 4 / 6)
    split = np.array([0, 1, 2, 3, 4, 5])  # every image alone: 3 clusters match one image each
    assert hungarian_accuracy(labels, split) == pytest.approx(50.0)
    assert cluster_scores(labels, split)["purity"] == 100.0


def test_kmeans_finds_separated_blobs():
    g = torch.Generator().manual_seed(0)
    centres = torch.eye(4) * 10
    labels = torch.arange(4).repeat(25)
    features = centres[labels] + 0.1 * torch.randn(100, 4, generator=g)
    assert cluster_scores(labels.numpy(), kmeans_clusters(features, 4))["acc"] == 100.0
    with pytest.raises(ValueError, match="k-means"):
        kmeans_clusters(features, 0)


def test_prototype_assigner_is_the_head_argmax():
    backbone = torch.nn.Linear(3, 4)
    head = torch.nn.Linear(4, 6)
    x = torch.randn(5, 3)
    ids = prototype_assigner(backbone, head)(x)
    assert ids.shape == (5, 1)
    assert ids[:, 0].long().tolist() == head(backbone(x)).argmax(1).tolist()
