"""The proximal force step's in-place product (slices covering their parameter's dimension in
order) against its general gather / scatter path, on the zoo; the formula itself is
tests/test_text.py::test_proximal_step_is_group_soft_thresholding."""
import copy

import pytest
import torch

import forceprune as fp
import forceprune.proximal as proximal

import zoo


@pytest.mark.parametrize("name", sorted(zoo.ZOO))
def test_in_place_product_equals_the_general_path(name, monkeypatch):
    model, x = zoo.build(name)
    twin = copy.deepcopy(model)
    fast, general = (fp.ForcePruner(m, x, force="etp", beta=1.0, pivot="ranked") for m in (model, twin))
    shrink = [n / s.clamp_min(1e-12) for us in fast.unit_sets
              for n, s in [(us.unit_sums("all", 2).detach().sqrt(), us.numel("all").sqrt())]]
    lr = 0.05 * float(torch.cat(shrink).median())  # shrinks every unit, kills the far ones
    fast.proximal_step(lr)
    fast_used = any(proximal.in_order(s) for us in fast.unit_sets for s in us.slices)
    monkeypatch.setattr(proximal, "in_order", lambda s, size=None: False)
    general.proximal_step(lr)
    for (key, a), b in zip(model.state_dict().items(), twin.state_dict().values()):
        assert torch.equal(a, b), key
    original = zoo.build(name)[0].state_dict()
    assert any(not torch.equal(a, original[k]) for k, a in model.state_dict().items())  # it shrank
    assert any(bool((s.elements() == 0).all(1).any()) for us in fast.unit_sets for s in us.slices)  # and killed
    assert fast_used  # the in-place product ran
