"""Feed-forward blocks: each hidden neuron of ``down(act(up(x)))`` (or of the gated
``down(act(gate(x)) * up(x))``) is one unit.

A neuron spans its row of ``up`` (and of ``gate``; with a bias entry each) and its column of
``down``. Removing it is exact when ``down`` reads it with zero weights, or when its ``up``
(and ``gate``) rows are zero: the neuron then emits the constant ``act(b_up)`` (gated:
``act(b_gate) * b_up``), folded into ``down``'s bias. Only register blocks whose forward puts
nothing but element-wise operations between the projections: the unit set is built from this
description, not traced (removal compares outputs before and after and raises if they differ).

Fused ``gate_up`` projections (Phi-3) hold the gate rows first, then the up rows
(``gate, up = gate_up(x).chunk(2, dim=-1)``): give ``fused_gate=True`` and ``up`` the fused path.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from ..errors import ForcePruneError
from ..units import OWN_SURGERY, UnitSet
from .slicing import column_slice, get_path, in_features, is_projection, join_path, out_features, row_slices, slice_linear


@dataclass
class FeedForward:
    """A feed-forward block, by the paths of its projections (``nn.Linear`` or ``Conv1D``):
    ``up`` and ``down``, and ``gate`` for a gated block (or ``fused_gate=True`` when ``up``
    holds the gate rows, then the up rows). ``match(module)`` says which modules are such blocks."""

    name: str
    up: str
    down: str
    match: Callable[[nn.Module], bool]
    gate: str | None = None
    fused_gate: bool = False

    def matches(self, module: nn.Module) -> bool:
        return all(is_projection(get_path(module, p)) for p in self._paths()) and bool(self.match(module))

    def _paths(self) -> list[str]:
        return [p for p in (self.gate, self.up, self.down) if p]

    def modules(self, module: nn.Module) -> list[nn.Module]:
        return [module, *[get_path(module, p) for p in self._paths()]]

    def residual_io(self, module: nn.Module) -> tuple[list[str], list[str]]:
        return [p for p in (self.gate, self.up) if p], [self.down]

    def width(self, module: nn.Module) -> int:
        """Number of neurons now (``down``'s input features)."""
        return in_features(get_path(module, self.down))

    def _rows(self, width: int, neurons) -> dict[str, list[int]]:
        """``{projection path: rows}`` of the given neurons in the producing projections."""
        neurons = list(neurons)
        if self.fused_gate:
            return {self.up: neurons + [width + n for n in neurons]}
        return {p: neurons for p in (self.gate, self.up) if p}

    def unit_sets(self, model: nn.Module, name: str, module: nn.Module) -> list[UnitSet]:
        width = self.width(module)
        rows = self._rows(width, range(width))
        for path, r in rows.items():
            if out_features(get_path(module, path)) != len(r):
                raise ForcePruneError(f"{join_path(name, path)} has {out_features(get_path(module, path))} outputs but "
                                      f"{self.down} reads {width} neurons; the {self.name!r} layout does not fit.")
        slices = []
        for path, r in rows.items():
            index = torch.as_tensor(r)
            slices += row_slices(get_path(module, path), join_path(name, path), index, index % width)
        idx = torch.arange(width)
        slices.append(column_slice(get_path(module, self.down), join_path(name, self.down), idx, idx))
        nu = join_path(name, self.up)
        return [UnitSet(
            name=nu, root=get_path(module, self.up), root_fn=OWN_SURGERY, size=width, slices=slices,
            on_removed=lambda m, kept: self.remove(m, name, kept), kind="neuron", root_name=nu, layout=self.name,
        )]

    def remove(self, model: nn.Module, name: str, kept: list[int]) -> None:
        """Keep neurons ``kept``: their rows of up (and gate) and columns of down."""
        module = model.get_submodule(name)
        for path, r in self._rows(self.width(module), kept).items():
            slice_linear(get_path(module, path), rows=r)
        slice_linear(get_path(module, self.down), cols=kept)
        if isinstance(getattr(module, "intermediate_size", None), int):
            module.intermediate_size = len(kept)

    def sync(self, module: nn.Module) -> None:
        if isinstance(getattr(module, "intermediate_size", None), int):
            module.intermediate_size = self.width(module)
