"""Force profiles and penalties against hand calculations."""
import math

import pytest
import torch

import forceprune as fp
from forceprune import forces


@pytest.mark.parametrize("width", [4, 16, 64, 512])
def test_etp_far_near_ratio_is_e_to_the_scale_for_any_width(width):
    phi = forces.create("etp", scale=5.0).profile(width)
    assert phi[0].item() == pytest.approx(1.0)
    assert (phi[-1] / phi[0]).item() == pytest.approx(math.exp(5.0), rel=1e-5)


def test_etp_paper_distance_norm_uses_lambda_exp_s_over_g():
    width = 10
    phi = forces.create("etp", scale=5.0, distance_norm="G").profile(width)
    lam = math.exp(5.0 / width)
    assert phi.tolist() == pytest.approx([lam**d for d in range(width)], rel=1e-5)


def test_official_preset_matches_1_01_pow_500_over_c():
    pruner_force = fp.forces.resolve("etp-official")[0]
    c = 64
    expected = [(1.01 ** (500 / c)) ** i for i in range(c)]
    assert pruner_force.profile(c).tolist() == pytest.approx(expected, rel=1e-3)
    assert pruner_force.norm == "l1" and pruner_force.include == "weights"


def test_linear_torque_has_equal_steps_and_exponential_has_equal_ratios():
    lin = forces.create("torque").profile(5)
    exp = forces.create("etp", scale=4.0).profile(5)
    assert lin.tolist() == pytest.approx([0, 0.25, 0.5, 0.75, 1.0])
    ratios = (exp[1:] / exp[:-1]).tolist()
    assert ratios == pytest.approx([math.exp(1.0)] * 4, rel=1e-5)
    assert forces.create("torque", normalize=False).profile(5).tolist() == pytest.approx([0, 1, 2, 3, 4])


@pytest.mark.parametrize("name", ["etp", "torque", "gravity", "electrostatic", "group_lasso"])
def test_profiles_are_monotone_in_distance(name):
    phi = forces.create(name).profile(12)
    assert all(b >= a - 1e-6 for a, b in zip(phi[1:-1], phi[2:])), phi


@pytest.mark.parametrize("name", ["etp", "torque", "group_lasso", "gravity", "electrostatic"])
def test_a_profile_computed_once_per_size_is_the_same_and_safe_to_modify(name):
    """Positional laws cache their profile per size (the penalty asks every step); the norms
    still move the inverse-square laws' masses, and a caller's edit does not reach the cache."""
    force = forces.create(name)
    first = force.profile(9, torch.linspace(0.1, 1.0, 9))
    first.mul_(0)  # the caller's copy
    again = force.profile(9, torch.linspace(0.1, 1.0, 9))
    assert again.abs().sum() > 0
    heavier = force.profile(9, torch.linspace(0.1, 1.0, 9).flip(0))
    assert force.positional == (name in ("etp", "torque", "group_lasso"))
    assert torch.equal(again, heavier) == force.positional, "only the inverse-square laws read the norms"


def test_middle_pivot_is_symmetric_and_ranked_pivot_follows_norms():
    phi = forces.create("etp", pivot="middle").profile(7)
    assert phi.argmin().item() == 3
    assert phi.tolist() == pytest.approx(phi.flip(0).tolist())
    norms = torch.tensor([0.1, 3.0, 2.0, 0.5])
    ranked = forces.create("torque", pivot="ranked").profile(4, norms)
    # ranks by norm, largest first: unit 1 -> 0, unit 2 -> 1, unit 3 -> 2, unit 0 -> 3
    assert ranked.tolist() == pytest.approx([1.0, 0.0, 1 / 3, 2 / 3])


def test_inverse_square_readings_point_opposite_ways():
    tail = forces.create("gravity", distance="from_tail", eps=0.1).profile(11)
    literal = forces.create("gravity", distance="index", eps=0.1).profile(11)
    assert tail[-1].item() == pytest.approx((1.1 / 0.1) ** 2)  # strongest at the far end
    assert literal[1] > literal[-1]  # literal 1/d^2: strongest next to the anchor
    assert tail[0].item() == 0 and literal[0].item() == 0  # the anchor feels no force


def test_electrostatic_positional_charges_spare_the_kept_side():
    phi = forces.create("electrostatic", keep_ratio=0.5).profile(10)
    x = torch.arange(10) / 9
    assert (phi[x < 0.5] == 0).all() and (phi[x >= 0.5] > 0).all()


