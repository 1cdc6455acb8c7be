"""End-to-end behaviour of the pre-training loop on a tiny model and a few generated images."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from ibot.convert import official_training_state
from ibot.eval.knn import periodic_knn
from ibot.formats import ours as ckpt
from ibot.train.trainer import NonFiniteLossError, Pretrainer
from tests.train.helpers import make_image_folder, tiny_config


def step_losses(records):
    return [(r["epoch"], r["step"], r["loss"], r["cls"], r["patch"]) for r in records if r["type"] == "step"]


def test_resume_continues_exactly(tmp_path, image_folder):
    # 16 images, batch 4: 4 steps per epoch, 2 epochs; interrupt mid-epoch 0 and mid-epoch 1
    full = Pretrainer(tiny_config(tmp_path / "full", image_folder)).fit()
    assert len(step_losses(full)) == 8

    run_dir = tmp_path / "parts"
    first = Pretrainer(tiny_config(run_dir, image_folder, "run.max_steps=3")).fit()
    # run.max_steps counts every step of the run, those before the resume too
    second = Pretrainer(tiny_config(run_dir, image_folder, "run.max_steps=6")).fit(
        resume=run_dir / "checkpoint.safetensors")
    third = Pretrainer(tiny_config(run_dir, image_folder)).fit(resume=run_dir / "checkpoint.safetensors")
    parts = step_losses(first) + step_losses(second) + step_losses(third)
    assert [p[:2] for p in parts] == [f[:2] for f in step_losses(full)]
    for got, want in zip(parts, step_losses(full)):
        assert got[2:] == pytest.approx(want[2:], rel=1e-6, abs=1e-7)

    a, _ = ckpt.load_checkpoint(tmp_path / "full" / "checkpoint.safetensors", prefix="teacher.")
    b, meta = ckpt.load_checkpoint(run_dir / "checkpoint.safetensors", prefix="teacher.")
    assert meta["epoch"] == 2 and meta["step_in_epoch"] == 0
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_a_resume_drops_what_was_logged_after_its_checkpoint(tmp_path, image_folder, capsys):
    # a run killed after logging steps its checkpoint does not hold: those records (and a torn
    # last line) go, the resumed run logs the steps again, each step is in the log once, in order
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    Pretrainer(tiny_config(tmp_path, image_folder, "run.max_steps=3", "run.tensorboard=true")).fit()
    stale = [{"type": "step", "epoch": 0, "step": s, "global_step": s, "loss": -1.0} for s in (4, 5)]
    with (tmp_path / "log.jsonl").open("a") as handle:
        handle.write("".join(json.dumps(r) + "\n" for r in stale) + '{"type": "st')
    with SummaryWriter(str(tmp_path / "tensorboard")) as writer:
        for r in stale:
            writer.add_scalar("step/loss", r["loss"], r["global_step"])
    Pretrainer(tiny_config(tmp_path, image_folder, "run.tensorboard=true")).fit(
        resume=tmp_path / "checkpoint.safetensors")
    assert "dropped 3 records written after the checkpoint (past step 3)" in capsys.readouterr().err
    logged = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["global_step"] for r in logged if r["type"] == "step"] == list(range(1, 9))
    assert [r["epoch"] for r in logged if r["type"] == "epoch"] == [0, 1]
    assert all(r.get("loss") != -1.0 for r in logged)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    scalars = events.Scalars("step/loss")
    assert [e.step for e in scalars] == list(range(1, 9)) and all(e.value != -1.0 for e in scalars)


def test_a_stop_on_the_last_step_of_an_epoch_ends_that_epoch(tmp_path, image_folder):
    first = Pretrainer(tiny_config(tmp_path, image_folder, "run.max_steps=4")).fit()  # 4 steps per epoch
    assert [(r["type"], r["epoch"]) for r in first][-2:] == [("step", 0), ("epoch", 0)]
    assert ckpt.load_checkpoint(tmp_path / "checkpoint.safetensors")[1]["epoch"] == 1
    rest = Pretrainer(tiny_config(tmp_path, image_folder)).fit(resume=tmp_path / "checkpoint.safetensors")
    assert [r["global_step"] for r in rest if r["type"] == "step"] == [5, 6, 7, 8]


def test_max_steps_counts_the_steps_before_a_resume(tmp_path, image_folder):
    Pretrainer(tiny_config(tmp_path, image_folder, "run.max_steps=2")).fit()
    more = Pretrainer(tiny_config(tmp_path, image_folder, "run.max_steps=3")).fit(
        resume=tmp_path / "checkpoint.safetensors")
    assert [r["global_step"] for r in more if r["type"] == "step"] == [3]
    assert ckpt.load_checkpoint(tmp_path / "checkpoint.safetensors")[1]["global_step"] == 3


def test_a_checkpoint_of_another_architecture_is_named(tmp_path, image_folder):
    Pretrainer(tiny_config(tmp_path, image_folder, "run.max_steps=1")).fit()
    wider = Pretrainer(tiny_config(tmp_path / "wider", image_folder, "model.embed_dim=64"))
    with pytest.raises(ValueError) as caught:
        wider.load(tmp_path / "checkpoint.safetensors")
    message = str(caught.value)
    assert "holds a ViT with patch 4, width 32, depth 1" in message
    assert "builds model.arch=vit_tiny, a ViT with patch 4, width 64, depth 1" in message
    other_head = Pretrainer(tiny_config(tmp_path / "head", image_folder, "model.out_dim=32", "model.patch_out_dim=32"))
    with pytest.raises(ValueError, match=r"student head does not fit this run's config: model.out_dim=32 \(file: 64\)"):
        other_head.load(tmp_path / "checkpoint.safetensors")


def test_checkpoint_holds_everything_needed(tmp_path, image_folder):
    cfg = tiny_config(tmp_path, image_folder, "optim.epochs=1")
    Pretrainer(cfg).fit()
    tensors, meta = ckpt.load_checkpoint(tmp_path / "checkpoint.safetensors")
    assert {"loss.center", "loss.center2", "rng.torch"} <= set(tensors)
    assert any(k.startswith("student.backbone.blocks.0.attn.qkv") for k in tensors)
    assert any(k.startswith("teacher.head.last_layer") for k in tensors)
    assert any(k.startswith("optimizer.state.") for k in tensors)
    assert "student.backbone.masked_embed" in tensors and "teacher.backbone.masked_embed" not in tensors
    assert meta["config"]["model"]["depth"] == 1 and meta["epoch"] == 1
    assert (tmp_path / "config.yaml").is_file()
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    epoch = [r for r in lines if r["type"] == "epoch"][0]
    for key in ("loss", "cls", "patch", "lr", "wd", "momentum", "teacher_temp", "teacher_patch_temp", "img_per_s"):
        assert key in epoch


def test_teacher_is_ema_of_student_and_gets_no_gradient(tmp_path, image_folder):
    trainer = Pretrainer(tiny_config(tmp_path, image_folder, "run.max_steps=1"))
    teacher_before = {k: v.clone() for k, v in trainer.teacher.state_dict().items()}
    trainer.fit()
    m = float(trainer.momentum_schedule[0])
    student = trainer.student.state_dict()
    key = "backbone.blocks.0.attn.qkv.weight"
    # the teacher started as the student's initial weights; after one step it moved by (1 - m)
    expected = m * teacher_before[key] + (1 - m) * student[key]
    torch.testing.assert_close(trainer.teacher.state_dict()[key], expected)
    assert all(p.grad is None for p in trainer.teacher.parameters())


def _poison_loss_at(trainer, monkeypatch, call: int) -> None:
    original, calls = trainer.ibot_loss.forward_with_targets, {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        out, targets = original(*args, **kwargs)
        return ({k: v * float("nan") for k, v in out.items()} if calls["n"] == call else out), targets

    monkeypatch.setattr(trainer.ibot_loss, "forward_with_targets", poisoned)


def _assert_finite_checkpoint_at_step(folder, step: int) -> None:
    tensors, meta = ckpt.load_checkpoint(folder / "checkpoint.safetensors")
    assert meta["step_in_epoch"] == step
    assert all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path, image_folder, monkeypatch):
    trainer = Pretrainer(tiny_config(tmp_path, image_folder, "run.checkpoint_every_steps=2"))
    _poison_loss_at(trainer, monkeypatch, 3)
    with pytest.raises(NonFiniteLossError, match="between epoch 0 step 2 and epoch 0 step 3.*Last good checkpoint: "
                                                 ".*checkpoint.safetensors; resume from it"):
        trainer.fit()
    _assert_finite_checkpoint_at_step(tmp_path, 2)


def test_a_diverged_state_is_never_saved_between_log_steps(tmp_path, image_folder, monkeypatch):
    """A checkpoint every step, a log every 5: step 3's NaN is caught by the check before its save."""
    trainer = Pretrainer(tiny_config(tmp_path, image_folder, "run.checkpoint_every_steps=1", "run.log_every_steps=5"))
    _poison_loss_at(trainer, monkeypatch, 3)
    with pytest.raises(NonFiniteLossError, match="loss became NaN or infinite between epoch 0 step 2 and epoch 0 "
                                                 "step 3"):
        trainer.fit()
    _assert_finite_checkpoint_at_step(tmp_path, 2)


