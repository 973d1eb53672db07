"""Capture: turn units that the force has driven (almost) to zero into *exact* zeros, and keep
them there.

Two mechanisms:

* ``"unit"`` (default): a unit is set to exactly zero as a whole, with its optimizer state,
  when every element (over the slices the force acts on) has ``|w| <= threshold``, or when
  it is within one *force step* of zero: the proximal operator of the penalty, for the
  optimizer's current step size, would zero it. For an L2 unit norm that is
  ``||w_i||_2 <= snap * eta * beta * phi_i / N`` (``N`` = G for the mean reduction; ``eta`` =
  lr / (1 - momentum) for SGD); for L1, the same bound on ``max |w|``; for Adam-type
  optimizers, whose steps are ~lr per element, ``max |w| <= snap * lr``. A subgradient step
  alone leaves such units oscillating around zero with exactly that amplitude, which a fixed
  threshold cannot catch for strongly pushed units.
* ``"element"`` (ETP's official code): element-wise clipping ``|w| < threshold -> 0`` of every
  conv/linear weight the force acts on. Units that end up entirely zero are captured.

Captured ("dead") units are re-zeroed after every optimizer step, with their momentum and Adam
moments, so they stay exactly zero until removal.
"""
from __future__ import annotations

import torch

from .units import PRODUCER_WEIGHT, UnitSet

CAPTURE_MODES = ("unit", "element")


def find_captures(unit_sets: list[UnitSet], include: str, threshold: float, prox: list | None = None) -> list[torch.Tensor]:
    """Per unit set, a ``(G,)`` bool mask of live units that qualify for capture: largest
    element ``<= threshold``, or norm within the proximal bound. ``prox``: per unit set,
    ``(metric, (G,) bound)`` with metric ``"l2"`` (unit L2 norm) or ``"max"`` (largest |w|)."""
    found = []
    for i, us in enumerate(unit_sets):
        max_abs = us.unit_max_abs(include)
        small = max_abs <= threshold
        if prox is not None and prox[i] is not None:
            metric, bound = prox[i]
            value = max_abs if metric == "max" else us.unit_sums(include, 2).detach().float().cpu().sqrt()
            small |= value <= bound
        found.append(small & ~us.dead)
    return found


def apply_captures(unit_sets: list[UnitSet], masks: list[torch.Tensor], include: str, optimizer=None) -> int:
    """Zero the given units (and their optimizer state) and mark them captured."""
    new = 0
    for us, fresh in zip(unit_sets, masks):
        if bool(fresh.any()):
            us.dead |= fresh
            new += int(fresh.sum())
            us.zero_(fresh, include, optimizer)
    return new


def capture_units(
    unit_sets: list[UnitSet], include: str, threshold: float, optimizer=None, prox: list | None = None
) -> int:
    """Find and apply captures in one go; returns how many units were new."""
    return apply_captures(unit_sets, find_captures(unit_sets, include, threshold, prox), include, optimizer)


def clip_elements(unit_sets: list[UnitSet], include: str, threshold: float, optimizer=None) -> int:
    """ETP-style element clipping of conv/linear weights, then capture of all-zero units."""
    seen: set[int] = set()
    with torch.no_grad():
        for us in unit_sets:
            for s in us.select(include):
                p = s.param
                if s.param_name != "weight" or s.kind not in ("conv", "linear") or id(p) in seen:
                    continue
                seen.add(id(p))
                p.masked_fill_(p.abs() < threshold, 0.0)
    return capture_units(unit_sets, include, 0.0, optimizer)


def build_masks(unit_sets: list[UnitSet], include: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``[(param, mask)]``: a 0/1 mask shaped like each parameter with captured units at 0."""
    masks: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for us in unit_sets:
        if not bool(us.dead.any()):
            continue
        for s in us.select(include):
            p = s.param
            if id(p) not in masks:
                masks[id(p)] = (p, torch.ones_like(p, dtype=torch.bool))
            s.zero_(masks[id(p)][1], us.dead)
    return list(masks.values())


def enforce_zeros(masks: list[tuple[torch.Tensor, torch.Tensor]], optimizer=None) -> None:
    """Re-zero captured units in parameters and optimizer state (after every optimizer step):
    one in-place multiply per tensor."""
    with torch.no_grad():
        for p, mask in masks:
            p.mul_(mask)
            if optimizer is not None and p in optimizer.state:
                for v in optimizer.state[p].values():
                    if torch.is_tensor(v) and v.shape == p.shape:
                        v.mul_(mask)


def producers_zero(us: UnitSet, tolerance: float = 0.0) -> torch.Tensor:
    """``(G,)`` bool: units whose producer conv/linear weights are all ``<= tolerance``."""
    return us.max_abs(PRODUCER_WEIGHT) <= tolerance
