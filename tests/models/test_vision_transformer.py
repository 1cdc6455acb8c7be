import pytest
import torch

from ibot.hub import backbone_from_file
from ibot.models import build_backbone, use_explicit_attention, vit_base, vit_large, vit_small, vit_tiny

ATOL = 1e-5  # float32 CPU, official vs ours: observed differences are ~3e-6


@pytest.fixture(scope="module")
def reference(fixtures_dir):
    return torch.load(fixtures_dir / "vit_reference_outputs.pt", weights_only=True)


@pytest.fixture(scope="module")
def teacher(fixtures_dir, official_arch, official_vit):
    return backbone_from_file(fixtures_dir / "vit_checkpoint_teacher.pth", arch="vit_tiny",
                         patch_size=official_arch["patch_size"], **official_vit)


def tiny(**kwargs):
    return vit_tiny(patch_size=4, img_size=32, depth=2, **kwargs).eval()


# ------------------------------------------------------------------ parity with the official code
@torch.no_grad()
def test_all_tokens_match_official_at_the_global_and_a_local_size(reference, teacher, official_arch):
    # the local size needs the DINO-style interpolated position embedding (a non-integer factor)
    assert reference["x_local"].shape[-1] == official_arch["local_size"] != official_arch["img_size"]
    for crop in ("global", "local"):
        out = teacher(reference[f"x_{crop}"], return_all_tokens=True)
        torch.testing.assert_close(out, reference[f"tokens_{crop}"], atol=ATOL, rtol=0)
    torch.testing.assert_close(teacher(reference["x_global"]), reference["tokens_global"][:, 0], atol=ATOL, rtol=0)


@torch.no_grad()
def test_last_selfattention_matches_official(reference, teacher):
    attn = teacher.get_last_selfattention(reference["x_global"])
    torch.testing.assert_close(attn, reference["last_attn"], atol=ATOL, rtol=0)


@torch.no_grad()
def test_intermediate_layers_match_official(reference, teacher):
    layers = teacher.get_intermediate_layers(reference["x_global"], n=2)
    torch.testing.assert_close(torch.stack(layers), reference["intermediate_n2"], atol=ATOL, rtol=0)


@torch.no_grad()
def test_masked_student_matches_official(reference, fixtures_dir, official_vit):
    student = backbone_from_file(fixtures_dir / "vit_full_checkpoint.pth", arch="vit_tiny", key="student",
                                 **official_vit)
    out = student(reference["x_global"], mask=reference["student_mask"], return_all_tokens=True)
    torch.testing.assert_close(out, reference["student_masked_tokens"], atol=ATOL, rtol=0)


# ------------------------------------------------------------------ behaviour
def test_factories_sizes_and_overrides():
    with torch.device("meta"):  # shapes only: no memory, no init time
        for factory, width, depth, heads in ((vit_tiny, 192, 12, 3), (vit_small, 384, 12, 6),
                                             (vit_base, 768, 12, 12), (vit_large, 1024, 24, 16)):
            model = factory()
            assert (model.embed_dim, len(model.blocks), model.num_heads) == (width, depth, heads)
            assert (model.patch_size, model.mask_stride) == (16, 16)
            assert model.pos_embed.shape == (1, 197, width)
            assert model.blocks[0].mlp.fc1.out_features == 4 * width
            assert model.blocks[0].norm1.eps == 1e-6 and model.blocks[0].attn.qkv.bias is not None
        assert vit_small(patch_size=8).pos_embed.shape == (1, 785, 384)
        model = build_backbone("vit_small", patch_size=8, embed_dim=64, depth=1, num_heads=2, img_size=64)
    assert (model.embed_dim, len(model.blocks), model.num_heads, model.mask_stride) == (64, 1, 2, 8)
    assert model.pos_embed.shape == (1, 65, 64)


def test_state_dict_keys_follow_official_layout():
    keys = set(tiny(masked_im_modeling=True).state_dict())
    block = {f"blocks.0.{name}.{p}" for name in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
             for p in ("weight", "bias")}
    top = {"cls_token", "pos_embed", "masked_embed", "patch_embed.proj.weight", "patch_embed.proj.bias",
           "norm.weight", "norm.bias"}
    assert keys == top | block | {k.replace("blocks.0", "blocks.1") for k in block}
    assert "masked_embed" not in tiny().state_dict()


@torch.no_grad()
def test_forward_shapes_for_small_patches_and_sizes():
    model = tiny()
    x = torch.randn(2, 3, 32, 32)
    assert model(x).shape == (2, 192)
    assert model(x, return_all_tokens=True).shape == (2, 65, 192)
    assert model(torch.randn(2, 3, 16, 16), return_all_tokens=True).shape == (2, 17, 192)
    assert [t.shape for t in model.get_intermediate_layers(x, n=2)] == [(2, 65, 192)] * 2