def test_non_finite_weights_with_a_finite_loss_are_not_saved(tmp_path, image_folder, monkeypatch):
    trainer = Pretrainer(tiny_config(tmp_path, image_folder, "run.checkpoint_every_steps=2", "run.log_every_steps=5"))
    original, calls = trainer.objective.update_teacher, {"n": 0}

    def update(momentum):  # step 4's EMA update writes a NaN into the teacher after its loss was computed
        calls["n"] += 1
        original(momentum)
        if calls["n"] == 4:
            with torch.no_grad():
                next(trainer.teacher.parameters()).view(-1)[0] = float("nan")

    monkeypatch.setattr(trainer.objective, "update_teacher", update)
    # step 4 ends the epoch (16 images, batch 4): its log passes, the epoch's save does not
    with pytest.raises(NonFiniteLossError, match="weights became NaN or infinite between epoch 0 step 4 and epoch 1 "
                                                 "step 0"):
        trainer.fit()
    assert ckpt.read_metadata(tmp_path / "checkpoint.safetensors")["step_in_epoch"] == 2


def test_snapshots_every_epoch_keep_the_newest(tmp_path, image_folder):
    from ibot.train.run_dir import prepare_output_dir, snapshots

    Pretrainer(tiny_config(tmp_path, image_folder, "optim.epochs=3", "run.saveckp_freq=1",
                           "run.keep_snapshots=2")).fit()
    found = snapshots(tmp_path)
    assert [p.name for p in found] == ["checkpoint_epoch0002.safetensors", "checkpoint_epoch0003.safetensors"]
    assert [ckpt.read_metadata(p)["epoch"] for p in found] == [2, 3]
    final, _ = ckpt.load_checkpoint(tmp_path / "checkpoint.safetensors")
    last, _ = ckpt.load_checkpoint(found[-1])
    assert all(torch.equal(final[k], last[k]) for k in final)
    notes = prepare_output_dir(tmp_path, overwrite=True)  # --overwrite removes them with the run
    assert not snapshots(tmp_path) and "2 snapshot(s)" in notes[0]


