"""The penalty's closed-form gradient (forceprune.penalty) against autograd through its definition
(Force.penalty on differentiable unit sums), over the zoo, every force law, norm and include."""
import pytest
import torch
import torch.nn as nn

import forceprune as fp
from forceprune.penalty import force_penalty
from forceprune.scoring import signs

import zoo


class GroupedConv(nn.Module):
    """A grouped conv reads the first conv's channels: its slices restrict rows per group."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.g = nn.Conv2d(8, 6, 3, padding=1, groups=2)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(self.g(torch.relu(self.a(x))).mean((2, 3)))


def reference(pruner, force, masks, importances, scale):
    """The penalty written with autograd through Force.penalty."""
    total = 0.0
    for us, a, mask, imp in zip(pruner.unit_sets, pruner._set_weights, masks, importances):
        total = total + a * force.penalty(us.unit_sums(force.include, force.power), signs(force, us), mask, imp)
    return total * scale


def grads(model, value):
    params = [p for p in model.parameters() if p.requires_grad]
    got = torch.autograd.grad(value, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, got)]


def check(model, x, force, seed=0, masked=False, scale=1.7):
    pruner = fp.ForcePruner(model, x, force=force)
    f = pruner.force
    g = torch.Generator().manual_seed(seed)
    masks = [(torch.rand(us.size, generator=g) > 0.3).float() if masked else None for us in pruner.unit_sets]
    importances = [torch.rand(us.size, generator=g) if masked else None for us in pruner.unit_sets]
    want = reference(pruner, f, masks, importances, scale)
    got = force_penalty(f, pruner.unit_sets, pruner._set_weights, masks, importances, scale)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    for w, h in zip(grads(model, want), grads(model, got)):
        assert torch.allclose(h, w, rtol=1e-4, atol=1e-9), (h - w).abs().max()


@pytest.mark.parametrize("name", sorted(zoo.ZOO))
@pytest.mark.parametrize("law", ["etp", "torque", "electrostatic", "gravity", "group_lasso"])
def test_closed_form_gradient_equals_autograd_on_the_zoo(name, law):
    model, x = zoo.build(name)
    check(model, x, fp.forces.create(law, beta=0.3, pivot="ranked" if law == "etp" else 0))


@pytest.mark.parametrize("norm", ["l1", "l2", "l2sq"])
@pytest.mark.parametrize("include", ["all", "producers", "weights"])
def test_every_norm_and_include_with_masks_and_importance(norm, include):
    model, x = zoo.build("residual")
    check(model, x, fp.forces.create("etp", beta=0.2, norm=norm, include=include, reduction="sum"), masked=True)


def test_grouped_conv_consumer_rows():
    torch.manual_seed(0)
    model, x = GroupedConv(), torch.randn(2, 3, 6, 6)
    check(model, x, fp.forces.create("etp", beta=0.5))
    check(model, x, fp.forces.create("torque", beta=0.5, norm="l1"), masked=True)
    pruner = fp.ForcePruner(model, x)
    assert any(s.group_rows for us in pruner.unit_sets for s in us.slices)  # the case this test is about


def test_zero_units_get_zero_gradient_and_frozen_layers_none():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight[2:] = 0
        model[0].bias[2:] = 0
        model[2].weight[:, 2:] = 0
    model[4].weight.requires_grad_(False)
    pruner = fp.ForcePruner(model, torch.randn(1, 3), force="etp", norm="l2")
    pruner.penalty().backward()
    assert torch.isfinite(model[0].weight.grad).all() and (model[0].weight.grad[2:] == 0).all()
    assert model[4].weight.grad is None and model[2].weight.grad.abs().sum() > 0


def test_an_in_place_change_before_backward_raises_and_no_grad_gives_the_value():
    model, x = zoo.build("mlp")
    pruner = fp.ForcePruner(model, x)
    pen = pruner.penalty()
    with torch.no_grad():
        value = pruner.penalty()
    assert not value.requires_grad and value.item() == pytest.approx(pen.item())
    with torch.no_grad():
        next(model.parameters()).mul_(0.5)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        pen.backward()
