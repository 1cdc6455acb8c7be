import pytest
import torch

from ibot.eval.checkpoints import infer_head_kwargs, load_backbone, load_head
from ibot.eval.linear import LinearFeatures
from ibot.formats import ours as ckpt


def test_our_checkpoint_rebuilds_the_backbone_from_its_config(tiny_run):
    checkpoint, folder = tiny_run
    loaded = load_backbone(checkpoint)
    tensors, meta = ckpt.load_checkpoint(checkpoint, prefix="teacher.backbone.")
    state = loaded.backbone.state_dict()
    assert set(state) == {k[len("teacher.backbone."):] for k in tensors}
    for key, value in state.items():
        torch.testing.assert_close(value, tensors[f"teacher.backbone.{key}"])
    assert (loaded.arch, loaded.patch_size, loaded.image_size) == ("vit_tiny", 4, 16)
    assert loaded.build_kwargs["depth"] == 1 and loaded.data == str(folder) and not loaded.backbone.training
    assert loaded.name == "ViT-Ti/4 (depth 1, width 32)" and loaded.meta["global_step"] == 1
    student = load_backbone(checkpoint, key="student")
    assert student.identity() != loaded.identity()
    assert not torch.equal(student.backbone.blocks[0].attn.qkv.weight, loaded.backbone.blocks[0].attn.qkv.weight)


def test_user_errors_name_the_problem(tiny_run, tmp_path):
    checkpoint, _ = tiny_run
    with pytest.raises(ValueError, match="vit_tiny/4"):
        load_backbone(checkpoint, arch="vit_small")
    with pytest.raises(ValueError, match="--key"):
        load_backbone(checkpoint, key="ema")
    with pytest.raises(FileNotFoundError, match="nothere.safetensors"):
        load_backbone(tmp_path / "nothere.safetensors")
    official = tmp_path / "weights.pth"
    official.write_bytes(b"")
    with pytest.raises(ValueError, match="--arch"):
        load_backbone(official)


def test_head_of_our_checkpoint(tiny_run):
    checkpoint, _ = tiny_run
    head = load_head(checkpoint, "teacher")
    tensors, _ = ckpt.load_checkpoint(checkpoint, prefix="teacher.head.")
    assert head.out_dim == 64
    torch.testing.assert_close(head.last_layer.weight_v, tensors["teacher.head.last_layer.weight_v"])
    assert infer_head_kwargs({k[len("teacher.head."):]: v for k, v in tensors.items()})["hidden_dim"] == 32


def test_official_checkpoints_give_the_official_outputs(fixtures_dir, official_arch, official_vit):
    ref = torch.load(fixtures_dir / "vit_reference_outputs.pt", weights_only=True)
    loaded = load_backbone(fixtures_dir / "vit_checkpoint_teacher.pth", arch="vit_tiny", **official_vit)
    assert (loaded.patch_size, loaded.image_size) == (official_arch["patch_size"], official_arch["img_size"])
    with torch.no_grad():
        torch.testing.assert_close(loaded.backbone(ref["x_global"]), ref["tokens_global"][:, 0], rtol=1e-4, atol=1e-4)
        # linear-probe features of 2 blocks = the official get_intermediate_layers(x, 2) [CLS] tokens
        features = LinearFeatures(loaded.backbone, n_last_blocks=2, avgpool=0)(ref["x_global"])
        cls_per_block = ref["intermediate_n2"][:, :, 0]  # (blocks, B, D)
        torch.testing.assert_close(features, cls_per_block.transpose(0, 1).flatten(1), rtol=1e-4, atol=1e-4)
        head = load_head(fixtures_dir / "vit_full_checkpoint.pth", "teacher")
        torch.testing.assert_close(head(ref["tokens_global"][:, 0]), ref["teacher_head_cls"], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="backbone-only"):
        load_head(fixtures_dir / "vit_checkpoint_teacher.pth")


def test_metadata_that_does_not_describe_the_tensors_is_refused_before_building(tiny_run, tmp_path, monkeypatch,
                                                                                capsys):
    from ibot.models import BACKBONES
    from tests.test_cli_errors import one_line_error

    checkpoint, _ = tiny_run
    tensors, meta = ckpt.load_checkpoint(checkpoint)
    meta["config"]["model"]["embed_dim"] = 1_000_000  # a 12 TB first block, were it built
    crafted = ckpt.save_checkpoint(tmp_path / "crafted.safetensors", tensors, meta, kind="pretrain")

    def refuse(*args, **kwargs):
        raise AssertionError("a backbone was built")

    monkeypatch.setitem(BACKBONES, "vit_tiny", refuse)
    with pytest.raises(ValueError) as caught:
        load_backbone(crafted)
    assert str(caught.value) == (f"{crafted}: its metadata describes a vit_tiny ViT with patch 4, width 1000000, "
                                 f"depth 1, position grid 4 x 4, but its teacher backbone's tensors are a ViT with "
                                 f"patch 4, width 32, depth 1, position grid 4 x 4; the file's config does not match "
                                 f"its weights")
    line = one_line_error(["knn", "-c", str(crafted), "--batch-size", "8"], capsys)
    assert "width 1000000" in line and "width 32" in line and "out of memory" not in line
    meta["config"]["model"]["patch_size"] = 0
    ckpt.save_checkpoint(crafted, tensors, meta, kind="pretrain")
    with pytest.raises(ValueError, match="^model.patch_size=0 is out of range: must be >= 1$"):
        load_backbone(crafted)