def test_koleo_term_is_logged_and_added_to_the_loss(tmp_path, image_folder):
    plain = step_losses(Pretrainer(tiny_config(tmp_path / "plain", image_folder, "run.max_steps=3")).fit())
    records = Pretrainer(tiny_config(tmp_path / "koleo", image_folder, "run.max_steps=3",
                                     "loss.koleo_weight=0.5")).fit()
    steps = [r for r in records if r["type"] == "step"]
    assert len(steps) == 3 and all(r["koleo"] != 0 for r in steps)
    for r in steps:
        assert r["loss"] == pytest.approx(r["cls"] + r["patch"] + r["koleo"], rel=1e-5)
    # same first network; the term changes the updates (the first one has lr 0: warm-up from 0)
    assert steps[0]["cls"] == pytest.approx(plain[0][3], rel=1e-6)
    assert steps[2]["cls"] != pytest.approx(plain[2][3], rel=1e-6)
    with pytest.raises(ValueError, match="koleo_weight"):
        tiny_config(tmp_path, image_folder, "loss.koleo_weight=-1")


def test_per_crop_pillow_colour_resumes_exactly(tmp_path, image_folder):
    """The cpu preset (so tiny_config and the other tests here) cuts and colours the crops in the
    batch on the training device; the official presets' per-crop Pillow path resumes exactly too."""
    pillow = ("data.batched_crops=false", "data.batched_color=false")
    full = step_losses(Pretrainer(tiny_config(tmp_path / "full", image_folder, *pillow, "optim.epochs=1")).fit())
    batched = step_losses(Pretrainer(tiny_config(tmp_path / "batched", image_folder, "optim.epochs=1")).fit())
    assert len(full) == 4 and all(torch.isfinite(torch.tensor(s[2:])).all() for s in full)
    assert full[0][2] != pytest.approx(batched[0][2], rel=1e-6)  # other pixels than the batched path
    run_dir = tmp_path / "parts"
    first = Pretrainer(tiny_config(run_dir, image_folder, *pillow, "optim.epochs=1", "run.max_steps=2")).fit()
    rest = Pretrainer(tiny_config(run_dir, image_folder, *pillow, "optim.epochs=1")).fit(
        resume=run_dir / "checkpoint.safetensors")
    for got, want in zip(step_losses(first) + step_losses(rest), full, strict=True):
        assert got[:2] == want[:2] and got[2:] == pytest.approx(want[2:], rel=1e-6, abs=1e-7)


