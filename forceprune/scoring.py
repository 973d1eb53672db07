"""How hard each unit is pushed, and how important it looks under the force: the per-unit numbers
that capture, removal, budgets and plots read.

Everything here is a function of a force law and unit sets (and, for cost weights, the
model's per-layer MACs); nothing holds state. Shapes: ``G`` is the number of units of a unit
set; tensors returned are detached, float32, on the CPU.

* :func:`unit_profile`: ``(norms, phi)``, the unit norms and the force profile ``phi`` (the
  weight of each unit's norm in the penalty), the two numbers every caller needs.
* :func:`scores`: force-weighted importance ``(||w_i|| / phi_i) / mean ||w||``: a unit that is
  weak *for where it sits* scores low (what budgets remove first); an activation-aware
  importance may stand in for the weight norm.
* :func:`weakest_tail`: the removal mask that keeps the ``k`` best-scoring units.
* :func:`prox_bounds`: per unit, the norm within which one force step would reach zero (the
  proximal capture bound, see :mod:`forceprune.capture`).
* :func:`cost_weights`: per unit set, the ``cost_power`` multiplier of its penalty.
* :func:`force_field`: norms, distances, weights and captured units, for reports and plots.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ._torch import param_group
from .forces import Force
from .metrics import layer_macs
from .units import PRODUCER_OTHER, PRODUCER_WEIGHT, UnitSet


def signs(force: Force, us: UnitSet) -> torch.Tensor | None:
    """``(G,)`` sign of each unit's summed producer weights, for the electrostatic
    ``charge="signed_mean"`` reading; None for every other force."""
    if getattr(force, "charge", None) != "signed_mean":
        return None
    with torch.no_grad():
        total = torch.zeros(us.size)
        for s in us.slices:
            if s.role == PRODUCER_WEIGHT:
                total.index_add_(0, s.unit.cpu(), s.elements().detach().float().sum(1).cpu())
        return torch.sign(total)


def unit_norms(force: Force, us: UnitSet) -> torch.Tensor:
    """``(G,)`` unit norms in the force's ``norm``, over the slices it acts on."""
    with torch.no_grad():
        return force.unit_norms(us.unit_sums(force.include, force.power)).float().cpu()


