import pytest
import torch

from ibot.eval.knn import knn_classify, periodic_knn


def test_knn_recovers_clustered_classes():
    torch.manual_seed(0)
    centres = torch.randn(4, 16) * 5
    train_labels = torch.arange(4).repeat_interleave(50)
    train = centres[train_labels] + torch.randn(200, 16)
    test_labels = torch.tensor([0, 1, 2, 3] * 10)
    test = centres[test_labels] + torch.randn(40, 16)
    result = knn_classify(train, train_labels, test, test_labels, ks=(10, 20))
    assert result[10]["top1"] == 100.0 and result[20]["top1"] == 100.0


def test_knn_weighted_vote_prefers_closer_neighbours():
    # one very close neighbour of class 1 against two far ones of class 0: with T = 0.07 the
    # exp(sim / T) weights let the close one win, a plain majority would not
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.05, 1.0]])
    train_labels = torch.tensor([1, 0, 0])
    test = torch.tensor([[1.0, 0.1]])
    result = knn_classify(train, train_labels, test, torch.tensor([1]), ks=(3,), num_classes=2)
    assert result[3]["top1"] == 100.0
    result = knn_classify(train, train_labels, test, torch.tensor([0]), ks=(3,), num_classes=2)
    assert result[3]["top1"] == 0.0 and result[3]["top5"] == 100.0


def test_knn_k_larger_than_train_set_is_clamped():
    train = torch.eye(3)
    labels = torch.tensor([0, 1, 2])
    result = knn_classify(train, labels, train, labels, ks=(200,))
    assert set(result) == {3}
    assert result[3]["top1"] == 100.0


def test_periodic_knn_needs_a_positive_period():
    with pytest.raises(ValueError, match="every N >= 1 epochs, got 0"):
        periodic_knn(0)
