import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ibot.data.pretrain import masked_token_index
from ibot.loss import IBOTLoss, koleo_loss, sinkhorn_knopp
from tests.dense_reference import dense_loss, pack, packed_loss_inputs


def make_loss(**overrides) -> IBOTLoss:
    kwargs = dict(
        out_dim=16, patch_out_dim=12, ngcrops=2, nlcrops=3, warmup_teacher_temp=0.04,
        teacher_temp=0.07, warmup_teacher_temp2=0.04, teacher_temp2=0.07,
        warmup_teacher_temp_epochs=3, nepochs=10,
    )
    kwargs.update(overrides)
    return IBOTLoss(**kwargs)


def random_inputs(gen: torch.Generator, batch=3, ngcrops=2, nlcrops=3, grid=(2, 3)):
    """Crop-major random logits for make_loss's sizes (K=16, K2=12) and random masks."""
    rows, n = ngcrops * batch, grid[0] * grid[1]
    student = (torch.randn(rows, 16, generator=gen), torch.randn(rows, n, 12, generator=gen))
    teacher = (torch.randn(rows, 16, generator=gen), torch.randn(rows, n, 12, generator=gen))
    local = torch.randn(nlcrops * batch, 16, generator=gen) if nlcrops else None
    masks = [torch.rand(batch, *grid, generator=gen) < 0.5 for _ in range(ngcrops)]
    return student, teacher, local, masks


