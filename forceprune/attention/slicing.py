"""The small pieces of head and neuron surgery every layout shares: module paths, the rows
of kept heads, slicing an ``nn.Linear`` in place, and the slices a head unit spans."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from ..units import CONSUMER, PRODUCER_OTHER, PRODUCER_WEIGHT, Slice


def get_path(module: nn.Module, path: str):
    """The attribute at dotted ``path`` below ``module`` (``""``: the module), or None."""
    obj = module
    for part in path.split(".") if path else []:
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def join_path(*parts: str) -> str:
    """Dotted module path of the non-empty ``parts``."""
    return ".".join(p for p in parts if p)


def _replace_param(module: nn.Module, name: str, data: torch.Tensor) -> None:
    old = getattr(module, name)
    setattr(module, name, nn.Parameter(data.contiguous().clone(), requires_grad=old.requires_grad))


def slice_linear(lin: nn.Linear, rows: Sequence[int] | None = None, cols: Sequence[int] | None = None) -> None:
    """Keep only ``rows`` (output features) and/or ``cols`` (input features) of ``lin``."""
    with torch.no_grad():
        if rows is not None:
            idx = torch.as_tensor(list(rows), dtype=torch.long, device=lin.weight.device)
            _replace_param(lin, "weight", lin.weight.data.index_select(0, idx))
            if lin.bias is not None:
                _replace_param(lin, "bias", lin.bias.data.index_select(0, idx))
            lin.out_features = len(idx)
        if cols is not None:
            idx = torch.as_tensor(list(cols), dtype=torch.long, device=lin.weight.device)
            _replace_param(lin, "weight", lin.weight.data.index_select(1, idx))
            lin.in_features = len(idx)


def head_rows(kept: Sequence[int], head_dim: int, offset: int = 0) -> list[int]:
    """Rows (or columns) of the ``kept`` heads, ``head_dim`` each, starting at ``offset``."""
    return [offset + h * head_dim + j for h in kept for j in range(head_dim)]


def head_slices(
    module: nn.Module, module_name: str, param: str, dim: int, heads: int, head_dim: int, role: str,
    offsets: Sequence[int] = (0,), kind: str = "linear",
) -> Slice:
    """The slice of ``heads`` heads along ``dim`` of ``module.<param>``, repeated at ``offsets``."""
    index = torch.cat([torch.arange(heads * head_dim) + o for o in offsets])
    unit = (torch.arange(heads * head_dim) // head_dim).repeat(len(offsets))
    return Slice(module, module_name, param, dim, index, unit, role, kind)


def linear_head_slices(lin: nn.Linear, name: str, heads: int, head_dim: int, role_rows: bool = True) -> list[Slice]:
    """Producer rows (+ bias) of a q/k/v projection, or consumer columns of an output projection."""
    if role_rows:
        out = [head_slices(lin, name, "weight", 0, heads, head_dim, PRODUCER_WEIGHT)]
        if lin.bias is not None:
            out.append(head_slices(lin, name, "bias", 0, heads, head_dim, PRODUCER_OTHER))
        return out
    return [head_slices(lin, name, "weight", 1, heads, head_dim, CONSUMER)]


class _DeferredSurgery:
    """A torch-pruning pruning function that does nothing: for fused/packed layouts the
    surgery is done by the unit set's ``on_removed`` (it needs the parent module and rows at
    several offsets, which a root-channel index list cannot express).

    torch-pruning calls handlers as bound methods and sets ``pruning_dim`` on their owner, and
    propagates a group only along dependencies triggered by a known handler: with this one,
    the group is the root alone and ``prune()`` calls :meth:`prune_out_channels` once."""

    pruning_dim = 0

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        return layer

    prune_in_channels = prune_out_channels


#: the ``root_fn`` of unit sets whose surgery is all done in ``on_removed``
deferred_surgery = _DeferredSurgery().prune_out_channels