def test_batched_crops_resume_exactly(tmp_path, image_folder):
    """Crops cut on the training device (``data.batched_crops``): other pixels than the workers'
    crops, and a resumed run continues exactly."""
    crops, colour = "data.batched_crops=true", "data.batched_crops=false"
    full = step_losses(Pretrainer(tiny_config(tmp_path / "full", image_folder, crops, "optim.epochs=1")).fit())
    cut_by_workers = step_losses(Pretrainer(tiny_config(tmp_path / "colour", image_folder, colour,
                                                        "optim.epochs=1")).fit())
    assert len(full) == 4 and all(torch.isfinite(torch.tensor(s[2:])).all() for s in full)
    assert full[0][2] != pytest.approx(cut_by_workers[0][2], rel=1e-6)
    run_dir = tmp_path / "parts"
    first = Pretrainer(tiny_config(run_dir, image_folder, crops, "optim.epochs=1", "run.max_steps=2")).fit()
    rest = Pretrainer(tiny_config(run_dir, image_folder, crops, "optim.epochs=1")).fit(
        resume=run_dir / "checkpoint.safetensors")
    for got, want in zip(step_losses(first) + step_losses(rest), full, strict=True):
        assert got[:2] == want[:2] and got[2:] == pytest.approx(want[2:], rel=1e-6, abs=1e-7)


def test_corrupt_images_are_skipped_and_counted_once_each(tmp_path, image_folder, capsys):
    """Four unreadable files, two pairs of neighbours (8_broken, 9_broken after 0..7 in each class
    folder), all met in the epoch's 5 batches: counted 4 times, not once per image that passed over them."""
    for c in (0, 1):
        for name in ("8_broken.png", "9_broken.png"):
            (image_folder / f"class{c}" / name).write_bytes(b"\x89PNG\r\n\x1a\n not really")
    records = Pretrainer(tiny_config(tmp_path, image_folder, "optim.epochs=1")).fit()
    epoch = [r for r in records if r["type"] == "epoch"][0]
    assert epoch["steps"] == 5 and epoch["skipped_images"] == 4 and "broken.png" in epoch["skipped_example"]
    assert f"skipped 4 unreadable images (e.g. {epoch['skipped_example']})" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out_dir: str, data: str, *extra: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from ibot.train.distributed import cleanup

    cfg = tiny_config(f"{out_dir}/ddp", data, "optim.batch_size_per_device=4", "optim.epochs=1", *extra)
    trainer = Pretrainer(cfg)
    records = trainer.fit()
    torch.save({"losses": step_losses(records), "teacher": trainer.teacher.state_dict(),
                "center": trainer.ibot_loss.center.clone(), "records": records}, f"{out_dir}/rank{rank}.pt")
    cleanup()


