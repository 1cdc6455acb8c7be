import copy

import torch
from timm.layers import DropPath

from ibot.hub import network_state
from ibot.models import IBOTHead, MultiCropWrapper, swin_tiny, vit_tiny
from ibot.data.pretrain import bucket_rows, pad_mask_index
from tests.dense_reference import dense_outputs


def student(**head_kwargs):
    backbone = vit_tiny(patch_size=8, img_size=32, embed_dim=32, depth=1, num_heads=2, masked_im_modeling=True)
    head = IBOTHead(32, 16, patch_out_dim=12, hidden_dim=16, bottleneck_dim=8, **head_kwargs)
    return MultiCropWrapper(backbone, head).eval()


@torch.no_grad()
def test_outputs_are_head_of_backbone_per_crop_kind():
    model = student()
    model.backbone.masked_embed.normal_()
    global_crops, local_crops = torch.randn(4, 3, 32, 32), torch.randn(6, 3, 16, 16)
    masks = torch.rand(4, 4, 4) > 0.5
    index = masks.flatten(1).nonzero()
    cls, patch, local_cls, backbone_cls, patch_mean = model(global_crops, masks, local_crops, mask_index=index)
    assert patch_mean is None
    assert cls.shape == (4, 16) and patch.shape == (len(index), 12) and local_cls.shape == (6, 16)
    expected_cls, expected_patch = model.head(model.backbone(global_crops, mask=masks, return_all_tokens=True))
    torch.testing.assert_close(cls, expected_cls)
    torch.testing.assert_close(patch, expected_patch[index[:, 0], index[:, 1]])
    torch.testing.assert_close(local_cls, model.head(model.backbone(local_crops)))
    torch.testing.assert_close(backbone_cls, model.backbone(global_crops, mask=masks))
    # the masks reach the backbone; local crops are optional
    assert not torch.allclose(model(global_crops, mask_index=index)[0], cls)
    assert model(global_crops, mask_index=index).local_cls is None


def test_one_backward_reaches_every_parameter():
    model = student().train()
    masks = torch.ones(2, 4, 4, dtype=torch.bool)
    cls, patch, local_cls, *_ = model(torch.randn(2, 3, 32, 32), masks, torch.randn(2, 3, 16, 16),
                                      mask_index=masks.flatten(1).nonzero())
    (cls.sum() + patch.sum() + local_cls.sum()).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def test_swin_student_gives_pooled_and_last_stage_tokens():
    backbone = swin_tiny(embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), masked_im_modeling=True)
    model = MultiCropWrapper(backbone, IBOTHead(backbone.embed_dim, 16, hidden_dim=16, bottleneck_dim=8)).eval()
    every = torch.ones(2, 2, 2, dtype=torch.bool)
    cls, patch, local_cls, *_ = model(torch.randn(2, 3, 64, 64), every, torch.randn(3, 3, 32, 32),
                                      mask_index=every.flatten(1).nonzero())
    assert cls.shape == (2, 16) and patch.shape == (8, 16) and local_cls.shape == (3, 16)
    # packed outputs through Swin's token_index
    masks = torch.tensor([[[True, False], [False, True]], [[False, False], [False, False]]])
    packed = model(torch.randn(2, 3, 64, 64), masks, mask_index=masks.flatten(1).nonzero())
    assert packed.patch.shape == (2, 16) and packed.cls.shape == (2, 16)


def test_official_teacher_state_dict_loads_as_is(fixtures_dir, official_arch, official_vit, official_head):
    # the official teacher is MultiCropWrapper(backbone, head): keys backbone.* and head.*
    backbone_state, head_state = network_state(fixtures_dir / "vit_full_checkpoint.pth", "teacher")
    state = {f"backbone.{k}": v for k, v in backbone_state.items()} | {f"head.{k}": v for k, v in head_state.items()}
    backbone = vit_tiny(patch_size=official_arch["patch_size"], img_size=official_arch["img_size"], **official_vit)
    model = MultiCropWrapper(backbone, IBOTHead(**official_head))
    model.load_state_dict(state, strict=True)
    assert set(model.state_dict()) == set(state)


