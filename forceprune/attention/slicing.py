"""The small pieces of head and neuron surgery every layout shares: module paths, the rows
of kept heads, slicing a projection in place, and the slices a head unit spans.

A *projection* is an ``nn.Linear`` (weight ``(out, in)``) or a Hugging Face ``Conv1D``
(GPT-2; weight ``(in, out)``, attributes ``nf`` = out, ``nx`` = in): the helpers here read
and slice both through :func:`out_dim` / :func:`in_dim`."""
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


def is_conv1d(module) -> bool:
    """A Hugging Face ``Conv1D``: a linear layer storing its weight transposed ``(in, out)``."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "nx")


def is_projection(module) -> bool:
    """An ``nn.Linear`` or a Hugging Face ``Conv1D``."""
    return isinstance(module, nn.Linear) or is_conv1d(module)


def out_dim(proj: nn.Module) -> int:
    """The weight dimension holding the output features (0 for Linear, 1 for Conv1D)."""
    return 1 if is_conv1d(proj) else 0


def in_dim(proj: nn.Module) -> int:
    """The weight dimension holding the input features (1 for Linear, 0 for Conv1D)."""
    return 1 - out_dim(proj)


def out_features(proj: nn.Module) -> int:
    return int(proj.weight.shape[out_dim(proj)])


def in_features(proj: nn.Module) -> int:
    return int(proj.weight.shape[in_dim(proj)])


def replace_param(module: nn.Module, name: str, data: torch.Tensor) -> None:
    """Set ``module.<name>`` to a new parameter holding ``data`` (same ``requires_grad``)."""
    old = getattr(module, name)
    setattr(module, name, nn.Parameter(data.contiguous().clone(), requires_grad=old.requires_grad))


def slice_param(module: nn.Module, name: str, dim: int, keep: Sequence[int]) -> None:
    """Keep only the ``keep`` positions along ``dim`` of ``module.<name>`` (None: nothing to do)."""
    p = getattr(module, name, None)
    if p is None:
        return
    idx = torch.as_tensor(list(keep), dtype=torch.long, device=p.device)
    with torch.no_grad():
        replace_param(module, name, p.data.index_select(dim, idx))


def sync_projection(proj: nn.Module) -> None:
    """Set a projection's size attributes from its weight's shape."""
    if is_conv1d(proj):
        proj.nx, proj.nf = int(proj.weight.shape[0]), int(proj.weight.shape[1])
    else:
        proj.out_features, proj.in_features = int(proj.weight.shape[0]), int(proj.weight.shape[1])


def slice_linear(proj: nn.Module, rows: Sequence[int] | None = None, cols: Sequence[int] | None = None) -> None:
    """Keep only ``rows`` (output features, with the bias) and/or ``cols`` (input features) of
    a projection (``nn.Linear`` or ``Conv1D``)."""
    if rows is not None:
        slice_param(proj, "weight", out_dim(proj), rows)
        slice_param(proj, "bias", 0, rows)
    if cols is not None:
        slice_param(proj, "weight", in_dim(proj), cols)
    sync_projection(proj)


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


def linear_head_slices(lin: nn.Module, name: str, heads: int, head_dim: int, role_rows: bool = True) -> list[Slice]:
    """Producer rows (+ bias) of a q/k/v projection, or consumer columns of an output projection."""
    if role_rows:
        return row_slices(lin, name, torch.arange(heads * head_dim), torch.arange(heads * head_dim) // head_dim)
    return [head_slices(lin, name, "weight", in_dim(lin), heads, head_dim, CONSUMER)]


def row_slices(proj: nn.Module, name: str, index: torch.Tensor, unit: torch.Tensor) -> list[Slice]:
    """Producer slices of output rows ``index`` (``(n,)``) of a projection, row ``index[i]``
    belonging to unit ``unit[i]``: the weight rows and, if any, the bias entries."""
    out = [Slice(proj, name, "weight", out_dim(proj), index, unit, PRODUCER_WEIGHT, "linear")]
    if getattr(proj, "bias", None) is not None:
        out.append(Slice(proj, name, "bias", 0, index, unit, PRODUCER_OTHER, "linear"))
    return out


def column_slice(proj: nn.Module, name: str, index: torch.Tensor, unit: torch.Tensor) -> Slice:
    """The consumer slice of input columns ``index`` of a projection (unit ``unit[i]`` each)."""
    return Slice(proj, name, "weight", in_dim(proj), index, unit, CONSUMER, "linear")
