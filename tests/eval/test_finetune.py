import pytest
import torch

from ibot.eval.checkpoints import load_backbone
from ibot.eval.finetune import FinetuneModel, Finetuner, fit_head_on_features, layer_decay_param_groups
from ibot.eval.finetune_config import FinetuneConfig, default_layer_decay
from ibot.formats import ours as ckpt
from ibot.models import build_backbone


def rates(model, groups):
    """parameter name -> (lr scale, weight decay)"""
    by_id = {id(p): (g["lr_scale"], g["weight_decay"]) for g in groups for p in g["params"]}
    return {name: by_id[id(p)] for name, p in model.named_parameters()}


def test_vit_layer_decay_groups_have_beit_rates():
    vit = build_backbone("vit_tiny", patch_size=4, img_size=16, depth=2, embed_dim=16, num_heads=2)
    model = FinetuneModel(vit, num_classes=3)
    got = rates(model, layer_decay_param_groups(model, weight_decay=0.05, layer_decay=0.5))
    # 2 blocks: embeddings are layer 0, blocks 1..2, norm + classifier layer 3; scale 0.5 ** (3 - layer)
    assert got["backbone.cls_token"] == (0.125, 0.0)
    assert got["backbone.pos_embed"] == (0.125, 0.0)
    assert got["backbone.patch_embed.proj.weight"] == (0.125, 0.05)
    assert got["backbone.patch_embed.proj.bias"] == (0.125, 0.0)
    assert got["backbone.blocks.0.attn.qkv.weight"] == (0.25, 0.05)
    assert got["backbone.blocks.0.norm1.weight"] == (0.25, 0.0)
    assert got["backbone.blocks.1.mlp.fc2.weight"] == (0.5, 0.05)
    assert got["backbone.norm.weight"] == (1.0, 0.0)
    assert got["head.weight"] == (1.0, 0.05) and got["head.bias"] == (1.0, 0.0)
    assert len(got) == len(list(model.parameters()))


def test_swin_layer_decay_counts_blocks_across_stages():
    swin = build_backbone("swin_tiny", patch_size=4, img_size=32, window_size=4, embed_dim=8, depths=(1, 2),
                          num_heads=(1, 2))
    model = FinetuneModel(swin, num_classes=3)
    got = rates(model, layer_decay_param_groups(model, weight_decay=0.05, layer_decay=0.5))
    assert got["backbone.patch_embed.proj.weight"][0] == 1 / 16
    assert got["backbone.layers.0.blocks.0.attn.qkv.weight"][0] == 1 / 8
    assert all(v[0] == 1 / 8 for k, v in got.items() if ".downsample." in k)  # joins the block before it
    assert got["backbone.layers.1.blocks.0.attn.qkv.weight"][0] == 1 / 4
    assert got["backbone.layers.1.blocks.1.attn.qkv.weight"][0] == 1 / 2
    assert got["backbone.norm.weight"][0] == 1.0 and got["head.weight"][0] == 1.0
    assert all(v[1] == 0.0 for k, v in got.items() if "relative_position_bias_table" in k)


def test_official_layer_decay_defaults_and_bad_value():
    assert default_layer_decay("vit_base") == 0.65
    assert default_layer_decay("vit_small") == default_layer_decay("vit_large") == 0.75
    model = FinetuneModel(build_backbone("vit_tiny", patch_size=4, img_size=16, depth=1, embed_dim=16, num_heads=2), 2)
    with pytest.raises(ValueError, match="layer decay"):
        layer_decay_param_groups(model, 0.05, 1.5)


def test_head_lr_scale_multiplies_the_top_layer_only():
    vit = build_backbone("vit_tiny", patch_size=4, img_size=16, depth=2, embed_dim=16, num_heads=2)
    model = FinetuneModel(vit, num_classes=3)
    plain = rates(model, layer_decay_param_groups(model, weight_decay=0.05, layer_decay=0.5))
    scaled = rates(model, layer_decay_param_groups(model, weight_decay=0.05, layer_decay=0.5, head_lr_scale=10))
    top = {"head.weight", "head.bias", "backbone.norm.weight", "backbone.norm.bias"}
    for name, (scale, decay) in plain.items():
        assert scaled[name] == ((scale * 10 if name in top else scale), decay)
    with pytest.raises(ValueError, match="head lr scale"):
        layer_decay_param_groups(model, 0.05, 0.5, head_lr_scale=0)


def make_tuner(run_dir, tiny_run, epochs, **overrides):
    checkpoint, folder = tiny_run
    loaded = load_backbone(checkpoint, drop_path_rate=0.1)
    cfg = FinetuneConfig(epochs=epochs, batch_size=8, warmup_epochs=1, image_size=16, num_workers=0,
                         progress=False, device="cpu", **{"ema": True, "ema_decay": 0.9, **overrides})
    return Finetuner(loaded.backbone, loaded.arch, str(folder), cfg, run_dir)


def test_resumed_finetuning_matches_an_uninterrupted_run(tmp_path, tiny_run):
    full = make_tuner(tmp_path / "full", tiny_run, epochs=2).fit()
    make_tuner(tmp_path / "parts", tiny_run, epochs=2).fit(max_epochs=1)  # interrupted after epoch 0
    resumed = make_tuner(tmp_path / "parts", tiny_run, epochs=2).fit(resume=tmp_path / "parts" / "checkpoint.safetensors")
    assert [r["epoch"] for r in resumed["history"]] == [0, 1]
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
