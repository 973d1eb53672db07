"""The budget's plan on synthetic numbers: which units must go, and the scale that zeroes them in time."""
import pytest
import torch

from forceprune.budget_plan import must_go, needed_scale


def test_must_go_takes_captured_units_then_the_weakest_by_score():
    scores = [torch.tensor([3.0, 1.0, 2.0, 4.0]), torch.tensor([0.5, 5.0])]
    costs = [10.0, 30.0]  # dense cost 4 * 10 + 2 * 30 = 100
    dead = [torch.tensor([False, False, False, True]), torch.zeros(2, dtype=torch.bool)]
    go = must_go(scores, costs, 100.0, target=0.45, dead=dead)  # remove >= 55: the dead unit (10), then 0.5 (30), 1.0 (10), 2.0 (10)
    assert go[0].tolist() == [False, True, True, True] and go[1].tolist() == [True, False]


def test_with_round_to_a_set_that_loses_units_keeps_a_multiple():
    scores = [torch.arange(16.0), torch.arange(8.0)]
    dead = [torch.zeros(16, dtype=torch.bool), torch.zeros(8, dtype=torch.bool)]
    # every unit costs 1 of a dense 24: target 0.75 needs >= 6 units gone, which leaves widths
    # that are not multiples of 4; rounded, each set that loses units loses its next weakest too
    go = must_go(scores, [1.0, 1.0], 24.0, target=0.75, dead=dead)
    kept = [len(g) - int(g.sum()) for g in go]
    rounded = must_go(scores, [1.0, 1.0], 24.0, target=0.75, dead=dead, round_to=4)
    kept_rounded = [len(g) - int(g.sum()) for g in rounded]
    assert all(k % 4 == 0 for k in kept_rounded) and kept != kept_rounded
    assert all((g | r).equal(r) for g, r in zip(go, rounded)), "rounding only adds the next weakest units"
    assert sum(kept_rounded) <= sum(kept)


def test_every_set_keeps_min_width():
    go = must_go([torch.tensor([1.0, 2.0])], [1.0], 2.0, target=0.01, dead=[torch.zeros(2, dtype=torch.bool)], min_width=1)
    assert go[0].tolist() == [True, False]


def test_needed_scale_zeroes_the_slowest_unit_that_must_go_in_time():
    norms = [torch.tensor([1.0, 4.0, 9.0])]
    shrink = [torch.tensor([0.1, 0.2, 0.3])]  # steps to zero at scale 1: 10, 20, 30
    go = [torch.tensor([True, True, False])]
    dead = [torch.zeros(3, dtype=torch.bool)]
    assert needed_scale(norms, shrink, go, dead, steps_left=5, safety=1.0) == pytest.approx(20 / 5)
    assert needed_scale(norms, shrink, go, dead, steps_left=5, safety=2.0) == pytest.approx(8.0)
    assert needed_scale(norms, shrink, [torch.zeros(3, dtype=torch.bool)], dead, 5) is None
    assert needed_scale(norms, [torch.tensor([0.0, 0.2, 0.3])], go, dead, 5) is None, "a unit the force cannot move"
    assert needed_scale(norms, shrink, go, dead, steps_left=0) is None


def _greedy_reference(scores, costs, dense_cost, target, dead, min_width):
    """must_go's rule one unit at a time: captured units, then live ones by (score, set, index)
    while the removed cost is below the goal, skipping a set down to min_width."""
    out = [d.clone().bool() for d in dead]
    removed = sum(float(d.sum()) * c for d, c in zip(out, costs))
    goal = (1.0 - target) * dense_cost
    left = [len(d) - int(d.sum()) for d in out]
    for _, k, i in sorted((float(sc[i]), k, i) for k, sc in enumerate(scores) for i in range(len(sc)) if not out[k][i]):
        if removed >= goal:
            break
        if left[k] > min_width:
            out[k][i], left[k], removed = True, left[k] - 1, removed + costs[k]
    return out


@pytest.mark.parametrize("seed", range(40))
def test_must_go_matches_the_unit_by_unit_greedy_rule(seed):
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(1, 6, (1,), generator=g))
    sizes = torch.randint(1, 12, (n,), generator=g).tolist()
    scores = [torch.randint(0, 4, (s,), generator=g).float() for s in sizes]  # many ties
    dead = [torch.rand(s, generator=g) < 0.2 for s in sizes]
    costs = [float(c) for c in torch.randint(1, 4, (n,), generator=g)]
    dense = sum(s * c for s, c in zip(sizes, costs))
    target, min_width = float(torch.rand(1, generator=g)), int(torch.randint(0, 3, (1,), generator=g))
    got = must_go(scores, costs, dense, target, dead, min_width)
    want = _greedy_reference(scores, costs, dense, target, dead, min_width)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