def test_packed_student_is_exact_for_the_loss_and_skips_unmasked_tokens():
    torch.manual_seed(0)
    full = student().train()
    full.backbone.masked_embed.data.normal_()
    full.backbone.blocks[-1].drop_path1 = DropPath(0.5)  # the packed last block draws drop path as timm does
    full.backbone.blocks[-1].drop_path2 = DropPath(0.5)
    sparse = copy.deepcopy(full)
    global_crops, masks = torch.randn(4, 3, 32, 32), torch.rand(4, 4, 4) > 0.6
    local_crops = torch.randn(6, 3, 16, 16)
    masks[0] = False  # an unmasked crop, as the official ratios give half the time
    head_rows, mlp_rows = [], []
    sparse.head.mlp.register_forward_hook(lambda module, args, out: head_rows.append(args[0].shape[0]))
    sparse.backbone.blocks[-1].mlp.register_forward_hook(lambda module, args, out: mlp_rows.append(args[0].shape))
    outputs = []
    flat = masks.flatten(1)
    for model in (full, sparse):
        torch.manual_seed(1)
        if model is full:  # every token, as the official code projects them
            cls, patch, local_cls, backbone_cls, _ = dense_outputs(full, global_crops, masks, local_crops)
        else:
            cls, patch, local_cls, backbone_cls, _ = sparse(global_crops, masks, local_crops, mask_index=flat.nonzero())
        # what the loss does with the student's patch outputs: read them at masked positions only
        masked = patch[flat] if patch.dim() == 3 else patch
        loss = cls.square().sum() + masked.log_softmax(-1).sum() + local_cls.square().sum() + backbone_cls.sum()
        loss.backward()
        outputs.append((cls, patch, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (cls_a, patch_a, grads_a), (cls_b, patch_b, grads_b) = outputs
    torch.testing.assert_close(cls_a, cls_b)
    assert patch_a.shape == (4, 16, patch_a.shape[-1]) and patch_b.shape == (int(flat.sum()), patch_a.shape[-1])
    torch.testing.assert_close(patch_a[flat], patch_b)  # packed: the masked rows, in nonzero() order
    assert grads_a.keys() == grads_b.keys() and "head.mlp.0.weight" in grads_a
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], msg=name)
    assert head_rows == [4, int(flat.sum()), 6]  # the head saw the [CLS] rows, the masked tokens, the local [CLS]
    # the last block's MLP: [CLS] and masked tokens of the global crops, [CLS] of the local crops
    assert [tuple(shape) for shape in mlp_rows] == [(4 + int(flat.sum()), 32), (6, 32)]
    torch.manual_seed(1)
    padded = sparse(global_crops, masks, local_crops, mask_index=pad_mask_index(flat.nonzero()))  # as a batch has it
    assert padded.patch.shape[0] == bucket_rows(int(flat.sum())) > int(flat.sum())
    torch.testing.assert_close(padded.patch[:int(flat.sum())], patch_b)  # the padding rows come last


@torch.no_grad()
def test_packed_teacher_targets_and_their_mean_match_the_dense_outputs():
    torch.manual_seed(0)
    teacher = student()
    global_crops, masks = torch.randn(4, 3, 32, 32), torch.rand(4, 4, 4) > 0.6
    masks[1] = False
    flat = masks.flatten(1)
    dense = dense_outputs(teacher, global_crops)
    packed = teacher(global_crops, mask_index=flat.nonzero())  # the teacher sees the unmasked crops
    torch.testing.assert_close(packed.cls, dense.cls)
    torch.testing.assert_close(packed.patch, dense.patch[flat])
    assert packed.patch_mean.shape == (4, dense.patch.shape[-1])
    # mean of the projections == projection of the mean feature (a linear layer): rounding apart
    torch.testing.assert_close(packed.patch_mean, dense.patch.mean(1), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(packed.patch_mean, dense.patch[:, 0])  # really a mean over tokens
