"""Capture: turn units that the force has driven (almost) to zero into *exact* zeros, and keep
them there.

Two mechanisms:

* ``"unit"`` (default): a unit whose every element (over the slices the force acts on) has
  ``|w| <= threshold`` is set to exactly zero as a whole, together with its optimizer state.
  The function changes by at most ``threshold`` per weight, and only for units the force has
  already emptied. It is the structured form of ETP's clipping.
* ``"element"`` (ETP's official code): element-wise clipping ``|w| < threshold -> 0`` of every
  conv/linear weight the force acts on. Units that end up entirely zero are captured.

Captured ("dead") units are re-zeroed after every optimizer step, with their momentum and Adam
moments, so they stay exactly zero until removal.
"""
from __future__ import annotations

import torch

from .units import PRODUCER_WEIGHT, UnitSet

CAPTURE_MODES = ("unit", "element")


def capture_units(unit_sets: list[UnitSet], include: str, threshold: float, optimizer=None) -> int:
    """Zero every unit whose largest element is ``<= threshold``. Returns how many were new."""
    new = 0
    for us in unit_sets:
        small = us.unit_max_abs(include) <= threshold
        fresh = small & ~us.dead
        if bool(fresh.any()):
            us.dead |= fresh
            new += int(fresh.sum())
        if bool(us.dead.any()):
            us.zero_(us.dead, include, optimizer)
    return new


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


def enforce_zeros(unit_sets: list[UnitSet], include: str, optimizer=None) -> None:
    """Re-zero captured units (call after every optimizer step)."""
    for us in unit_sets:
        if bool(us.dead.any()):
            us.zero_(us.dead, include, optimizer)


def producers_zero(us: UnitSet, tolerance: float = 0.0) -> torch.Tensor:
    """``(G,)`` bool: units whose producer conv/linear weights are all ``<= tolerance``."""
    out = torch.ones(us.size, dtype=torch.bool)
    for s in us.slices:
        if s.role == PRODUCER_WEIGHT:
            m = s.elements().detach().abs().float().cpu().amax(1)
            per_unit = torch.zeros(us.size).scatter_reduce(0, s.unit.cpu(), m, "amax")
            out &= per_unit <= tolerance
    return out