def test_matches_official_loss_across_the_warm_up_and_the_mim_start(fixtures_dir):
    ref = torch.load(fixtures_dir / "vit_loss_reference.pt", weights_only=True)
    cfg = ref["config"]
    loss = IBOTLoss(**cfg)
    epochs = [step["epoch"] for step in ref["steps"]]
    # the sequence crosses the teacher-temperature warm-up and switches the patch term on
    assert epochs[0] < cfg["mim_start_epoch"] <= epochs[-1] and epochs[-1] >= cfg["warmup_teacher_temp_epochs"]
    for step in ref["steps"]:
        out = dense_loss(  # the official outputs are dense: packed here for the loss
            loss,
            student_output=(step["student_cls"], step["student_patch"]),
            teacher_output=(step["teacher_cls"], step["teacher_patch"]),
            student_local_cls=step["student_local_cls"],
            student_mask=step["masks"],
            epoch=step["epoch"],
        )
        for key in ("cls", "patch", "loss"):
            assert out[key].item() == pytest.approx(step["expected"][key], rel=1e-5), (step["epoch"], key)
        torch.testing.assert_close(loss.center, step["center_after"], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(loss.center2, step["center2_after"], rtol=1e-5, atol=1e-7)


def test_buffers_in_state_dict():
    state = make_loss().state_dict()
    assert state["center"].shape == (1, 16) and state["center2"].shape == (1, 1, 12)


def test_no_masked_token_gives_zero_patch_loss():
    gen = torch.Generator().manual_seed(0)
    (s_cls, s_patch), teacher, local, masks = random_inputs(gen)
    s_patch.requires_grad_(True)
    out = dense_loss(make_loss(), (s_cls, s_patch), teacher, local, [torch.zeros_like(m) for m in masks], 0)
    assert out["patch"].item() == 0.0
    assert out["cls"].item() > 0
    assert out["loss"].item() == pytest.approx(out["cls"].item(), rel=1e-6)
    out["loss"].backward()
    assert torch.count_nonzero(s_patch.grad) == 0


def test_only_masked_tokens_count():
    gen = torch.Generator().manual_seed(1)
    (s_cls, s_patch), teacher, local, masks = random_inputs(gen)
    before = dense_loss(make_loss(), (s_cls, s_patch), teacher, local, masks, 0)["patch"]
    unmasked = ~torch.cat(masks).flatten(1)  # (G*B, N)
    noise = 5.0 * torch.randn(s_patch.shape, generator=gen)
    s_patch_changed = s_patch + noise * unmasked[..., None]
    after = dense_loss(make_loss(), (s_cls, s_patch_changed), teacher, local, masks, 0)["patch"]
    assert after.item() == pytest.approx(before.item(), rel=1e-6)


def test_forward_with_targets_hands_out_the_distributions_the_loss_scored_against():
    """The targets are the teacher's centred, sharpened softmax with the centres from before this
    step's update (the loss moves them after scoring), and the loss terms are forward's."""
    gen = torch.Generator().manual_seed(3)
    (s_cls, s_patch), (t_cls, t_patch), local, masks = random_inputs(gen, batch=4)
    padded, m = masked_token_index(torch.cat(masks))
    index = padded[:m]
    student, teacher = (s_cls, pack(s_patch, index)), (t_cls, pack(t_patch, index), t_patch.mean(1))
    loss, plain, epoch = make_loss(), make_loss(), 1
    for module in (loss, plain):
        module.center.copy_(torch.linspace(-1, 1, 16))
        module.center2.copy_(torch.linspace(1, -1, 12))
    center, center2 = loss.center.clone(), loss.center2.clone()
    terms, targets = loss.forward_with_targets(student, teacher, local, masks, epoch, index)
    assert not torch.equal(loss.center, center)  # updated after the targets were taken
    temp, temp2 = float(loss.teacher_temp_schedule[epoch]), float(loss.teacher_temp2_schedule[epoch])
    torch.testing.assert_close(targets.cls, F.softmax((t_cls - center) / temp, dim=-1), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(targets.patch, F.softmax((teacher[1] - center2[0]) / temp2, dim=-1),
                               rtol=1e-6, atol=1e-7)
    assert targets.cls.shape == (8, 16) and targets.patch.shape == (m, 12) and not targets.cls.requires_grad
    same = plain(student, teacher, local, masks, epoch, index)
    assert all(terms[key].item() == same[key].item() for key in ("cls", "patch", "loss"))


def test_patch_loss_equals_the_dense_official_formula_and_host_index():
    """Scoring masked tokens only (and with a host-computed index) gives the official dense sum:
    softmax and log-softmax over every token, times the mask, per-image mean, batch mean."""
    gen = torch.Generator().manual_seed(7)
    (s_cls, s_patch), (t_cls, t_patch), local, masks = random_inputs(gen, batch=4)
    masks[0][1] = False  # an image with no masked token counts as 0, as in the official code
    loss = make_loss()
    loss.center2.normal_(generator=gen)
    center2, epoch = loss.center2.clone(), 5
    s_patch.requires_grad_(True)
    out = dense_loss(loss, (s_cls, s_patch), (t_cls, t_patch), local, masks, epoch)
    mask = torch.cat(masks).flatten(1).float()
    teacher_p = F.softmax((t_patch - center2) / float(loss.teacher_temp2_schedule[epoch]), dim=-1)
    token_ce = -(teacher_p * F.log_softmax(s_patch / 0.1, dim=-1)).sum(-1)
    dense = ((token_ce * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    torch.testing.assert_close(out["patch"], dense, rtol=1e-6, atol=0)
    grad, = torch.autograd.grad(out["patch"], s_patch)
    dense_grad, = torch.autograd.grad(dense, s_patch)
    torch.testing.assert_close(grad, dense_grad, rtol=1e-5, atol=1e-8)

    # the index as a batch carries it (padded; its first M rows), the outputs packed as the wrapper
    # gives them (the teacher's with its mean over all tokens): the same loss and centre
    padded, m = masked_token_index(torch.cat(masks))
    index = padded[:m]
    both_loss = make_loss()
    both_loss.center2.copy_(center2)
    t_packed = (t_cls, pack(t_patch, index), t_patch.mean(1))
    both = both_loss((s_cls, pack(s_patch, index)), t_packed, local, masks, epoch, index)
    assert both["patch"].item() == out["patch"].item() and both["cls"].item() == out["cls"].item()
    torch.testing.assert_close(both_loss.center2, loss.center2, rtol=0, atol=0)
    with pytest.raises(ValueError, match="packed student patch outputs"):
        make_loss()((s_cls, pack(s_patch, index[1:])), t_packed, local, masks, epoch, index)
    with pytest.raises(ValueError, match="packed teacher patch outputs"):
        make_loss()((s_cls, pack(s_patch, index)), (t_cls, t_packed[1][1:], t_packed[2]), local, masks, epoch, index)
    with pytest.raises(ValueError, match="patch_mean"):
        make_loss()((s_cls, pack(s_patch, index)), t_packed[:2], local, masks, epoch, index)


def test_dense_patch_outputs_are_refused():
    """One form: the loss takes the masked rows only, (M, K2), never every token (G*B, N, K2)."""
    gen = torch.Generator().manual_seed(7)
    student, teacher, local, masks = random_inputs(gen)
    packed_student, packed_teacher, index = packed_loss_inputs(student, teacher, masks)
    with pytest.raises(ValueError, match="packed student patch outputs"):
        make_loss()(student, packed_teacher, local, masks, 0, index)
    with pytest.raises(ValueError, match="packed teacher patch outputs"):
        make_loss()(packed_student, (*teacher, teacher[1].mean(1)), local, masks, 0, index)


def test_identical_distributions_reach_entropy_lower_bound():
    """Teacher temperature = student temperature and all crops alike: cross-entropy = entropy."""
    gen = torch.Generator().manual_seed(2)
    batch, ngcrops, nlcrops, n = 4, 2, 2, 5
    temps = dict(
        warmup_teacher_temp=0.1, teacher_temp=0.1, warmup_teacher_temp2=0.1, teacher_temp2=0.1
    )
    loss = make_loss(**temps, nlcrops=nlcrops)
    z = torch.randn(batch, 16, generator=gen)
    patch = torch.randn(ngcrops * batch, n, 12, generator=gen)
    g_cls, l_cls = z.repeat(ngcrops, 1), z.repeat(nlcrops, 1)
    masks = torch.ones(ngcrops * batch, 1, n, dtype=torch.bool)
    out = dense_loss(loss, (g_cls, patch), (g_cls, patch), l_cls, masks, 0)

    def entropy(logits):
        p = F.softmax(logits / 0.1, dim=-1)
        return -(p * p.log()).sum(-1).mean()

    assert out["cls"].item() == pytest.approx(entropy(z).item(), rel=1e-5)
    assert out["patch"].item() == pytest.approx(entropy(patch).item(), rel=1e-5)
    # any other student distribution costs more (Gibbs' inequality); a fresh loss has zero centres
    noisy_student = (
        g_cls + 0.3 * torch.randn(g_cls.shape, generator=gen),
        patch + 0.3 * torch.randn(patch.shape, generator=gen),
    )
    noisy = dense_loss(make_loss(**temps, nlcrops=nlcrops), noisy_student, (g_cls, patch), l_cls, masks, 0)
    assert noisy["cls"] > out["cls"] and noisy["patch"] > out["patch"]


def test_invariant_to_a_constant_added_to_teacher_logits():
    gen = torch.Generator().manual_seed(3)
    loss_a, loss_b = make_loss(), make_loss()
    for epoch in (0, 1, 4):
        student, (t_cls, t_patch), local, masks = random_inputs(gen)
        a = dense_loss(loss_a, student, (t_cls, t_patch), local, masks, epoch)
        b = dense_loss(loss_b, student, (t_cls + 7.0, t_patch - 3.0), local, masks, epoch)
        for key in a:
            assert b[key].item() == pytest.approx(a[key].item(), rel=1e-5)
    shift = 1 - 0.9**3
    torch.testing.assert_close(loss_b.center - loss_a.center, torch.full((1, 16), 7 * shift))
    torch.testing.assert_close(loss_b.center2 - loss_a.center2, torch.full((1, 1, 12), -3 * shift))


def test_center_is_ema_of_raw_teacher_means_and_updated_after_the_loss():
    gen = torch.Generator().manual_seed(4)
    loss = make_loss(center_momentum=0.8, center_momentum2=0.6)
    student, (t_cls, t_patch), local, masks = random_inputs(gen)
    first = dense_loss(loss, student, (t_cls, t_patch), local, masks, 0)
    torch.testing.assert_close(loss.center, 0.2 * t_cls.mean(0, keepdim=True))
    torch.testing.assert_close(loss.center2, 0.4 * t_patch.mean((0, 1)).view(1, 1, -1))
    # the first call used zero centres: a fresh loss gives the same value
    fresh = dense_loss(make_loss(), student, (t_cls, t_patch), local, masks, 0)
    assert fresh["loss"].item() == first["loss"].item()


def test_center_is_averaged_over_processes(monkeypatch):
    """Two ranks with half the batch each end with the centres of one process with all of it."""
    gen = torch.Generator().manual_seed(5)
    student, (t_cls, t_patch), local, masks = random_inputs(gen, batch=4)
    full = make_loss()
    dense_loss(full, student, (t_cls, t_patch), local, masks, 0)

    def half(x, crops, rank):  # rank's 2 images of each crop, crop-major
        return x.unflatten(0, (crops, 4))[:, 2 * rank:2 * rank + 2].flatten(0, 1)

    other_sums = {
        16: half(t_cls, 2, 1).sum(0, keepdim=True),
        12: half(t_patch, 2, 1).mean(1).sum(0, keepdim=True),
    }

    def all_reduce(tensor):  # rank 1's sums, told apart by width (K=16, K2=12)
        tensor += other_sums[tensor.shape[-1]]

    monkeypatch.setattr(torch.distributed, "is_available", lambda: True)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce)
    rank0 = make_loss()
    dense_loss(
        rank0, (half(student[0], 2, 0), half(student[1], 2, 0)), (half(t_cls, 2, 0), half(t_patch, 2, 0)),
        half(local, 3, 0), [m[:2] for m in masks], 0,
    )
    torch.testing.assert_close(rank0.center, full.center)
    torch.testing.assert_close(rank0.center2, full.center2)


def test_teacher_temperature_schedules():
    loss = make_loss(warmup_teacher_temp_epochs=3, nepochs=10, mim_start_epoch=4)
    np.testing.assert_allclose(loss.teacher_temp_schedule, [0.04, 0.055] + [0.07] * 8)
    np.testing.assert_allclose(loss.teacher_temp2_schedule, [0.04] * 5 + [0.055] + [0.07] * 4)
    # the shifted patch temperature is what the loss uses: epoch 2 patch loss == epoch 0 patch loss
    gen = torch.Generator().manual_seed(6)
    student, teacher, local, masks = random_inputs(gen)
    shifted = dense_loss(loss, student, teacher, local, masks, 2)
    at_0 = dense_loss(make_loss(), student, teacher, local, masks, 0)
    at_2 = dense_loss(make_loss(), student, teacher, local, masks, 2)
    assert shifted["patch"].item() == pytest.approx(at_0["patch"].item(), rel=1e-6)
    assert shifted["cls"].item() == pytest.approx(at_2["cls"].item(), rel=1e-6)
    assert shifted["patch"].item() != pytest.approx(at_2["patch"].item(), rel=1e-3)


def test_mask_as_one_tensor_equals_list_and_local_crops_optional():
    gen = torch.Generator().manual_seed(7)
    student, teacher, local, masks = random_inputs(gen)
    from_list = dense_loss(make_loss(), student, teacher, local, masks, 1)
    from_tensor = dense_loss(make_loss(), student, teacher, local, torch.cat(masks), 1)
    for key in from_list:
        assert from_tensor[key].item() == from_list[key].item()
    out = dense_loss(make_loss(nlcrops=0), student, teacher, None, masks, 1)
    assert torch.isfinite(out["loss"])


def test_mixed_precision_keeps_float32_sums():
    gen = torch.Generator().manual_seed(10)
    student, teacher, local, masks = random_inputs(gen)
    full = dense_loss(make_loss(), student, teacher, local, masks, 0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = dense_loss(make_loss(), student, teacher, local, masks, 0)
    for key in full:
        assert mixed[key].dtype == torch.float32
        assert mixed[key].item() == pytest.approx(full[key].item(), rel=1e-5)


def test_gradients_reach_student_only():
    gen = torch.Generator().manual_seed(8)
    (s_cls, s_patch), (t_cls, t_patch), local, masks = random_inputs(gen)
    for t in (s_cls, s_patch, t_cls, t_patch, local):
        t.requires_grad_(True)
    dense_loss(make_loss(), (s_cls, s_patch), (t_cls, t_patch), local, masks, 0)["loss"].backward()
    assert t_cls.grad is None and t_patch.grad is None
    assert all(t.grad.abs().sum() > 0 for t in (s_cls, s_patch, local))


def test_bad_inputs_raise():
    gen = torch.Generator().manual_seed(9)
    student, teacher, local, masks = random_inputs(gen)
    loss = make_loss()
    with pytest.raises(ValueError, match="epoch"):
        dense_loss(loss, student, teacher, local, masks, 10)
    packed_student, packed_teacher, index = packed_loss_inputs(student, teacher, masks)
    with pytest.raises(ValueError, match="student_mask"):  # masks of 4 crops for 6 rows of [CLS] outputs
        loss(packed_student, packed_teacher, local, [torch.zeros(2, 3, 3, dtype=torch.bool)] * 2, 0, index)
    with pytest.raises(ValueError, match="student_mask"):
        dense_loss(loss, student, teacher, local, masks[:1], 0)
    with pytest.raises(ValueError, match="crops"):
        dense_loss(loss, student, teacher, local[:3], masks, 0)
    with pytest.raises(ValueError, match="nepochs"):
        make_loss(warmup_teacher_temp_epochs=8, mim_start_epoch=4)
    with pytest.raises(ValueError, match="ngcrops"):
        make_loss(ngcrops=1, nlcrops=0)


def test_sinkhorn_knopp_rows_are_distributions_and_columns_balance():
    gen = torch.Generator().manual_seed(7)
    logits = torch.randn(24, 6, generator=gen)
    q = sinkhorn_knopp(logits, temp=0.5)
    torch.testing.assert_close(q.sum(1), torch.ones(24))
    balanced = sinkhorn_knopp(logits, temp=0.5, iterations=200)
    torch.testing.assert_close(balanced.sum(0), torch.full((6,), 24 / 6), rtol=1e-3, atol=1e-3)
    softmax = F.softmax(logits / 0.5, dim=-1)
    assert softmax.sum(0).std() > 10 * balanced.sum(0).std()  # plain softmax does not balance
    # a constant added to every logit changes nothing; identical rows give uniform targets
    torch.testing.assert_close(sinkhorn_knopp(logits + 3.0, temp=0.5), q)
    torch.testing.assert_close(sinkhorn_knopp(torch.ones(4, 5), 0.04), torch.full((4, 5), 0.2))
    assert sinkhorn_knopp(torch.zeros(0, 5), 0.04).shape == (0, 5)


def test_sinkhorn_centering_targets_only_masked_patches():
    gen = torch.Generator().manual_seed(8)
    student, (t_cls, t_patch), local, masks = random_inputs(gen)
    mask = torch.cat(masks).flatten(1)
    loss = make_loss(centering="sinkhorn")
    out = dense_loss(loss, student, (t_cls, t_patch), local, masks, 0)
    changed = t_patch + 5.0 * torch.randn(t_patch.shape, generator=gen) * (~mask)[..., None]
    again = dense_loss(make_loss(centering="sinkhorn"), student, (t_cls, changed), local, masks, 0)
    assert again["patch"].item() == pytest.approx(out["patch"].item(), rel=1e-6)
    mean = dense_loss(make_loss(), student, (t_cls, t_patch), local, masks, 0)
    assert out["cls"].item() != pytest.approx(mean["cls"].item(), rel=1e-3)
    with pytest.raises(ValueError, match="centering"):
        make_loss(centering="median")


def test_koleo_is_minus_mean_log_nearest_neighbour_distance():
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(7, 5, generator=gen)
    unit = F.normalize(x, dim=-1)
    distances = torch.cdist(unit, unit) + torch.diag(torch.full((7,), torch.inf))  # brute force
    want = -torch.log(distances.min(dim=1).values).mean()
    torch.testing.assert_close(koleo_loss(3.0 * x), want, rtol=1e-5, atol=1e-6)  # scale-free
    # spread rows cost less than rows bunched around one direction
    bunched = torch.randn(1, 5, generator=gen) + 0.01 * torch.randn(7, 5, generator=gen)
    assert koleo_loss(bunched) > koleo_loss(x) + 2.0
    # its gradient pushes a row away from its nearest neighbour
    pair = torch.tensor([[1.0, 0.0], [0.9, 0.1], [-1.0, 0.0]], requires_grad=True)
    koleo_loss(pair).backward()
    assert pair.grad[1, 1] < 0 and pair.grad[1, 0] > -1e-6
    with pytest.raises(ValueError, match="2 rows"):
        koleo_loss(torch.randn(1, 5))
