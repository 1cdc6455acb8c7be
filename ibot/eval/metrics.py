"""Top-1 / top-5 hits, the one count behind every classification accuracy of the evaluations."""

from __future__ import annotations

import torch


def topk_hits(scores: torch.Tensor, targets: torch.Tensor, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples whose target is the best score, and whose target is among the ``k`` best (fewer
    when there are fewer classes): ``scores`` (..., B, C), ``targets`` (B,) -> two (...) counts."""
    ranked = scores.topk(min(k, scores.shape[-1]), dim=-1).indices  # (..., B, k)
    hits = ranked.eq(targets.view(-1, 1))
    return hits[..., 0].sum(dim=-1), hits.any(dim=-1).sum(dim=-1)
