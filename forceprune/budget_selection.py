"""Which units to take so that a budget holds: the selection policy behind the controller.

Pure functions over per-unit-set ``(G,)`` bool masks (True = removed/captured), per-unit
scores (force-weighted importance, lower = weaker) and a ``fraction(masks)`` callback giving
the kept fraction of the dense cost (MACs, params or latency) if the masked units were removed.
:class:`~forceprune.pruner.ForcePruner` supplies those from its graph; nothing here touches a
model, so the policy can be read and tested on its own.

* :func:`capture_within_budget`: while training, capture no more candidates than the budget
  needs, crossing the target on cheap units where possible.
* :func:`complete_budget`: at removal, apply floors and rounding and, if the zero units were not
  enough, remove the weakest remaining units globally until the target holds.
* :func:`equalize` (``uniform=True``): the same number of units removed from every unit set of
  a class (:func:`uniform_classes`: same kind and size, e.g. the FFN of every layer), so that the
  pruned model has one width per kind and saves as a plain Hugging Face folder. Zero units only
  (``"min"``: lossless) or, when a budget must cut non-zero units, as many as the set losing most
  (``"max"``).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from .budget import Budget

Masks = list[torch.Tensor]
Fraction = Callable[[Masks], float]


def _ranked(masks: Sequence[torch.Tensor], scores: Sequence[torch.Tensor], pick: bool) -> list[tuple[float, int, int]]:
    """``(score, set index, unit index)`` of the units where ``mask == pick``, weakest first."""
    return sorted((float(sc[i]), k, i) for k, (m, sc) in enumerate(zip(masks, scores))
                  for i in torch.nonzero(m == pick).flatten().tolist())


def _with(masks: Masks, units: Sequence[tuple[float, int, int]]) -> Masks:
    out = [m.clone() for m in masks]
    for _, k, i in units:
        out[k][i] = True
    return out


def capture_within_budget(found: Masks, base: Masks, scores: Sequence[torch.Tensor], fraction: Fraction,
                          budget: Budget, tries: int = 32, may_wait: bool = False) -> tuple[Masks, bool]:
    """Of the capture candidates ``found``, those to capture now, and whether the target is met.

    ``base``: units already removable (captured). If taking every candidate keeps the fraction at
    or above the target, all are taken. Otherwise the weakest are taken up to the target, and the
    target is crossed (a budget is a ceiling) by :func:`_cross` (cheap units first);
    ``may_wait``: training has steps left for cheaper units to reach zero (see :func:`_cross`)."""
    merged = lambda masks: [b | m for b, m in zip(base, masks)]  # noqa: E731
    if fraction(merged(found)) >= budget.target:
        return found, False
    order = _ranked(found, scores, True)
    none = [torch.zeros_like(f) for f in found]
    lo, hi = 0, len(order)  # the largest n whose weakest-n keeps the fraction >= target
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fraction(merged(_with(none, order[:mid]))) >= budget.target:
            lo = mid
        else:
            hi = mid - 1
    chosen = _with(none, order[:lo])
    if lo == len(order):
        return chosen, False
    return _cross(chosen, merged, order[lo:], fraction, budget, tries, may_wait)


def _cross(chosen: Masks, merged: Callable[[Masks], Masks], rest: list[tuple[float, int, int]], fraction: Fraction,
           budget: Budget, tries: int, may_wait: bool) -> tuple[Masks, bool]:
    """Cross the target without overshooting it by much: units differ in cost (a LeNet-5 conv1
    filter is 4 % of the dense MACs, an fc1 neuron 0.03 %), so take the next candidates (weakest
    first) that keep the fraction within ``tolerance`` below the target, skipping those that
    would overshoot. If none lands there: while ``may_wait``, nothing more is captured and the
    force goes on, so that cheap units close the gap (on LeNet-5 / MNIST at 20x a conv1 filter
    took 0.0517 of the MACs to 0.0381, 26x, with 2,600 steps left); at the end, the budget is met
    where it stands if the fraction is within ``tolerance`` above the target (removal accepts
    that), else the weakest crossing unit is taken. Returns the masks and whether the target is met."""
    low = budget.target * (1 - budget.tolerance)
    current = fraction(merged(chosen))
    for unit in rest[:tries]:
        if current <= budget.target:
            return chosen, True
        trial = _with(chosen, [unit])
        value = fraction(merged(trial))
        if value >= low:
            chosen, current = trial, value
    if may_wait:
        return chosen, False
    if current <= budget.target * (1 + budget.tolerance):
        return chosen, True
    return _with(chosen, rest[:1]), True


def uniform_classes(keys: Sequence[object]) -> list[list[int]]:
    """Indices of the unit sets that must keep one width, grouped by ``keys[i]`` (e.g.
    ``(kind, size)`` of unit set ``i``); singletons are left out."""
    groups: dict[object, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    return [g for g in groups.values() if len(g) > 1]


def equalize(masks: Masks, classes: Sequence[Sequence[int]], scores: Sequence[torch.Tensor], mode: str) -> Masks:
    """Masks with as many units removed from every set of a class: the fewest any set of it
    removes (``mode="min"``: sets keep their best-scoring removed units, so only units that were
    removable go) or the most (``"max"``: sets also lose their weakest kept units)."""
    out = [m.clone() for m in masks]
    for cls in classes:
        counts = [int(out[i].sum()) for i in cls]
        want = min(counts) if mode == "min" else max(counts)
        for i, n in zip(cls, counts):
            pick = out[i] if n > want else ~out[i]
            order = torch.argsort(scores[i], descending=n > want, stable=True).tolist()
            for u in [u for u in order if pick[u]][: abs(n - want)]:
                out[i][u] = n < want
    return out


def complete_budget(removes: Masks, scores: Sequence[torch.Tensor], fraction: Fraction,
                    budget: Budget, classes: Sequence[Sequence[int]] = ()) -> tuple[Masks, list[str]]:
    """Apply floors and rounding to the removal masks; if the fraction is still above
    ``target * (1 + tolerance)``, also remove the weakest remaining units globally (lowest
    score first) until it holds. ``classes`` (:func:`uniform_classes`): sets that keep one
    width (added units are equalized with ``"max"``). Returns the masks and notes for the report."""
    def floored(masks: Masks) -> Masks:
        masks = equalize(masks, classes, scores, "max") if classes else masks
        return [respect_floor(r, sc, budget) for r, sc in zip(masks, scores)]

    removes = [respect_floor(r, sc, budget) for r, sc in zip(removes, scores)]
    limit = budget.target * (1 + budget.tolerance)
    if fraction(removes) <= limit:
        return removes, []
    candidates = _ranked(removes, scores, False)
    lo, hi = 0, len(candidates)  # the smallest n whose weakest-n meets the limit
    while lo < hi:
        mid = (lo + hi) // 2
        if fraction(floored(_with(removes, candidates[:mid]))) <= limit:
            hi = mid
        else:
            lo = mid + 1
    note = (f"budget: the force had zeroed too few units for target {budget.metric}={budget.target:.4g}; "
            f"removed the {lo} weakest non-zero units as well (not lossless: see max_output_error)")
    return floored(_with(removes, candidates[:lo])), [note]


def kept_width(kept: int, size: int, budget: Budget) -> int:
    """The width removal keeps of a set of ``size`` units when ``kept`` are left: at least
    ``min_width``, rounded *up* to a multiple of ``round_to``, never above ``size``. (The plan,
    :func:`~forceprune.budget_plan.must_go`, rounds the other way -- it takes the next-weakest
    units -- because it chooses what must go; removal only keeps units back.)"""
    want = max(kept, min(budget.min_width, size))
    return min(size, -(-want // budget.round_to) * budget.round_to)


def as_removed(removes: Masks, budget: Budget | None, classes: Sequence[Sequence[int]] = ()) -> Masks:
    """What lossless removal takes of the zero units ``removes``: with ``classes`` (uniform
    widths) the fewest any set of a class has, from each; with a budget, the widths
    :func:`kept_width` allows (zero units kept back, lowest index first). The controller counts
    costs on these masks, so that it sees the widths removal will keep."""
    zeros = [torch.zeros(len(r)) for r in removes]
    if classes:
        removes = equalize(removes, classes, zeros, "min")
    if budget is not None and (budget.round_to > 1 or budget.min_width > 1):
        removes = [respect_floor(r, z, budget) for r, z in zip(removes, zeros)]
    return removes


def smallest(sizes: Sequence[int], budget: Budget) -> Masks:
    """Removal masks of the smallest model ``budget`` allows: every set at its floor width."""
    return [respect_floor(torch.ones(n, dtype=torch.bool), torch.zeros(n), budget) for n in sizes]


def respect_floor(remove: torch.Tensor, score: torch.Tensor, budget: Budget) -> torch.Tensor:
    """Keep at least ``min_width`` units and a multiple of ``round_to`` (best scores first)."""
    size = len(remove)
    kept = size - int(remove.sum())
    want = kept_width(kept, size, budget)
    if want <= kept:
        return remove
    remove = remove.clone()
    order = [i for i in torch.argsort(score, descending=True, stable=True).tolist() if remove[i]]
    for i in order[: want - kept]:
        remove[i] = False
    return remove
