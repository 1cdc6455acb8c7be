import torch
from torch import nn

from ibot.train.ema import EMAUpdater
from ibot.train.optim import cancel_last_layer_gradients, clip_gradients_per_param, param_groups_weight_decay


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 4))
        self.fc = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.last_layer = nn.Linear(4, 2, bias=False)


def test_param_groups_follow_official_rule():
    model = Tiny()
    decay, no_decay = param_groups_weight_decay(model)
    assert {id(p) for p in decay["params"]} == {id(model.cls_token), id(model.fc.weight), id(model.last_layer.weight)}
    assert {id(p) for p in no_decay["params"]} == {id(model.fc.bias), id(model.norm.weight), id(model.norm.bias)}
    assert no_decay["weight_decay"] == 0.0


def test_clipping_is_per_parameter():
    a, b = nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(2))
    a.grad = torch.tensor([3.0, 4.0, 0.0])  # norm 5 -> clipped to ~3
    b.grad = torch.tensor([0.6, 0.8])  # norm 1 -> untouched
    norms = clip_gradients_per_param([a, b], clip=3.0)
    assert torch.allclose(norms, torch.tensor([5.0, 1.0]))
    assert torch.allclose(a.grad.norm(), torch.tensor(3.0), atol=1e-5)
    assert torch.allclose(b.grad, torch.tensor([0.6, 0.8]))
    # global clipping would have scaled b too: per-parameter clipping must not
    assert torch.allclose(a.grad / a.grad.norm(), torch.tensor([0.6, 0.8, 0.0]))


def test_last_layer_frozen_only_during_first_epochs():
    model = Tiny()
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    cancel_last_layer_gradients(model, epoch=0, freeze_last_layer=1)
    assert model.last_layer.weight.grad is None and model.fc.weight.grad is not None
    model.last_layer.weight.grad = torch.ones_like(model.last_layer.weight)
    cancel_last_layer_gradients(model, epoch=1, freeze_last_layer=1)
    assert model.last_layer.weight.grad is not None


def test_ema_update_matches_formula_and_skips_student_only_params():
    student, teacher = Tiny(), Tiny()
    student.masked_embed = nn.Parameter(torch.ones(1, 4))
    before = {n: p.clone() for n, p in teacher.named_parameters()}
    EMAUpdater(student, teacher).update(0.9)
    for name, param in teacher.named_parameters():
        expected = 0.9 * before[name] + 0.1 * dict(student.named_parameters())[name]
        assert torch.allclose(param, expected)
    assert not hasattr(teacher, "masked_embed")
