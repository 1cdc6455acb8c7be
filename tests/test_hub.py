import os

import pytest
import torch

from ibot.formats.ours import save_checkpoint
from ibot.hub import backbone_from_file, head_from_file, network_state
from ibot.models import IBOTHead, MultiCropWrapper, swin_tiny, vit_tiny


class RunsCode:
    """A pickle payload that would create ``marker`` when unpickled."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def small_vit(**kwargs):
    return vit_tiny(patch_size=8, img_size=32, embed_dim=32, depth=1, num_heads=2, **kwargs)


def test_official_formats_and_keys(fixtures_dir, official_vit):
    backbone_only = backbone_from_file(fixtures_dir / "vit_checkpoint_teacher.pth", arch="vit_tiny", **official_vit)
    teacher = backbone_from_file(fixtures_dir / "vit_full_checkpoint.pth", arch="vit_tiny", key="teacher",
                                 **official_vit)
    student = backbone_from_file(fixtures_dir / "vit_full_checkpoint.pth", arch="vit_tiny", key="student",
                                 **official_vit)
    assert not backbone_only.training and not student.training
    for name, value in backbone_only.state_dict().items():
        assert torch.equal(value, teacher.state_dict()[name]), name
    assert not hasattr(teacher, "masked_embed") and hasattr(student, "masked_embed")
    assert not torch.equal(student.norm.weight, teacher.norm.weight)
    # a teacher file has no mask token: asking for one leaves it at zero
    masked = backbone_from_file(fixtures_dir / "vit_checkpoint_teacher.pth", arch="vit_tiny", masked_im_modeling=True,
                           **official_vit)
    assert torch.equal(masked.masked_embed, torch.zeros(1, official_vit["embed_dim"]))
    backbone_state, head_state = network_state(fixtures_dir / "vit_full_checkpoint.pth", "student")
    assert "masked_embed" in backbone_state and "last_layer2.weight_v" in head_state
    assert not any(k.startswith(("module.", "backbone.", "head.")) for k in backbone_state | head_state)


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"cls_token": RunsCode(str(marker))}}, path)
    with pytest.raises(ValueError, match="refusing to load .*evil.pth") as info:
        backbone_from_file(path, arch="vit_tiny")
    assert "\n" not in str(info.value)
    assert not marker.exists()


def test_extra_and_missing_keys_are_named(tmp_path):
    state = small_vit().state_dict()
    state.pop("norm.bias")
    state["blocks.0.attn.extra"] = torch.zeros(1)
    torch.save({"state_dict": state}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"missing keys \['norm.bias'\], unexpected keys \['blocks.0.attn.extra'\]"):
        backbone_from_file(tmp_path / "bad.pth", arch="vit_tiny", patch_size=8, embed_dim=32, depth=1, num_heads=2)


def test_wrong_shapes_missing_files_and_entries_are_refused(tmp_path):
    torch.save({"state_dict": small_vit().state_dict()}, tmp_path / "small.pth")
    with pytest.raises(ValueError, match="small.pth does not fit VisionTransformer: .*size mismatch"):
        backbone_from_file(tmp_path / "small.pth", arch="vit_tiny", depth=1, num_heads=2)
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        backbone_from_file(tmp_path / "nowhere.pth")
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="notes.pth is not a readable PyTorch checkpoint"):
        backbone_from_file(tmp_path / "notes.pth")
    torch.save({"teacher": {}, "epoch": 3}, tmp_path / "full.pth")
    with pytest.raises(ValueError, match="no 'ema' or 'state_dict' entry .*teacher, epoch"):
        backbone_from_file(tmp_path / "full.pth", key="ema")
    with pytest.raises(ValueError, match="no 'teacher' head weights"):
        head_from_file(tmp_path / "small.pth", in_dim=32, out_dim=8)


def test_another_architecture_is_named_with_both_sizes(tmp_path):
    torch.save({"state_dict": small_vit().state_dict()}, tmp_path / "small.pth")
    with pytest.raises(ValueError) as caught:
        backbone_from_file(tmp_path / "small.pth", arch="vit_small")
    assert str(caught.value).startswith(f"{tmp_path / 'small.pth'} holds a ViT with patch 8, width 32, depth 1, "
                                        f"position grid 4 x 4 (read from its weights), but --arch vit_small builds a "
                                        f"ViT with patch 8, width 384, depth 12, position grid 4 x 4: small.pth does "
                                        f"not match VisionTransformer: missing keys")


def test_our_safetensors_checkpoint(tmp_path):
    teacher = MultiCropWrapper(small_vit(), IBOTHead(32, 16, hidden_dim=16, bottleneck_dim=8, shared_head=True))
    path = save_checkpoint(tmp_path / "checkpoint.safetensors",
                           {f"teacher.{k}": v for k, v in teacher.state_dict().items()}, {"epoch": 1},
                           kind="pretrain")
    backbone = backbone_from_file(path, arch="vit_tiny", embed_dim=32, depth=1, num_heads=2)
    head = head_from_file(path, in_dim=32, out_dim=16, hidden_dim=16, bottleneck_dim=8, shared_head=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = teacher.eval().backbone(x, return_all_tokens=True)
        torch.testing.assert_close(backbone(x, return_all_tokens=True), tokens)
        torch.testing.assert_close(head(tokens), teacher.head(tokens))
    with pytest.raises(ValueError, match="no 'student.backbone.\\*' tensors"):
        backbone_from_file(path, arch="vit_tiny", key="student")


def test_official_swin_file_with_derived_buffers(tmp_path):
    sizes = dict(embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 1, 1, 1))
    model = swin_tiny(window_size=14, **sizes).eval()
    state = dict(model.state_dict())
    for name, buffer in model.named_buffers():  # the official file also stores these
        state[name] = buffer
    assert any(k.endswith("relative_position_index") for k in state)
    torch.save({"state_dict": state}, tmp_path / "swin.pth")
    loaded = backbone_from_file(tmp_path / "swin.pth", arch="swin_tiny", window_size=14, **sizes)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_a_head_that_is_not_shared_is_not_loaded_as_shared(tmp_path, fixtures_dir, official_head):
    _, head_state = network_state(fixtures_dir / "vit_full_checkpoint.pth", "teacher")
    head_state["last_layer2.weight_v"] = head_state["last_layer2.weight_v"] + 1
    torch.save({"teacher": {f"head.{k}": v for k, v in head_state.items()}}, tmp_path / "unshared.pth")
    with pytest.raises(ValueError, match="not shared"):
        head_from_file(tmp_path / "unshared.pth", **official_head)
    assert head_from_file(tmp_path / "unshared.pth", **{**official_head, "shared_head": False}).last_layer2 is not None


def test_top_level_load_backbone_with_the_documented_signature(fixtures_dir, official_arch, official_vit):
    import ibot

    reference = torch.load(fixtures_dir / "vit_reference_outputs.pt", weights_only=True)
    backbone = ibot.load_backbone(fixtures_dir / "vit_checkpoint_teacher.pth", arch="vit_tiny",
                                  patch_size=official_arch["patch_size"], **official_vit)
    with torch.no_grad():
        tokens = backbone(reference["x_global"], return_all_tokens=True)
    torch.testing.assert_close(tokens, reference["tokens_global"], rtol=0, atol=1e-5)
