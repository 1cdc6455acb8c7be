"""Top-1 / top-5 hits, the one count behind every classification accuracy of the evaluations."""

from __future__ import annotations

import torch


def topk_hits(scores: torch.Tensor, targets: torch.Tensor, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples whose target is the best score, and whose target is among the ``k`` best (fewer
    when there are fewer classes): ``scores`` (..., B, C), ``targets`` (B,) -> two (...) counts."""
    ranked = scores.topk(min(k, scores.shape[-1]), dim=-1).indices  # (..., B, k)
    hits = ranked.eq(targets.view(-1, 1))
    return hits[..., 0].sum(dim=-1), hits.any(dim=-1).sum(dim=-1)


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """(C, C) counts of pixels by (true class, predicted class); ``ignore_index`` pixels are left out."""
    keep = target != ignore_index
    index = target[keep].long() * num_classes + pred[keep].long()
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def segmentation_scores(confusion: torch.Tensor, class_names: list[str] | None = None) -> dict:
    """mIoU, pixel accuracy and per-class IoU (percent) of a confusion matrix.

    IoU_c = TP / (TP + FP + FN); a class that is neither in the labels nor predicted has no IoU and
    is left out of the mean (mmseg's ``nanmean``)."""
    conf = confusion.double()
    tp = conf.diag()
    union = conf.sum(0) + conf.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan"))) * 100
    names = class_names or [str(i) for i in range(len(tp))]
    return {"miou": float(iou.nanmean()), "pixel_acc": float(100 * tp.sum() / conf.sum().clamp(min=1)),
            "per_class_iou": {name: (None if v != v else round(float(v), 2)) for name, v in zip(names, iou)}}