@torch.no_grad()
def test_mask_token_replaces_patches_before_position_embedding():
    model = tiny(masked_im_modeling=True)
    model.masked_embed.normal_()
    x = torch.randn(2, 3, 32, 32)
    mask = torch.zeros(2, 8, 8, dtype=torch.bool)
    mask[0, 1, 2] = mask[1, 7, 0] = True
    plain, masked = model.prepare_tokens(x), model.prepare_tokens(x, mask)
    flat = torch.cat((torch.zeros(2, 1, dtype=torch.bool), mask.flatten(1)), dim=1)  # [CLS] never masked
    torch.testing.assert_close(masked[~flat], plain[~flat])
    # masked token = masked_embed + its position embedding (patch 1 * 8 + 2 of image 0, 7 * 8 of image 1)
    expected = model.masked_embed + model.pos_embed[0, 1:][[1 * 8 + 2, 7 * 8]]
    torch.testing.assert_close(masked[flat], expected)


@torch.no_grad()
def test_empty_mask_changes_nothing_and_bad_masks_are_refused():
    model = tiny(masked_im_modeling=True)
    model.masked_embed.normal_()
    x = torch.randn(2, 3, 32, 32)
    empty = torch.zeros(2, 8, 8, dtype=torch.bool)
    torch.testing.assert_close(model(x, mask=empty), model(x))
    with pytest.raises(ValueError, match="mask has shape"):
        model(x, mask=torch.zeros(2, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="masked_im_modeling"):
        tiny()(x, mask=empty)


def test_mask_token_gets_a_gradient_even_with_an_empty_mask():
    # DDP needs every parameter in the graph on every step, also before pred_start_epoch
    model = tiny(masked_im_modeling=True)
    model(torch.randn(1, 3, 32, 32), mask=torch.zeros(1, 8, 8, dtype=torch.bool)).sum().backward()
    assert model.masked_embed.grad is not None


def test_tokens_at_an_index_equal_all_tokens_there_with_drop_path_and_gradients():
    """Only the returned tokens go through the last block's MLP: the same values and gradients as
    computing every token, drop path (drawn per image as timm does) included."""
    # float64: the two paths sum the [CLS] gradient in another order, ~1e-5 apart in float32
    model = tiny(drop_path_rate=0.5).double().train()
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    index = torch.tensor([[0, 0], [1, 0], [2, 0], [0, 5], [2, 64], [2, 3]])  # (image, token); token 0 is [CLS]

    def run(forward):
        model.zero_grad()
        torch.manual_seed(3)
        out = forward()
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        return out, {n: p.grad.clone() for n, p in model.named_parameters()}

    for fast, reference in [
        (lambda: model(x, token_index=index), lambda: model(x, return_all_tokens=True)[index[:, 0], index[:, 1]]),
        (lambda: model(x), lambda: model(x, return_all_tokens=True)[:, 0]),  # [CLS] only
    ]:
        (out, grads), (expected, expected_grads) = run(fast), run(reference)
        torch.testing.assert_close(out, expected)
        for name, grad in expected_grads.items():
            torch.testing.assert_close(grads[name], grad, msg=name)
    # drop path really dropped something (in training the outputs differ from evaluation's)
    torch.manual_seed(3)
    assert not torch.allclose(model(x, token_index=index), model.eval()(x, token_index=index))
    mlp_rows = []
    model.blocks[-1].mlp.register_forward_hook(lambda module, args, out: mlp_rows.append(args[0].shape[0]))
    model(x, token_index=index), model(x)
    assert mlp_rows == [6, 3]
    with pytest.raises(ValueError, match="not both"):
        model(x, return_all_tokens=True, token_index=index)


@torch.no_grad()
def test_explicit_attention_gives_the_same_tokens():
    model = tiny()
    x = torch.randn(2, 3, 32, 32)
    fused = model(x, return_all_tokens=True)
    assert all(block.attn.fused_attn for block in model.blocks)  # timm's default here: SDPA
    use_explicit_attention(model)
    assert not any(block.attn.fused_attn for block in model.blocks)
    torch.testing.assert_close(model(x, return_all_tokens=True), fused)


def test_drop_path_ramps_linearly():
    model = vit_tiny(depth=3, drop_path_rate=0.2)
    assert [getattr(b.drop_path1, "drop_prob", 0.0) for b in model.blocks] == pytest.approx([0.0, 0.1, 0.2])


def test_unknown_arch_is_refused():
    with pytest.raises(ValueError, match="unknown arch 'vit_huge'"):
        build_backbone("vit_huge")