def test_penalty_value_and_gradient_by_hand_on_two_layers():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4, bias=False), torch.nn.ReLU(), torch.nn.Linear(4, 2, bias=False))
    pruner = fp.ForcePruner(model, torch.randn(1, 3), force="etp", beta=0.1, scale=2.0, norm="l1", reduction="mean")
    w1, w2 = model[0].weight, model[2].weight
    phi = torch.exp(2.0 * torch.arange(4) / 3)  # pivot 0, farthest unit at distance 3
    # unit i = row i of w1 plus column i of w2 (include="all")
    norms = w1.abs().sum(1) + w2.abs().sum(0)
    expected = 0.1 * (phi * norms).sum() / 4
    pen = pruner.penalty()
    assert pen.item() == pytest.approx(expected.item(), rel=1e-6)
    pen.backward()
    assert torch.allclose(w1.grad, 0.1 / 4 * phi[:, None] * w1.sign())
    assert torch.allclose(w2.grad, 0.1 / 4 * phi[None, :] * w2.sign())


def test_l2_penalty_on_a_weight_two_unit_sets_share():
    """The middle weight holds the rows of one set and the columns of the other: its |w|**2 is
    computed once and shared, and value and gradient equal the penalty written out by hand."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4, bias=False), torch.nn.ReLU(), torch.nn.Linear(4, 5, bias=False),
                                torch.nn.ReLU(), torch.nn.Linear(5, 2, bias=False))
    pruner = fp.ForcePruner(model, torch.randn(1, 3), force="etp", beta=0.1, scale=2.0, norm="l2")
    w1, w2, w3 = (model[i].weight for i in (0, 2, 4))

    def by_hand():
        first = (w1.square().sum(1) + w2.square().sum(0)).sqrt()  # unit i: row i of w1, column i of w2
        second = (w2.square().sum(1) + w3.square().sum(0)).sqrt()
        return sum(0.1 * (torch.exp(2.0 * torch.arange(len(n)) / (len(n) - 1)) * n).sum() / len(n)
                   for n in (first, second))

    expected = torch.autograd.grad(by_hand(), (w1, w2, w3))
    pen = pruner.penalty()
    assert pen.item() == pytest.approx(by_hand().item(), rel=1e-6)
    pen.backward()
    for w, g in zip((w1, w2, w3), expected):
        assert torch.allclose(w.grad, g, rtol=1e-5, atol=1e-8)


def test_l2_penalty_gradient_is_finite_on_zero_units():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight[2:] = 0
        model[0].bias[2:] = 0
        model[2].weight[:, 2:] = 0
    pruner = fp.ForcePruner(model, torch.randn(1, 3), force="etp", norm="l2")
    pruner.penalty().backward()
    assert torch.isfinite(model[0].weight.grad).all()
    assert (model[0].weight.grad[2:] == 0).all()


def test_a_new_force_law_is_one_small_class():
    from dataclasses import dataclass

    @forces.register_force("test_quadratic")
    @dataclass(frozen=True)
    class Quadratic(forces.Force):
        def weights(self, x, norms, anchor, signs=None):
            return x**2

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    pruner = fp.ForcePruner(model, torch.randn(1, 3), force="test_quadratic", beta=1.0)
    assert pruner.force.profile(3).tolist() == pytest.approx([0, 0.25, 1.0])
    assert pruner.penalty().item() > 0


@pytest.mark.parametrize("name", ["plain_cnn", "residual", "dense_concat", "inverted_residual", "mlp",
                                  "transformer_block"])
def test_unit_sums_without_gather_or_scatter_equal_the_sums_over_each_units_elements(name):
    """The penalty's fast path (slices in unit order need no index_select / index_add) against
    the plain definition: per unit, the sum of its elements' squares over every slice."""
    import zoo

    model, x = zoo.build(name)
    pruner = fp.ForcePruner(model, x)
    for us in pruner.unit_sets:
        want = torch.zeros(us.size, dtype=torch.float64)
        for s in us.select("all"):
            want.index_add_(0, s.unit, s.elements().detach().double().pow(2).sum(1))
        got = us.unit_sums("all", 2)
        assert torch.allclose(got.double(), want, rtol=1e-5), us.name
        got.sum().backward()  # differentiable, as the penalty needs
