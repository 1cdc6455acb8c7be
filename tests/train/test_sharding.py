"""``run.strategy=fsdp`` (torch's ``fully_shard``) against DDP, its checkpoints, and activation
checkpointing (``model.grad_checkpointing``), on a small ViT and a few generated images."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch
import torch.multiprocessing as mp

from ibot.config import is_run_defining, resolve_config
from ibot.eval.checkpoints import load_backbone
from ibot.eval.knn import pretrain_knn_report
from ibot.formats import ours as ckpt
from ibot.train.trainer import Pretrainer
from tests.train.helpers import tiny_config
from tests.train.test_trainer import _free_port, step_losses

# 3 blocks (the first two sharded one by one), every gradient clipped (so a shard's own norm would
# show), the last layer frozen for the epoch (its gradients dropped), KoLeo off (per-process batch)
SHARDING_RUN = ("optim.epochs=1", "model.depth=3", "optim.clip_grad=0.05", "optim.freeze_last_layer=1",
                "loss.koleo_weight=0", "mask.pred_ratio=0.4", "mask.pred_ratio_var=0.1", "run.precision=fp32")
RUNS = {"ddp": ("run.strategy=ddp",), "fsdp": ("run.strategy=fsdp",),
        "fsdp_ckpt": ("run.strategy=fsdp", "model.grad_checkpointing=true")}


def _check_sharded_alike(trainer: Pretrainer) -> None:
    """Every parameter a dim-0 shard, the teacher's placed as the student's of the same name, and the
    per-parameter clipping reading the whole gradients' norms (the last step's gradients are kept)."""
    from torch.distributed.tensor import DTensor

    from ibot.train.optim import clip_gradients_per_param

    student = dict(trainer.student.named_parameters())
    for name, param in trainer.teacher.named_parameters():
        assert isinstance(param, DTensor) and param.placements == student[name].placements
        assert param.to_local().shape == student[name].to_local().shape
    assert trainer.student.backbone.blocks[0].attn.qkv.weight.to_local().shape[0] == 3 * 32 // 2
    params = [p for p in trainer.clip_params if p.grad is not None]
    whole = torch.stack([p.grad.full_tensor().norm() for p in params])
    torch.testing.assert_close(clip_gradients_per_param(params, clip=1e9), whole)
    assert not any("last_layer" in n and p.grad is not None for n, p in trainer.student.named_parameters())


def _sharding_worker(rank: int, world: int, port: int, out_dir: str, data: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from ibot.train.distributed import cleanup

    losses = {}
    for name, extra in RUNS.items():
        trainer = Pretrainer(tiny_config(f"{out_dir}/{name}", data, *SHARDING_RUN, *extra))
        losses[name] = step_losses(trainer.fit())
        assert trainer.sharded == name.startswith("fsdp")
        if name == "fsdp":
            _check_sharded_alike(trainer)
    # a DDP file into sharded networks and optimiser, gathered back: the same tensors
    trainer = Pretrainer(tiny_config(f"{out_dir}/reload", data, *SHARDING_RUN, *RUNS["fsdp"]))
    trainer.load(f"{out_dir}/ddp/{ckpt.CHECKPOINT_NAME}")
    gathered, param_groups = trainer.gather()
    if rank == 0:
        saved, meta = ckpt.load_checkpoint(f"{out_dir}/ddp/{ckpt.CHECKPOINT_NAME}")
        assert param_groups == meta["optimizer_param_groups"]
        assert set(gathered) == {k for k in saved if k.startswith(("student.", "teacher.", "optimizer."))}
        for key, value in gathered.items():
            torch.testing.assert_close(value, saved[key], rtol=0, atol=0, msg=key)
        torch.save(losses, f"{out_dir}/losses.pt")
    cleanup()


@pytest.mark.distributed
def test_fsdp_on_two_gloo_processes_equals_ddp(tmp_path, image_folder, monkeypatch):
    """2 processes on gloo: DDP, FSDP and FSDP with activation checkpointing make the same steps
    (losses within 1e-5, and teachers), FSDP writes the keys DDP writes, and its file loads into one
    process and into the evaluations (the end-of-run k-NN check reads the sharded teacher from it);
    a DDP file loads into sharded networks exactly."""
    mp.spawn(_sharding_worker, args=(2, _free_port(), str(tmp_path), str(image_folder)), nprocs=2, join=True)
    losses = torch.load(tmp_path / "losses.pt")
    assert len(losses["ddp"]) == 2
    for name in ("fsdp", "fsdp_ckpt"):
        for got, want in zip(losses[name], losses["ddp"], strict=True):
            assert got[2:] == pytest.approx(want[2:], rel=1e-5)
    files = {name: ckpt.load_checkpoint(tmp_path / name / ckpt.CHECKPOINT_NAME) for name in RUNS}
    (ddp, ddp_meta), (fsdp, fsdp_meta) = files["ddp"], files["fsdp"]
    assert set(fsdp) == set(ddp) and fsdp_meta["optimizer_param_groups"] == ddp_meta["optimizer_param_groups"]
    for key in ddp:
        if key.startswith(("student.", "teacher.", "optimizer.", "loss.")):
            torch.testing.assert_close(fsdp[key], ddp[key], rtol=1e-5, atol=1e-6, msg=key)
    path = tmp_path / "fsdp" / ckpt.CHECKPOINT_NAME
    for key, value in load_backbone(path).backbone.state_dict().items():
        torch.testing.assert_close(value, fsdp[f"teacher.backbone.{key}"], rtol=0, atol=0)
    evaluated = []
    monkeypatch.setattr("ibot.eval.knn.backbone_knn", lambda backbone, *args, **kwargs: evaluated.append(backbone))
    cfg = tiny_config(tmp_path / "fsdp", image_folder, *SHARDING_RUN, *RUNS["fsdp"])
    pretrain_knn_report(SimpleNamespace(cfg=cfg, sharded=True, checkpoint_path=path, device="cpu", teacher=None))
    for key, value in evaluated[0].state_dict().items():
        torch.testing.assert_close(value, fsdp[f"teacher.backbone.{key}"], rtol=0, atol=0)
    single = Pretrainer(tiny_config(tmp_path / "single", image_folder, *SHARDING_RUN, *RUNS["fsdp"]))
    assert not single.sharded  # one process: nothing to shard
    single.load(path)
    gathered, _ = single.gather()
    for key, value in gathered.items():
        torch.testing.assert_close(value, fsdp[key], rtol=0, atol=0, msg=key)


def test_grad_checkpointing_gives_the_same_steps(tmp_path, image_folder):
    """Activation checkpointing of the student's blocks, drop path on: the same losses and teacher."""
    runs = {}
    for flag in ("false", "true"):
        trainer = Pretrainer(tiny_config(tmp_path / flag, image_folder, "model.depth=2", "model.drop_path_rate=0.2",
                                         "run.max_steps=3", f"model.grad_checkpointing={flag}", "run.precision=fp32"))
        runs[flag] = step_losses(trainer.fit()), trainer.teacher.state_dict()
        assert trainer.student.backbone.grad_checkpointing == (flag == "true")
        assert not trainer.teacher.backbone.grad_checkpointing
    assert len(runs["true"][0]) == 3
    for got, want in zip(runs["true"][0], runs["false"][0], strict=True):
        assert got[2:] == pytest.approx(want[2:], rel=1e-6)
    for key, value in runs["false"][1].items():
        torch.testing.assert_close(runs["true"][1][key], value, rtol=1e-5, atol=1e-7)


def test_strategy_and_grad_checkpointing_options():
    with pytest.raises(ValueError, match="run.strategy must be ddp or fsdp, got 'zero'"):
        resolve_config("cpu", overrides=["run.strategy=zero"])
    with pytest.raises(ValueError, match="run.eval_every needs run.strategy=ddp"):
        resolve_config("cpu", overrides=["run.strategy=fsdp", "run.eval_every=1"])
    assert resolve_config("vit_large_16", overrides=["run.strategy=fsdp", "model.grad_checkpointing=true"])
    assert not is_run_defining("model.grad_checkpointing") and is_run_defining("model.depth")
