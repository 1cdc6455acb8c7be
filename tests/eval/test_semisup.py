import numpy as np
import pytest
import torch

from ibot.eval.semisup import balanced_subset, logistic_regression_accuracy, semisupervised_eval


def test_subset_is_class_balanced_and_seeded():
    labels = np.repeat(np.arange(4), [100, 100, 200, 50])
    idx = balanced_subset(labels, 0.1, seed=3)
    counts = np.bincount(labels[idx], minlength=4)
    assert counts.tolist() == [10, 10, 20, 5]
    assert len(set(idx.tolist())) == len(idx)
    assert np.array_equal(idx, balanced_subset(labels, 0.1, seed=3))
    assert not np.array_equal(idx, balanced_subset(labels, 0.1, seed=4))
    # 1% of 50 rounds to 0: every class keeps at least one labelled image
    assert np.bincount(labels[balanced_subset(labels, 0.01)], minlength=4).tolist() == [1, 1, 2, 1]
    with pytest.raises(ValueError, match="fraction"):
        balanced_subset(labels, 0.0)


def test_logistic_regression_on_separable_features():
    g = torch.Generator().manual_seed(0)
    centres = torch.eye(3) * 5
    y = torch.arange(3).repeat(30)
    x = centres[y] + 0.2 * torch.randn(90, 3, generator=g)
    assert logistic_regression_accuracy(x, y, x, y) == 100.0
    results = semisupervised_eval(x, y, x, y, fractions=(0.1, 0.5))
    assert set(results) == {"10%", "50%"}
    assert results["10%"]["num_labels"] == 9 and results["50%"]["num_labels"] == 45
    assert results["50%"]["top1"] == 100.0
