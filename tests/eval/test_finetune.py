import json

import pytest
import torch

from ibot.eval.checkpoints import load_backbone
from ibot.eval.finetune import Finetuner, fit_head_on_features
from ibot.eval.finetune_config import FinetuneConfig
from ibot.formats import ours as ckpt


def make_tuner(run_dir, tiny_run, epochs, **overrides):
    checkpoint, folder = tiny_run
    loaded = load_backbone(checkpoint, drop_path_rate=0.1)
    cfg = FinetuneConfig(epochs=epochs, batch_size=8, warmup_epochs=1, image_size=16, num_workers=0,
                         progress=False, device="cpu", **{"ema": True, "ema_decay": 0.9, **overrides})
    return Finetuner(loaded.backbone, loaded.arch, str(folder), cfg, run_dir)


def test_resumed_finetuning_matches_an_uninterrupted_run(tmp_path, tiny_run):
    full = make_tuner(tmp_path / "full", tiny_run, epochs=2).fit()
    make_tuner(tmp_path / "parts", tiny_run, epochs=2).fit(max_epochs=1)  # interrupted after epoch 0
    with (tmp_path / "parts" / "log.jsonl").open("a") as handle:  # killed after logging epoch 1, before its save
        handle.write(json.dumps({"epoch": 1, "train_loss": -1.0}) + "\n" + '{"epo')
    resumed = make_tuner(tmp_path / "parts", tiny_run, epochs=2).fit(resume=tmp_path / "parts" / "checkpoint.safetensors")
    assert [r["epoch"] for r in resumed["history"]] == [0, 1]
    logged = [json.loads(line) for line in (tmp_path / "parts" / "log.jsonl").read_text().splitlines()]
    assert logged == resumed["history"] and all(r["train_loss"] != -1.0 for r in logged)
    assert resumed["history"][1]["train_loss"] == pytest.approx(full["history"][1]["train_loss"], rel=1e-5)
    a, meta = ckpt.load_checkpoint(tmp_path / "full" / "checkpoint.safetensors")
    b, _ = ckpt.load_checkpoint(tmp_path / "parts" / "checkpoint.safetensors")
    assert meta["kind"] == "finetune" and meta["epoch"] == 2
    for key in a:
        if key.startswith(("model.", "ema.")):
            torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    assert {"top1", "top5", "last_top1", "best_epoch"} <= set(full)
    assert 0.0 <= full["top1"] <= 100.0 and full["layer_decay"] == 0.75


def test_frozen_backbone_epochs_train_the_classifier_only(tmp_path, tiny_run):
    tuner = make_tuner(tmp_path, tiny_run, epochs=2, freeze_backbone_epochs=1, ema=False)
    before = {k: v.clone() for k, v in tuner.model.state_dict().items()}
    tuner.train_epoch(0, [])
    after = tuner.model.state_dict()
    assert not torch.equal(before["head.weight"], after["head.weight"])
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("backbone."))
    tuner.train_epoch(1, [])
    assert not torch.equal(before["backbone.blocks.0.attn.qkv.weight"],
                           tuner.model.state_dict()["backbone.blocks.0.attn.qkv.weight"])


def test_fit_head_on_features_separates_blobs():
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat(40)
    features = torch.randn(120, 8, generator=generator) * 0.1 + torch.eye(3, 8)[labels] * 3
    head = torch.nn.Linear(8, 3)
    before = torch.nn.functional.cross_entropy(head(features), labels).item()
    fit_head_on_features(head, features, labels, epochs=30, seed=0, lr=1e-2, batch_size=16)
    with torch.no_grad():
        logits = head(features)
    assert torch.nn.functional.cross_entropy(logits, labels).item() < before / 4
    assert (logits.argmax(1) == labels).all()


def test_head_init_fits_the_classifier_before_fine_tuning(tmp_path, tiny_run):
    tuner = make_tuner(tmp_path, tiny_run, epochs=1, head_init_epochs=20, ema=False)
    features, labels = tuner._train_features()

    def train_loss() -> float:
        with torch.no_grad():
            return torch.nn.functional.cross_entropy(tuner.model.head(features), labels).item()

    start = train_loss()
    backbone = {k: v.clone() for k, v in tuner.model.backbone.state_dict().items()}
    tuner.init_head()
    assert train_loss() < start
    assert all(torch.equal(v, tuner.model.backbone.state_dict()[k]) for k, v in backbone.items())


def test_randaugment_ops_work_at_their_largest_magnitude():
    # the magnitude noise (mstd) can reach the clip value: every op must accept it
    from PIL import Image
    from timm.data.auto_augment import RandAugment

    from ibot.eval.finetune import train_transform

    transform = train_transform(FinetuneConfig(image_size=16))
    randaug = next(t for t in transform.transforms if isinstance(t, RandAugment))
    image = Image.new("RGB", (16, 16), (120, 60, 200))
    for op in randaug.ops:
        op.prob, op.magnitude_std, op.magnitude = 1.0, 0.0, op.magnitude_max or 10
        op(image)


def test_grid_pool_fits_its_classifier_on_the_token_grid(tmp_path, tiny_run):
    tuner = make_tuner(tmp_path, tiny_run, epochs=1, head_init_epochs=20, ema=False, pool="grid")
    width = tuner.model.backbone.embed_dim * 16  # 16-px images, patch 4: a 4 x 4 grid
    features, labels = tuner._train_features()
    assert tuner.model.head.in_features == width and features.shape == (len(tuner.train_set), width)

    def train_loss() -> float:
        with torch.no_grad():
            return torch.nn.functional.cross_entropy(tuner.model.head(features), labels).item()

    start = train_loss()
    tuner.init_head()
    assert train_loss() < start
    results = tuner.fit()
    _, meta = ckpt.load_checkpoint(tmp_path / "checkpoint.safetensors")
    assert meta["finetune"]["pool"] == "grid" and 0.0 <= results["top1"] <= 100.0
