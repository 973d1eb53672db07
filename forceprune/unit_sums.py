"""Per-unit sums of ``|w|**p``: the one differentiable quantity every force law is built on.

The penalty asks for them at every training step, for every unit set, so they are computed with
as few tensor operations as possible: one elementwise power per parameter (shared between the
unit sets slicing it), one reduction per slice, and no gather or scatter where a slice covers its
parameter's whole dimension in unit order (a plain conv filter or linear neuron: the common case).
Which slices those are is found once per slice and kept on it (a removal builds new slices).
:class:`Coefficients` is the transpose: the derivative of a weighted sum of unit sums by a
parameter, which the penalty's closed-form gradient is built from (:mod:`forceprune.penalty`).
"""
from __future__ import annotations

from typing import Protocol

import torch


class Slice(Protocol):
    """What these sums read of a :class:`forceprune.units.Slice` (kept here, so that this module
    does not import ``units``, which imports it)."""

    dim: int
    index: torch.Tensor
    unit: torch.Tensor
    group_rows: int
    order_cache: dict | None

    @property
    def param(self) -> torch.Tensor: ...

    def elements(self, tensor: torch.Tensor | None = None) -> torch.Tensor: ...


def in_order(s: Slice, size: int | None = None) -> bool:
    """Whether the slice's positions are its parameter's whole ``dim`` in order (no
    ``index_select``; ``size=None``), or position ``i`` belongs to unit ``i`` of ``size`` (no
    ``index_add``). Found once per slice, parameter and question."""
    key = (id(s.param), size)
    cache = s.order_cache if s.order_cache is not None else {}
    if key not in cache:
        if size is None:
            n = s.param.shape[s.dim]
            cache[key] = not s.group_rows and len(s.index) == n and torch.equal(s.index.cpu(), torch.arange(n))
        else:
            cache[key] = len(s.unit) == size and torch.equal(s.unit.cpu(), torch.arange(size))
        s.order_cache = cache
    return cache[key]


def position_sums(s: Slice, power: int, powered: dict | None = None) -> torch.Tensor:
    """Differentiable ``(n,)``: sum of ``|w|**power`` over each position's elements of slice ``s``.

    Reduces the whole parameter along every other axis first and then picks positions, so no
    slice of the weight is ever copied; ``powered`` (one dict across the slices of a penalty)
    shares ``|w|**power`` between the slices of a parameter (its rows for one unit set, its
    columns for another)."""
    t = s.param
    if s.group_rows:
        e = s.elements()
        return e.abs().sum(1) if power == 1 else e.square().sum(1)
    powered = {} if powered is None else powered
    if (id(t), power) not in powered:
        powered[(id(t), power)] = t.abs() if power == 1 else t.square()
    v = powered[(id(t), power)]
    dims = [d for d in range(t.dim()) if d != s.dim]
    sums = v.sum(dim=dims) if dims else v
    if in_order(s):
        return sums
    return sums.index_select(0, s.index.to(sums.device))


def unit_sums(slices: list[Slice], size: int, power: int, powered: dict | None = None) -> torch.Tensor | None:
    """Differentiable ``(size,)``: per unit, the sum over ``slices`` of :func:`position_sums`
    (None without slices)."""
    out = None
    for s in slices:
        part = position_sums(s, power, powered)
        if not in_order(s, size):
            part = torch.zeros(size, dtype=part.dtype, device=part.device).index_add(0, s.unit.to(part.device), part)
        out = part if out is None else out + part
    return out


class Coefficients:
    """The derivative of ``sum_i c_i * s_i`` (``s_i``: :func:`unit_sums`) by one parameter,
    collected slice by slice: ``d/dw = ds/dw * C`` where ``C`` (the parameter's shape) is the sum
    of one ``(n,)`` vector per dimension the slices cut, broadcast along it, plus a full tensor for
    grouped-conv consumers; ``ds/dw`` is ``2w`` (power 2) or ``sign(w)`` (power 1)."""

    def __init__(self, param: torch.Tensor):
        self.param = param
        self.along: dict[int, torch.Tensor] = {}
        self.full: torch.Tensor | None = None

    def add(self, s: Slice, per_unit: torch.Tensor) -> None:
        """Add ``per_unit[unit]`` (``(G,)`` coefficients of the slice's unit set) at the slice's positions."""
        t = self.param
        c = (per_unit if in_order(s, len(per_unit)) else per_unit.index_select(0, s.unit.to(per_unit.device)))
        c = c.to(t.device, t.dtype)
        if s.group_rows:
            per_group = t.shape[1]
            index = s.index.to(t.device)
            rows = (index // per_group)[:, None] * s.group_rows + torch.arange(s.group_rows, device=t.device)
            cols = (index % per_group)[:, None].expand_as(rows)
            self.full = torch.zeros_like(t) if self.full is None else self.full
            spread = c.view(-1, 1, *[1] * (t.dim() - 2)).expand(len(c), s.group_rows, *t.shape[2:])
            self.full.index_put_((rows, cols), spread, accumulate=True)
            return
        if not in_order(s):
            c = torch.zeros(t.shape[s.dim], dtype=t.dtype, device=t.device).index_add(0, s.index.to(t.device), c)
        self.along[s.dim] = c if s.dim not in self.along else self.along[s.dim] + c

    def gradient(self, power: int, factor: torch.Tensor) -> torch.Tensor:
        """``factor * ds/dw * C``: the parameter's gradient (``factor``: the output's gradient)."""
        t = self.param.detach()
        k = 2 * factor if power == 2 else factor
        total = None if self.full is None else self.full * k
        for dim, c in self.along.items():
            shape = [1] * t.dim()
            shape[dim] = -1
            c = (c * k).view(shape)
            total = c if total is None else total + c
        return (t if power == 2 else t.sign()) * total
