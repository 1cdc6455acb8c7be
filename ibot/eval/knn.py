"""Weighted k-NN classification on frozen features (DINO/iBOT protocol).

Features are L2-normalised; the ``k`` nearest training samples by cosine similarity vote for their
class with weight ``exp(sim / T)``, T = 0.07; accuracies for several ``k`` come from one top-k pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ibot.distributed import DistInfo, all_reduce_sum, current
from ibot.eval.metrics import topk_hits


@torch.no_grad()
def knn_classify(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                 test_labels: torch.Tensor, ks: Sequence[int] = (10, 20, 100, 200), temperature: float = 0.07,
                 num_classes: int | None = None, chunk_size: int = 1024,
                 sharded: bool = False) -> dict[int, dict[str, float]]:
    """Top-1 / top-5 accuracy (percent) of weighted k-NN for each ``k`` in ``ks``.

    ``train_features`` (N, D), ``test_features`` (M, D): raw features (normalised here), the same
    on every process. ``sharded``: the processes of the process group share the query chunks
    (chunk ``c`` goes to process ``c % world_size``, so each chunk is the one-process chunk) and sum
    their hit counts: the one-process figures, on every process."""
    if len(train_features) == 0 or len(test_features) == 0:
        raise ValueError("k-NN needs at least one training and one test feature")
    num_classes = num_classes or int(max(train_labels.max(), test_labels.max())) + 1
    train = F.normalize(train_features.float(), dim=1)
    test = F.normalize(test_features.float(), dim=1)
    ks = sorted({min(k, len(train)) for k in ks})
    correct = {k: torch.zeros(2) for k in ks}
    info = current() if sharded else DistInfo()
    for start in range(info.rank * chunk_size, len(test), info.world_size * chunk_size):
        sims = test[start:start + chunk_size] @ train.T  # (m, N) cosine similarities
        top_sims, top_idx = sims.topk(ks[-1], dim=1)  # sorted, so any k is a prefix
        top_labels = train_labels[top_idx]  # (m, kmax)
        weights = (top_sims / temperature).exp()
        targets = test_labels[start:start + chunk_size]
        for k in ks:
            votes = torch.zeros(len(targets), num_classes)
            votes.scatter_add_(1, top_labels[:, :k], weights[:, :k])  # (m, C)
            hits1, hits5 = topk_hits(votes, targets)
            correct[k][0] += hits1
            correct[k][1] += hits5
    if sharded:  # hit counts are whole numbers: their sum is exact
        correct = dict(zip(ks, all_reduce_sum(torch.stack([correct[k] for k in ks]))))
    return {k: {"top1": 100.0 * float(c[0]) / len(test), "top5": 100.0 * float(c[1]) / len(test)}
            for k, c in correct.items()}


def backbone_knn(backbone: torch.nn.Module, data: str, image_size: int, device: torch.device | str = "cpu",
                 ks: Sequence[int] = (10, 20), batch_size: int = 256, progress: bool = True) -> dict[int, dict[str, float]]:
    """Weighted k-NN accuracy of ``backbone``'s [CLS] features on dataset ``data``: train split as
    the memory bank, val split as the queries."""
    from ibot.eval.features import evaluation_transform, split_features

    transform = evaluation_transform(image_size)
    backbone = backbone.to(device).eval()
    kwargs = dict(batch_size=batch_size, device=device, progress=progress)
    train_f, train_l, _ = split_features(backbone, {}, "cls", data, "train", transform, **kwargs)
    test_f, test_l, _ = split_features(backbone, {}, "cls", data, "val", transform, **kwargs)
    return knn_classify(train_f, train_l, test_f, test_l, ks=ks)


def periodic_knn(every: int, k: int = 20) -> Callable[[Any, int], dict[str, float]]:
    """An ``on_epoch_end`` callback for :meth:`ibot.train.trainer.Pretrainer.fit`: every ``every``
    epochs, the k-NN top-1 (``knn_top1``) of the teacher's backbone on the pre-training dataset's
    val split, during training (``run.eval_every``)."""
    if every < 1:
        raise ValueError(f"the k-NN evaluation runs every N >= 1 epochs, got {every}")

    def knn_top1(trainer: Any, epoch: int) -> dict[str, float]:
        if (epoch + 1) % every:
            return {}
        cfg = trainer.cfg
        result = backbone_knn(trainer.teacher.backbone, cfg.data.data, cfg.data.global_crops_size, trainer.device,
                              ks=(k,), progress=False)
        return {"knn_top1": next(iter(result.values()))["top1"]}

    return knn_top1


def pretrain_knn_report(trainer, ks: Sequence[int] = (10, 20)) -> dict:
    """k-NN accuracy of the trained teacher backbone and of the same network at random
    initialisation, on the pre-training dataset's train / val splits (the quick check that
    pre-training learned something; ``ibot knn`` is the full evaluation). A sharded teacher
    (``run.strategy=fsdp``; the main process holds a shard of it) is read whole from the checkpoint
    written at the end of the run."""
    from ibot.build import build_student_teacher
    from ibot.eval.checkpoints import load_backbone

    cfg = trainer.cfg
    teacher = load_backbone(trainer.checkpoint_path).backbone if trainer.sharded else trainer.teacher.backbone
    torch.manual_seed(cfg.run.seed)
    _, random_teacher = build_student_teacher(cfg)
    return {name: backbone_knn(backbone, cfg.data.data, cfg.data.global_crops_size, trainer.device, ks,
                               progress=cfg.run.progress)
            for name, backbone in (("teacher", teacher), ("random_init", random_teacher.backbone))}