@pytest.mark.distributed
@pytest.mark.parametrize("centering", ["mean", "sinkhorn"])
def test_two_process_gloo_equals_one_process(tmp_path, image_folder, centering):
    """2 processes x batch 4 on gloo == 1 process x batch 8 (same global batches), within 1e-5
    (with Sinkhorn-Knopp, every normalisation runs over both processes' rows). The cpu preset's
    KoLeo term is off: like DINOv2's, it looks for neighbours in each process's own batch.
    Unreadable files get the same stand-ins, and the epoch record counts those both processes met."""
    for c in (0, 1):
        for name in ("8_broken.png", "9_broken.png"):
            (image_folder / f"class{c}" / name).write_bytes(b"\x89PNG\r\n\x1a\n not really")
    extra = (f"loss.centering={centering}", "mask.pred_ratio=0.4", "mask.pred_ratio_var=0.1", "loss.koleo_weight=0")
    single = Pretrainer(tiny_config(tmp_path / "single", image_folder, "optim.batch_size_per_device=8",
                                    "optim.epochs=1", *extra))
    single_records = single.fit()
    single_losses = step_losses(single_records)
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path), str(image_folder), *extra), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    skipped = [[r["skipped_images"] for r in records if r["type"] == "epoch"] for records in
               (single_records, ranks[0]["records"])]
    assert skipped[0] == skipped[1] and skipped[0][0] > 0
    assert len(ranks[0]["losses"]) == len(single_losses) == 2
    for step, want in enumerate(single_losses):
        mean = [(ranks[0]["losses"][step][i] + ranks[1]["losses"][step][i]) / 2 for i in (2, 3, 4)]
        assert mean == pytest.approx(list(want[2:]), rel=1e-5)
    for key, value in single.teacher.state_dict().items():
        torch.testing.assert_close(ranks[0]["teacher"][key], value, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ranks[0]["center"], single.ibot_loss.center, rtol=1e-5, atol=1e-7)


def test_resume_from_official_full_checkpoint(tmp_path, image_folder, fixtures_dir, official_arch):
    from ibot.hub import network_state

    official = fixtures_dir / "vit_full_checkpoint.pth"
    a = official_arch
    sizes = [f"model.{key}={a[key]}" for key in ("patch_size", "img_size", "embed_dim", "depth", "num_heads",
                                                  "out_dim", "patch_out_dim")]
    cfg = tiny_config(tmp_path, image_folder, *sizes, f"model.head_hidden_dim={a['hidden_dim']}",
                      f"model.head_bottleneck_dim={a['bottleneck_dim']}", "data.global_crops_size=32",
                      "data.local_crops_size=16", "optim.epochs=20")
    trainer = Pretrainer(cfg)
    state = trainer.load(official_training_state(official))  # converted as `ibot pretrain --resume` does
    teacher_backbone, teacher_head = network_state(official, key="teacher")
    ours = trainer.teacher.state_dict()
    for key, value in teacher_backbone.items():
        torch.testing.assert_close(ours[f"backbone.{key}"], value, rtol=0, atol=0)
    for key, value in teacher_head.items():
        torch.testing.assert_close(ours[f"head.{key}"], value, rtol=0, atol=0)
    raw = torch.load(official, weights_only=False)
    assert state.epoch == raw["epoch"] and state.step_in_epoch == 0
    torch.testing.assert_close(trainer.ibot_loss.center, raw["ibot_loss"]["center"])
    trainer.cfg.run.max_steps = raw["epoch"] * trainer.steps_per_epoch + 1  # one step past the resume point
    records = trainer.fit(resume=official_training_state(official))
    assert records[0]["epoch"] == raw["epoch"]


