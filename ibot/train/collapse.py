"""What shows a collapse coming, logged with every step record and drawn by ``ibot plot``.

Computed on the device from outputs the step has anyway (no extra forward, no sync):

- ``teacher_entropy_cls`` / ``teacher_entropy_patch``: mean entropy of the teacher's centred,
  sharpened distributions (the loss's targets, as the loss computed them), divided by ``log K``:
  1 is a uniform teacher (no signal: the targets say nothing), values near 0 are confident targets;
- ``teacher_batch_entropy_cls``: entropy of the batch's mean [CLS] distribution over ``log K``:
  near 0, every image goes to the same few prototypes (the collapse centring prevents);
- ``student_cls_spread``: how far the student's normed [CLS] features spread across the batch: the
  per-dimension standard deviation of the L2-normalised features times ``sqrt(D)`` (about 1 for
  random directions, 0 when every image has the same feature);
- ``cls_agreement``: share of global crops whose student and teacher [CLS] argmax agree.

Per epoch, the teacher's [CLS] argmax of the first global crop against the images' labels gives
``nmi`` (:class:`PrototypeLabels`), as the official loop scores it, where labels exist.
:func:`collapse_warnings` turns the window's means into one-line warnings.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ibot.loss import TeacherTargets

# warn when, after the first epoch, a window's mean crosses one of these
UNIFORM_TEACHER = 0.98  # teacher_entropy_cls at or above: the targets are (almost) uniform
ONE_PROTOTYPE = 0.02  # teacher_batch_entropy_cls at or below: (almost) every image on one prototype
COLLAPSED_SPREAD = 0.05  # student_cls_spread at or below: (almost) the same feature for every image

COLLAPSE_KEYS = ("teacher_entropy_cls", "teacher_entropy_patch", "teacher_batch_entropy_cls", "student_cls_spread",
                 "cls_agreement")


def _normalised_entropy(p: Tensor) -> Tensor:
    """Entropy of each row of ``p`` (..., K) over ``log K``."""
    return -(p * p.clamp(min=1e-12).log()).sum(-1) / math.log(p.shape[-1])


@torch.no_grad()
def collapse_metrics(targets: TeacherTargets, teacher_cls: Tensor, student_cls: Tensor,
                     student_features: Tensor) -> dict[str, Tensor]:
    """The module's step metrics (0-dim device tensors) from the distributions the loss scored
    against (:meth:`ibot.loss.IBOTLoss.forward_with_targets`), the teacher's and the student's [CLS]
    logits of the global crops (G*B, K) and the student's backbone [CLS] features (G*B, D)."""
    out = {"teacher_entropy_cls": _normalised_entropy(targets.cls).mean(),
           "teacher_batch_entropy_cls": _normalised_entropy(targets.cls.mean(0))}
    if targets.patch.shape[0]:
        out["teacher_entropy_patch"] = _normalised_entropy(targets.patch).mean()
    features = F.normalize(student_features.float(), dim=-1)
    out["student_cls_spread"] = features.std(0).mean() * math.sqrt(features.shape[-1])
    out["cls_agreement"] = (teacher_cls.argmax(-1) == student_cls.argmax(-1)).float().mean()
    return out


def collapse_warnings(window: dict[str, float], epoch: int) -> list[str]:
    """One line per sign of collapse in a window's means (none during the first epoch)."""
    if epoch < 1:
        return []
    found = []
    if window.get("teacher_entropy_cls", 0.0) >= UNIFORM_TEACHER:
        found.append(f"the teacher's [CLS] targets are almost uniform (entropy {window['teacher_entropy_cls']:.3f} "
                     f"of the maximum): they carry little signal; a lower loss.teacher_temp helps")
    if window.get("teacher_batch_entropy_cls", 1.0) <= ONE_PROTOTYPE:
        found.append(f"almost every image goes to the same prototype (batch entropy "
                     f"{window['teacher_batch_entropy_cls']:.3f}): the [CLS] outputs are collapsing")
    if window.get("student_cls_spread", 1.0) <= COLLAPSED_SPREAD:
        found.append(f"the student's [CLS] features barely differ between images (spread "
                     f"{window['student_cls_spread']:.3f}): the representation is collapsing")
    return found


class PrototypeLabels:
    """The teacher's [CLS] argmax and the images' labels over an epoch, for its NMI."""

    def __init__(self) -> None:
        self.assigned: list[Tensor] = []
        self.labels: list[Tensor] = []

    def add(self, teacher_cls: Tensor, labels: Tensor | None) -> None:
        """``teacher_cls`` (G*B, K): the first B rows are the first global crop of the B images."""
        if labels is None:
            return
        self.assigned.append(teacher_cls[: labels.shape[0]].argmax(-1).detach())
        self.labels.append(labels)

    def nmi(self, gather=None) -> float | None:
        """NMI (percent) of prototypes against labels, over every process when ``gather`` (a function
        from a CPU tensor to the list of every process's, e.g. ``ibot.distributed.all_gather_objects``)
        is given; None without labels."""
        from sklearn.metrics import normalized_mutual_info_score

        if not self.assigned:
            return None
        assigned, labels = torch.cat(self.assigned).cpu(), torch.cat(self.labels).cpu()
        if gather is not None:
            assigned, labels = torch.cat(gather(assigned)), torch.cat(gather(labels))
        known = labels >= 0
        self.assigned, self.labels = [], []
        if known.sum() < 2 or labels[known].unique().numel() < 2:
            return None
        return 100.0 * float(normalized_mutual_info_score(labels[known].numpy(), assigned[known].numpy()))