def unit_profile(force: Force, us: UnitSet, norms: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(norms, phi)``: ``(G,)`` unit norms (computed unless given) and the force profile."""
    norms = unit_norms(force, us) if norms is None else norms.detach().float().cpu()
    with torch.no_grad():
        return norms, force.profile(us.size, norms, signs(force, us))


def scores(force: Force, us: UnitSet, importance: torch.Tensor | None = None) -> torch.Tensor:
    """Scale-free force-weighted importance ``(||w_i|| / phi_i) / mean ||w||`` (``(G,)``).
    ``importance`` (``(G,)``, e.g. :func:`forceprune.activations.activation_scores`) stands in
    for the weight norm ``||w_i||``, in the profile too (a ranked pivot ranks by it)."""
    norms, phi = unit_profile(force, us, importance)
    return norms / phi.clamp_min(1e-12) / norms.mean().clamp_min(1e-12)


def weakest_tail(force: Force, us: UnitSet, k: int) -> torch.Tensor:
    """``(G,)`` bool removal mask keeping the ``k`` units with the largest ``||w_i|| / phi_i``
    (ties keep the lower index)."""
    norms, phi = unit_profile(force, us)
    order = torch.argsort(norms / phi.clamp_min(1e-12), descending=True, stable=True)
    remove = torch.ones(us.size, dtype=torch.bool)
    remove[order[: min(k, us.size)]] = False
    return remove


def prox_bounds(force: Force, unit_sets: list[UnitSet], set_weights: list[float], optimizer, snap: float,
                scale: float) -> list | None:
    """Per unit set, the proximal capture bound ``(metric, (G,) bound)`` for the optimizer's
    current step size (see :func:`forceprune.capture.find_captures`), or None when there is no
    such bound (no optimizer, ``snap=0``, no force, or the ``l2sq`` norm, which never zeroes).

    SGD: ``snap * eta * scale * w_set * beta * phi / N`` on the unit's L2 norm (``"l2"``) or its
    largest element (``"max"``, for L1), ``eta = lr / (1 - momentum)``, ``N = G`` for the mean
    reduction; Adam family: ``snap * lr`` on the largest element (Adam moves each weight by
    ~lr per step)."""
    if optimizer is None or snap == 0 or force.beta == 0 or force.norm == "l2sq":
        return None
    bounds = []
    for us, weight in zip(unit_sets, set_weights):
        group = param_group(optimizer, us.select(force.include)[0].param)
        if group is None:
            bounds.append(None)
            continue
        lr = float(group["lr"])
        if "betas" in group:
            bounds.append(("max", torch.full((us.size,), snap * lr)))
            continue
        eta = lr / (1.0 - float(group.get("momentum", 0.0) or 0.0))
        phi = unit_profile(force, us)[1].clamp_min(0)
        per_unit = snap * eta * scale * weight * force.beta * phi / (us.size if force.reduction == "mean" else 1)
        bounds.append(("l2" if force.norm == "l2" else "max", per_unit))
    return bounds


def unit_costs(model: nn.Module, unit_sets: list[UnitSet], inputs) -> list[float]:
    """Per unit set, the MACs per forward pass of ``inputs`` that one of its units costs in the
    layers it touches (its producer rows and consumer columns; attention's matrix products,
    which no layer owns, are not included)."""
    per_layer = layer_macs(model, inputs)
    names = {m: n for n, m in model.named_modules()}
    costs = []
    for us in unit_sets:
        cost = 0.0
        for s in us.slices:
            if s.param_name == "weight" and s.role != PRODUCER_OTHER:
                macs = per_layer.get(names.get(s.module, ""), 0)
                cost += macs * len(s.index) / max(s.param.shape[s.dim], 1) / us.size
        costs.append(max(cost, 1e-12))
    return costs


def cost_weights(model: nn.Module, unit_sets: list[UnitSet], inputs, cost_power: float) -> list[float]:
    """Per unit set, the multiplier ``(c_S / mean c)**cost_power`` of its penalty, with ``c_S``
    from :func:`unit_costs`."""
    if cost_power == 0 or not unit_sets:
        return [1.0] * len(unit_sets)
    costs = unit_costs(model, unit_sets, inputs)
    mean = sum(costs) / len(costs)
    return [(c / mean) ** cost_power for c in costs]


def force_field(force: Force, unit_sets: list[UnitSet]) -> list[dict]:
    """Per unit set: unit norms, normalised distances to the pivot, force weights and captured
    units (plain lists, for ``report.json`` and the force-field plots)."""
    out = []
    with torch.no_grad():
        for us in unit_sets:
            norms = unit_norms(force, us)
            d, anchor = force.distances(us.size, norms)
            x = force.normalised(d, us.size)
            phi = force.weights(x, norms, anchor, signs(force, us))
            out.append({"name": us.name, "size": us.size, "pivot": anchor, "norms": norms.tolist(),
                        "distances": x.tolist(), "weights": phi.tolist(), "zero": us.dead.tolist()})
    return out


def rate_known(force: Force, unit_sets: list[UnitSet], optimizer, proximal: bool) -> bool:
    """Whether :func:`step_shrink` knows the force's per-step rate: an optimizer holding every
    unit set, a norm that zeroes (not ``l2sq``), and no loss-term force under Adam."""
    if optimizer is None or force.norm == "l2sq":
        return False
    groups = [param_group(optimizer, us.select(force.include)[0].param) for us in unit_sets]
    return all(g is not None and (proximal or "betas" not in g) for g in groups)


def step_shrink(force: Force, unit_sets: list[UnitSet], set_weights: list[float], optimizer,
                proximal: bool, importance: list[torch.Tensor | None] | None = None
                ) -> tuple[list[torch.Tensor], list[torch.Tensor]] | None:
    """Per unit set, ``(size, shrink)``: each unit's size (its L2 norm, or for the L1 norm its
    largest element) and how much of it the force alone removes per optimizer step at scale 1
    (``(G,)`` each), for the budget's plan (:mod:`forceprune.budget_plan`).

    Proximal force: ``lr * beta * w_S * phi_u * sqrt(n_u)`` (L2) or ``lr * beta * w_S * phi_u``
    per element (L1). Loss-term force under SGD: ``eta * beta * w_S * phi_u / N`` with
    ``eta = lr / (1 - momentum)`` and ``N = G`` for the mean reduction. None where the rate is
    not known: no optimizer, the ``l2sq`` norm (it never zeroes), or a loss-term force under
    Adam (which moves every weight by about ``lr`` whatever the force). ``importance`` (``(G,)``
    or None per set) stands in for the norms in the profile, as in the force step itself."""
    if not rate_known(force, unit_sets, optimizer, proximal):
        return None
    sizes, shrinks = [], []
    for k, (us, weight) in enumerate(zip(unit_sets, set_weights)):
        group = param_group(optimizer, us.select(force.include)[0].param)
        lr = float(group["lr"])
        norms = unit_norms(force, us)
        imp = importance[k] if importance is not None else None
        phi = unit_profile(force, us, norms if imp is None else imp)[1]
        phi = phi.clamp_min(0)
        if proximal:
            rate = lr * force.beta * weight * phi
            rate = rate * us.numel(force.include).sqrt() if force.norm == "l2" else rate
        else:
            eta = lr / (1.0 - float(group.get("momentum", 0.0) or 0.0))
            rate = eta * force.beta * weight * phi / (us.size if force.reduction == "mean" else 1)
        sizes.append(norms if force.norm == "l2" else us.unit_max_abs(force.include))
        shrinks.append(rate)
    return sizes, shrinks
