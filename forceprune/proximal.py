"""The force applied as a proximal step, decoupled from the optimizer.

Under Adam every element moves by about ``lr`` per step whatever the size of its gradient, so a
force added to the loss cannot drive a *pretrained* unit (largest weights ~0.1-0.5) to zero
within a fine-tuning budget: it needs ``max|w| / lr`` steps. As AdamW decouples weight decay,
:func:`proximal_force_step` decouples the force: after each optimizer step every unit is shrunk
by the proximal operator of its force term,

* ``norm="l2"``: ``w_u <- w_u * max(0, 1 - s_u / ||w_u||)`` (group soft-thresholding) with
  ``s_u = lr_t * scale * beta * w_set * phi_u * sqrt(n_u)``;
* ``norm="l1"``: element-wise soft-thresholding by ``lr_t * scale * beta * w_set * phi_u``;

``phi_u`` is the force profile of unit ``u`` (e.g. ETP's ``lambda^d``), ``n_u`` its element
count (the group-lasso scaling of Yuan & Lin 2006: a unit's elements shrink at
``lr_t * beta * phi_u`` each whether it is a head or a neuron), ``w_set`` the unit set's cost
weight (``cost_power``) and ``scale`` the budget controller's current multiplier (0 once the
budget is met: the force stops). Units reach exact zeros, which ``pruner.step()`` captures.
"""
from __future__ import annotations

import torch

from .errors import ForcePruneError
from .forces import Force
from .scoring import unit_profile
from .unit_sums import in_order
from .units import UnitSet


@torch.no_grad()
def proximal_force_step(force: Force, unit_sets: list[UnitSet], set_weights: list[float], scale: float,
                        lr: float, masks: list[torch.Tensor] | None = None,
                        importance: list[torch.Tensor | None] | None = None) -> None:
    """Shrink every unit in place by the proximal operator of its force term for step size
    ``lr``, with the force scaled by ``scale`` (the budget controller's multiplier) and each unit
    set's penalty by its cost weight (see the module doc); ``masks`` (optional, ``(G,)`` per
    set) multiply each unit's profile (0 spares a unit); ``importance`` (optional, ``(G,)`` or
    None per set) stands in for the norms in the profile (a ranked pivot ranks by it)."""
    f = force
    if f.norm not in ("l2", "l1"):
        raise ForcePruneError(f"the proximal force step needs norm 'l2' or 'l1', got {f.norm!r}; pass norm='l2'.")
    if scale == 0.0 or f.beta == 0.0 or lr == 0.0:
        return
    for k, (us, weight) in enumerate(zip(unit_sets, set_weights)):
        slices = us.select(f.include)
        if not slices:
            continue
        norms = us.unit_sums(f.include, f.power).detach().float()
        norms = norms.sqrt() if f.norm == "l2" else norms
        imp = importance[k] if importance is not None else None
        phi = unit_profile(f, us, norms if imp is None else imp)[1].clamp_min(0).to(norms.device)
        if masks is not None:
            phi = phi * masks[k].to(phi.device, phi.dtype)
        step = lr * scale * f.beta * float(weight) * phi
        if f.norm == "l2":
            step = step * us.numel(f.include).to(norms.device).sqrt()
            factor = (1 - step / norms.clamp_min(1e-30)).clamp_min(0)
            factor[us.dead.to(norms.device)] = 0
        for sl in slices:
            t = sl.param.data
            if f.norm == "l2" and in_order(sl):  # the whole dim in order: one in-place product
                shape = [1] * t.dim()
                shape[sl.dim] = -1
                t.mul_((factor if in_order(sl, len(factor)) else factor[sl.unit.to(factor.device)]).to(t).view(shape))
                continue
            moved = t.movedim(sl.dim, 0) if sl.dim else t
            idx = sl.index.to(t.device)
            shape = (-1,) + (1,) * (moved.dim() - 1)
            unit = sl.unit.to(t.device)
            if f.norm == "l2":
                moved[idx] = moved[idx] * factor[unit].to(t.dtype).view(shape)
            else:
                vals = moved[idx]
                moved[idx] = vals.sign() * (vals.abs() - step[unit].to(t.dtype).view(shape)).clamp_min(0)
