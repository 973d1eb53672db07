"""The force penalty as one autograd node, its gradient in closed form.

For unit sets ``k`` with weights ``a_k``, the penalty is ``scale * sum_k a_k * beta *
reduce_i(phi_i * n_i)`` with ``n_i`` the norm of unit ``i``, read from ``s_i``, the sum of
``|w|**p`` over its elements (:mod:`forceprune.unit_sums`). The profile ``phi`` does not depend on
the weights (positions, or norms read detached), so the derivative by an element ``w`` of unit
``i`` is ``c_i * ds/dw`` with ``c_i = d penalty / d s_i``
(:meth:`forceprune.forces.Force.penalty_coefficients`) and ``ds/dw = 2w`` (p = 2) or
``sign(w)`` (p = 1). A parameter's gradient is then ``ds/dw`` times a few coefficient vectors
broadcast along the dimensions its slices cut: one or two elementwise products per parameter,
where autograd would record and replay a few operations per slice (the step overhead on a small
network, BENCHMARKS.md section 3). The value and the gradient equal autograd's through
:meth:`Force.penalty` (tests/test_penalty.py).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch.autograd.function import once_differentiable

from .forces import Force
from .scoring import signs
from .unit_sums import Coefficients, unit_sums
from .units import UnitSet


def force_penalty(force: Force, unit_sets: Sequence[UnitSet], set_weights: Sequence[float],
                  masks: Sequence[torch.Tensor | None], importances: Sequence[torch.Tensor | None],
                  scale: float = 1.0) -> torch.Tensor:
    """The penalty, a scalar on the parameters' device, differentiable by every parameter the
    force acts on (once: no double backward).

    Args:
        force: the force law.
        unit_sets: the ``K`` unit sets.
        set_weights: ``K`` weights ``a_k`` (the budget's per-set cost weights, or 1).
        masks: ``K`` optional ``(G,)`` multipliers of ``phi`` (0 spares a unit).
        importances: ``K`` optional ``(G,)`` scores standing in for the norms in the profile.
        scale: the budget controller's multiplier of the whole penalty.
    """
    if not unit_sets:
        return torch.zeros(())
    value, coefficients = _value_and_coefficients(force, unit_sets, set_weights, masks, importances, scale)
    trained = [c for c in coefficients.values() if c.param.requires_grad]
    if not trained or not torch.is_grad_enabled():
        return value
    return _Penalty.apply(value, force.power, trained, *[c.param for c in trained])


def _value_and_coefficients(force, unit_sets, set_weights, masks, importances, scale):
    """The penalty's value and, per parameter (by ``id``), its :class:`Coefficients`."""
    coefficients: dict[int, Coefficients] = {}
    total = None
    with torch.no_grad():
        powered: dict = {}
        for us, weight, mask, importance in zip(unit_sets, set_weights, masks, importances):
            slices = us.select(force.include)
            sums = unit_sums(slices, us.size, force.power, powered)
            value, per_unit = force.penalty_coefficients(sums, signs(force, us), mask, importance)
            total = value * weight if total is None else total + value * weight
            per_unit = per_unit * (weight * scale)
            for s in slices:
                coefficients.setdefault(id(s.param), Coefficients(s.param)).add(s, per_unit)
    return total * scale, coefficients


class _Penalty(torch.autograd.Function):
    """Returns the precomputed value; backward writes each parameter's closed-form gradient."""

    @staticmethod
    def forward(ctx, value: torch.Tensor, power: int, coefficients: list[Coefficients], *params: torch.Tensor):
        ctx.power, ctx.coefficients = power, coefficients
        ctx.save_for_backward(*params)  # an in-place change before backward raises, as in autograd
        return value.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        ctx.saved_tensors  # noqa: B018 (checks the parameters' versions)
        return (None, None, None, *[c.gradient(ctx.power, grad) for c in ctx.coefficients])
