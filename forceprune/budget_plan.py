"""How strong the force must be to meet a budget in the steps that are left: the controller's plan.

The budget controller (:class:`~forceprune.budget.BudgetController`) corrects the force scale
from the kept fraction it measures; on its own that reacts late on short schedules (it can
only grow the scale a little per update) and depends on the starting ``beta``. But what it
needs is visible at every update: the units that must go to meet the target are the weakest
by force-weighted score, and how fast the force shrinks each of them per step at scale 1 is
known from the force profile and the step size. So the scale that drives them to zero within
``steps_left`` steps is

    s_needed = safety * max_{u must go} ||w_u|| / (shrink_u * steps_left)

(``shrink_u``: the norm a unit loses per step from the force alone at scale 1; ``safety`` > 1
covers the task gradient, which pushes back, and a learning rate that decays). The controller
takes ``max(its own scale, s_needed)``.

Pure functions over per-unit-set tensors; nothing here touches a model.
"""
from __future__ import annotations

from typing import Sequence

import torch

Masks = list[torch.Tensor]


def must_go(scores: Sequence[torch.Tensor], costs: Sequence[float], dense_cost: float, target: float,
            dead: Sequence[torch.Tensor], min_width: int = 1, round_to: int = 1) -> Masks:
    """Per unit set, the ``(G,)`` mask of units to remove for the kept cost fraction to reach
    ``target``: captured units first, then the weakest live ones by score, with additive
    per-unit costs (``costs[k]``: the cost of one unit of set ``k``; ``dense_cost``: the whole
    model's). Every set keeps ``min_width`` units; with ``round_to`` a set that loses units loses
    enough more (its weakest) for its kept width to be a multiple of it, as removal will keep."""
    out = _must_go(scores, costs, dense_cost, target, dead, min_width)
    if round_to <= 1:
        return out
    for sc, go in zip(scores, out):
        kept = len(go) - int(go.sum())
        extra = kept % round_to if kept > round_to and kept < len(go) else 0
        if extra:
            live = torch.nonzero(~go).flatten()
            go[live[torch.sort(sc[live].float(), stable=True).indices[:extra]]] = True
    return out


def _must_go(scores: Sequence[torch.Tensor], costs: Sequence[float], dense_cost: float, target: float,
             dead: Sequence[torch.Tensor], min_width: int = 1) -> Masks:
    out = [d.clone().bool() for d in dead]
    removed = sum(float(d.sum()) * c for d, c in zip(out, costs))
    goal = (1.0 - target) * dense_cost
    if removed >= goal:
        return out
    # the candidates: per set, its live units weakest first, as many as it can spare; then all
    # of them in one stable score order (ties: set, then index), taken while the goal is not met
    sets, units, values = [], [], []
    for k, (sc, d) in enumerate(zip(scores, out)):
        live = torch.nonzero(~d).flatten()
        spare = len(live) - min_width
        if spare > 0:
            weakest = live[torch.sort(sc[live].float(), stable=True).indices[:spare]]
            sets.append(torch.full((spare,), k))
            units.append(weakest)
            values.append(sc[weakest].float())
    if not units:
        return out
    order = torch.sort(torch.cat(values), stable=True).indices
    sets_all, units_all = torch.cat(sets)[order], torch.cat(units)[order]
    cost = torch.tensor([float(c) for c in costs], dtype=torch.float64)[sets_all]
    take = int(((removed + torch.cumsum(cost, 0) - cost) < goal).sum())
    for k in sets_all[:take].unique().tolist():
        out[k][units_all[:take][sets_all[:take] == k]] = True
    return out


def needed_scale(norms: Sequence[torch.Tensor], shrink: Sequence[torch.Tensor], go: Masks, dead: Sequence[torch.Tensor],
                 steps_left: int, safety: float = 2.0) -> float | None:
    """The force scale that brings every live unit of ``go`` to zero within ``steps_left``
    steps, given its norm and its per-step ``shrink`` at scale 1 (``(G,)`` per set). None when
    there is nothing left to zero, no step left, or a unit the force does not shrink."""
    if steps_left <= 0:
        return None
    worst = 0.0
    for n, sh, g, d in zip(norms, shrink, go, dead):
        live = g & ~d.bool()
        if not bool(live.any()):
            continue
        if bool((sh[live] <= 0).any()):
            return None
        worst = max(worst, float((n[live] / sh[live]).max()))
    return safety * worst / steps_left if worst > 0 else None
