import torch

from ibot.eval.metrics import topk_hits


def test_topk_hits_counts_per_leading_dim():
    scores = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.2], [0.3, 0.2, 0.5]])  # (B=3, C=3)
    targets = torch.tensor([1, 2, 1])
    hits1, hits5 = topk_hits(scores, targets, k=2)
    assert (int(hits1), int(hits5)) == (1, 2)  # row 0 right; row 1 second best; row 2 third
    other = torch.tensor([[2.0, 0.1, 0.0], [0.0, 2.0, 0.1], [0.1, 0.0, 2.0]])  # never the target first
    stacked = torch.stack([scores, other])  # (H=2, B, C)
    h1, h5 = topk_hits(stacked, targets, k=2)
    assert h1.tolist() == [1, 0] and h5.tolist() == [2, 2]
    assert topk_hits(scores, targets, k=5)[1] == 3  # k above the number of classes: every class counts