def test_backbone_only_official_file_cannot_resume(fixtures_dir):
    with pytest.raises(ValueError, match="full training checkpoint"):
        official_training_state(fixtures_dir / "vit_checkpoint_teacher.pth")


def test_periodic_knn_and_tensorboard_events(tmp_path, image_folder):
    data = tmp_path / "data"  # train/ and a val/ of other images: k-NN needs a held-out split
    data.mkdir()
    image_folder.rename(data / "train")
    make_image_folder(data / "val", n_per_class=3, seed=1)
    cfg = tiny_config(tmp_path, data, "run.eval_every=1", "run.tensorboard=true")
    records = Pretrainer(cfg).fit(on_epoch_end=periodic_knn(cfg.run.eval_every))  # as `ibot pretrain` passes it
    epochs = [r for r in records if r["type"] == "epoch"]
    assert len(epochs) == 2 and all(0.0 <= r["knn_top1"] <= 100.0 for r in epochs)
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_steps_log_collapse_signs_and_epochs_the_prototypes_nmi(tmp_path, image_folder):
    records = Pretrainer(tiny_config(tmp_path, image_folder)).fit()
    steps = [r for r in records if r["type"] == "step"]
    for r in steps:
        assert 0 < r["teacher_entropy_cls"] <= 1 and 0 < r["teacher_entropy_patch"] <= 1
        assert 0 < r["teacher_batch_entropy_cls"] <= 1 and 0 <= r["cls_agreement"] <= 1
        assert 0 < r["student_cls_spread"] < 3
    epochs = [r for r in records if r["type"] == "epoch"]
    assert len(epochs) == 2 and all(0 <= r["nmi"] <= 100 for r in epochs)  # the folder has class labels


def test_collapse_metrics_and_warnings_on_planted_outputs():
    from ibot.loss import TeacherTargets
    from ibot.train.collapse import collapse_metrics, collapse_warnings

    k, d = 64, 16
    same = torch.zeros(8, k)
    same[:, 3] = 50.0  # every image sure of prototype 3
    targets = TeacherTargets(torch.softmax(same / 0.04, -1), torch.zeros(0, k))
    collapsed = collapse_metrics(targets, same, same, torch.ones(8, d))
    assert collapsed["teacher_batch_entropy_cls"] < 0.01 and collapsed["student_cls_spread"] < 1e-6
    assert collapsed["cls_agreement"] == 1 and "teacher_entropy_patch" not in collapsed
    flat = TeacherTargets(torch.full((8, k), 1 / k), torch.full((5, k), 1 / k))
    uniform = collapse_metrics(flat, torch.zeros(8, k), torch.randn(8, k), torch.randn(8, d))
    assert uniform["teacher_entropy_cls"] == pytest.approx(1.0) and uniform["teacher_entropy_patch"] == pytest.approx(1)
    assert 0.5 < uniform["student_cls_spread"] < 1.5
    window = {key: float(value) for key, value in collapsed.items()}
    assert collapse_warnings(window, epoch=0) == []  # not during the first epoch
    found = collapse_warnings(window, epoch=1)
    assert len(found) == 2 and "same prototype" in found[0] and "barely differ" in found[1]
    assert "almost uniform" in collapse_warnings({k: float(v) for k, v in uniform.items()}, epoch=3)[0]


def test_a_collapse_is_a_warning_in_the_log_and_on_the_console(tmp_path, image_folder, monkeypatch, capsys):
    import ibot.train.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "collapse_warnings",
                        lambda window, epoch: ["planted sign"] if epoch >= 1 else [])
    records = Pretrainer(tiny_config(tmp_path, image_folder)).fit()
    warnings = [r for r in records if r["type"] == "warning"]
    assert [w["message"] for w in warnings] == ["epoch 1 step 1: planted sign"]  # once per epoch
    assert "warning: epoch 1 step 1: planted sign" in capsys.readouterr().err
    logged = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert any(r["type"] == "warning" for r in logged)
