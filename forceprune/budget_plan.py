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
            dead: Sequence[torch.Tensor], min_width: int = 1) -> Masks:
    """Per unit set, the ``(G,)`` mask of units to remove for the kept cost fraction to reach
    ``target``: captured units first, then the weakest live ones by score, with additive
    per-unit costs (``costs[k]``: the cost of one unit of set ``k``; ``dense_cost``: the whole
    model's). Every set keeps ``min_width`` units."""
    out = [d.clone().bool() for d in dead]
    removed = sum(float(d.sum()) * c for d, c in zip(out, costs))
    goal = (1.0 - target) * dense_cost
    if removed >= goal:
        return out
    candidates = sorted((float(sc[i]), k, i) for k, sc in enumerate(scores) for i in range(len(sc)) if not out[k][i])
    left = [len(d) - int(d.sum()) for d in out]
    for _, k, i in candidates:
        if removed >= goal:
            break
        if left[k] <= min_width:
            continue
        out[k][i] = True
        left[k] -= 1
        removed += costs[k]
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
