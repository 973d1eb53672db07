"""Prunable units: which slices of which parameters move together.

A *unit* is one prunable channel (a conv filter, a linear neuron, ...) together with every
slice coupled to it: the producer's weight rows and bias, the BatchNorm entries, and the
input columns of every consumer. A :class:`UnitSet` holds the ``G`` units of one
torch-pruning dependency group (e.g. all channels tied together by residual additions), or
of one block a unit provider understands (the heads of one attention module).

This module knows nothing about forces: it only says *what* a unit is, computes per-unit
norms over all coupled slices, and zeroes units. Channel coupling comes from torch-pruning's
:class:`~torch_pruning.DependencyGraph`, traced once (:mod:`forceprune.tracing`) with the
blocks that unit providers claim left opaque; GroupNorm groups are units when every
GroupNorm of a group sees whole groups of its channels.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import torch
import torch.nn as nn
import torch_pruning as tp
from torch_pruning.pruner import function as tpf

from .errors import ForcePruneError
from .unit_sums import position_sums, unit_sums
from .tracing import (OPAQUE_HANDLERS, OWN_SURGERY, find_output_layers, groupnorm_channels_per_unit,  # noqa: F401
                      shared_parameters, trace_graph)

#: Roles a slice can play in a unit.
PRODUCER_WEIGHT = "producer_weight"  # conv/linear output rows (what ETP's official code penalises)
PRODUCER_OTHER = "producer_other"  # producer bias, BatchNorm/affine entries
CONSUMER = "consumer"  # input columns of the layers that read the channel
#: What a unit can be (``UnitSet.kind``): a channel, an attention head, a key/value group (a
#: key/value head with the query heads that share it), an FFN neuron, a channel of a decoder's
#: residual stream (the hidden size), a GroupNorm group of channels.
UNIT_KINDS = ("channel", "head", "kv_group", "neuron", "hidden", "group")
#: When a unit may go (``UnitSet.removal``): ``"either"`` nobody reads it (consumers zero) or
#: its producers are zero so it emits a constant that folds into consumer biases;
#: ``"consumers"`` only when nobody reads it (zero producers leave it non-constant, e.g. a query
#: head whose keys and values stay); ``"writers"`` only when every write to it is zero (its
#: weight and bias rows), so it is exactly zero everywhere (a residual-stream channel).
REMOVAL_RULES = ("either", "consumers", "writers")

#: Roles a force acts on, by its ``include`` option.
INCLUDE_ROLES = {"all": (PRODUCER_WEIGHT, PRODUCER_OTHER, CONSUMER), "producers": (PRODUCER_WEIGHT, PRODUCER_OTHER),
                 "weights": (PRODUCER_WEIGHT,)}

_OUT_FNS = {
    tpf.prune_conv_out_channels: "conv",
    tpf.prune_depthwise_conv_out_channels: "conv",
    tpf.prune_linear_out_channels: "linear",
    tpf.prune_batchnorm_out_channels: "norm",
    tpf.prune_prelu_out_channels: "prelu",
    tpf.prune_groupnorm_out_channels: "norm",
}
_IN_FNS = {tpf.prune_conv_in_channels: "conv", tpf.prune_linear_in_channels: "linear"}
#: Groups touching these handlers are not treated as prunable units by default: removing a
#: channel of a LayerNorm/GroupNorm/embedding changes statistics or vocabularies, so the
#: removal could not be lossless.
_UNSUPPORTED_FNS = {
    *OPAQUE_HANDLERS,
    tpf.prune_layernorm_out_channels,
    tpf.prune_groupnorm_out_channels,
    tpf.prune_instancenorm_out_channels,
    tpf.prune_embedding_out_channels,
    tpf.prune_parameter_out_channels,
    tpf.prune_multihead_attention_out_channels,
    tpf.prune_lstm_out_channels,
}


@dataclass
class Slice:
    """One parameter's share of a unit set.

    ``index`` has shape ``(n,)`` (positions along ``dim`` of the parameter) and ``unit`` has
    shape ``(n,)`` (which unit, 0..G-1, each position belongs to). For grouped convolutions
    read as consumers, ``rows`` restricts each position to the output rows of its group.
    """

    module: nn.Module
    module_name: str
    param_name: str  # "weight" | "bias"
    dim: int
    index: torch.Tensor
    unit: torch.Tensor
    role: str
    kind: str  # "conv" | "linear" | "norm" | "prelu"
    group_rows: int = 0  # >0 only for grouped-conv consumers: output rows per group
    order_cache: dict | None = field(default=None, repr=False, compare=False)  # see forceprune.unit_sums

    @property
    def param(self) -> torch.Tensor:
        return getattr(self.module, self.param_name)

    def elements(self, tensor: torch.Tensor | None = None) -> torch.Tensor:
        """Elements of ``tensor`` (default: the parameter) per position: shape ``(n, m)``."""
        t = self.param if tensor is None else tensor
        if self.group_rows:
            per_group = t.shape[1]
            group = self.index // per_group
            local = self.index % per_group
            rows = group[:, None] * self.group_rows + torch.arange(self.group_rows, device=t.device)
            return t[rows, local[:, None]].reshape(len(self.index), -1)
        moved = t.movedim(self.dim, 0) if self.dim else t
        return moved.index_select(0, self.index.to(t.device)).reshape(len(self.index), -1)

    def position_sums(self, power: int, powered: dict | None = None) -> torch.Tensor:
        """Differentiable ``(n,)``: sum of ``|w|**power`` over each position's elements
        (:func:`forceprune.unit_sums.position_sums`)."""
        return position_sums(self, power, powered)

    def position_max_abs(self) -> torch.Tensor:
        """``(n,)`` largest absolute element of each position (no grad)."""
        with torch.no_grad():
            t = self.param.detach()
            if self.group_rows:
                e = self.elements().detach().abs()
                return e.amax(1) if e.shape[1] else torch.zeros(len(e), device=t.device)
            dims = [d for d in range(t.dim()) if d != self.dim]
            m = t.abs().amax(dim=dims) if dims else t.abs()
            return m.index_select(0, self.index.to(m.device))

    def zero_(self, tensor: torch.Tensor, units: torch.Tensor) -> None:
        """Set to zero, in place, this slice's elements of ``tensor`` for the given units.

        ``tensor`` is the parameter itself or an optimizer state tensor of the same shape.
        ``units`` is a ``(G,)`` bool mask over the unit set.
        """
        sel = units.to(self.unit.device)[self.unit]
        if not bool(sel.any()):
            return
        pos = self.index[sel].to(tensor.device)
        with torch.no_grad():
            if self.group_rows:
                per_group = tensor.shape[1]
                offsets = torch.arange(self.group_rows, device=tensor.device)
                rows = (pos // per_group)[:, None] * self.group_rows + offsets
                tensor[rows, (pos % per_group)[:, None]] = 0
            else:
                tensor.index_fill_(self.dim, pos, 0)


@dataclass
class UnitSet:
    """The ``G`` coupled units of one dependency group.

    ``root`` is the layer whose output channels define the group; unit ``i`` is the
    ``i``-th output channel of ``root``, so distances to a pivot are measured in ``root``'s
    native channel order.
    """

    name: str
    root: nn.Module
    root_fn: object
    size: int
    slices: list[Slice] = field(default_factory=list)
    dead: torch.Tensor | None = None  # (G,) bool: units captured at exactly zero
    #: root channels per unit: unit u owns root channels [u*c, (u+1)*c) (c > 1 for attention heads)
    channels_per_unit: int = 1
    #: ``on_removed(model, kept_units)``, called after removal on the model that was pruned
    #: (e.g. to update a head-count attribute); look modules up by name in ``model``
    on_removed: Callable[[nn.Module, list[int]], None] | None = None
    kind: str = "channel"  # one of UNIT_KINDS: what a unit is, for reports
    root_name: str = ""  # module name of ``root`` (defaults to ``name``)
    removal: str = "either"  # one of REMOVAL_RULES: when a zero unit may go
    layout: str = "torch-pruning channel group"  # what mapped the units (named by errors)
    #: the set's own surgery keeps parameters shared between modules shared (tied weights)
    keeps_ties: bool = False
    _numel: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.dead is None:
            self.dead = torch.zeros(self.size, dtype=torch.bool)
        if not self.root_name:
            self.root_name = self.name
        if self.kind not in UNIT_KINDS or self.removal not in REMOVAL_RULES:
            raise ForcePruneError(f"unit set {self.name!r}: kind {self.kind!r} / removal {self.removal!r} must be one of "
                                  f"{UNIT_KINDS} / {REMOVAL_RULES}.")

    def select(self, include: str) -> list[Slice]:
        """Slices a force acts on. ``include``: ``"all"`` (every coupled slice),
        ``"producers"`` (producer weights, biases and norm entries) or ``"weights"``
        (producer conv/linear weights only, as ETP's official code)."""
        return [s for s in self.slices if s.role in INCLUDE_ROLES[include]]

    def unit_sums(self, include: str, power: int, powered: dict | None = None) -> torch.Tensor:
        """Differentiable ``(G,)``: sum over each unit's elements of ``|w|**power``
        (:func:`forceprune.unit_sums.unit_sums`; ``powered``: see :meth:`Slice.position_sums`)."""
        out = unit_sums(self.select(include), self.size, power, powered)
        if out is None:
            raise ForcePruneError(f"unit set {self.name!r} has no slice of kind {include!r}")
        return out

    def unit_max_abs(self, include: str) -> torch.Tensor:
        """``(G,)`` tensor: largest absolute element of each unit over the slices a force acts on
        (no grad; 0 for a unit with no such element)."""
        return self.max_abs(*INCLUDE_ROLES[include])

    def max_abs(self, *roles: str) -> torch.Tensor:
        """``(G,)`` tensor: largest absolute element of each unit over its slices of these roles."""
        with torch.no_grad():
            out = torch.zeros(self.size)
            for s in self.slices:
                if s.role in roles:
                    m = s.position_max_abs().float().cpu()
                    out = torch.maximum(out, torch.zeros(self.size).scatter_reduce(0, s.unit.cpu(), m, "amax"))
            return out

    def has_role(self, role: str) -> bool:
        return any(s.role == role for s in self.slices)

    def numel(self, include: str) -> torch.Tensor:
        """``(G,)`` tensor: number of elements each unit has in the selected slices (cached: the
        shapes of a unit set never change; a removal builds new unit sets)."""
        if include not in self._numel:
            n = torch.zeros(self.size)
            for s in self.select(include):
                per_pos = s.elements().shape[1]
                n.index_add_(0, s.unit.cpu(), torch.full((len(s.unit),), float(per_pos)))
            self._numel[include] = n
        return self._numel[include]

    def zero_(self, units: torch.Tensor, include: str, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Zero the selected slices of ``units`` ((G,) bool) in the parameters and, if given,
        in every optimizer state tensor shaped like them (momentum, Adam moments)."""
        for s in self.select(include):
            p = s.param
            s.zero_(p.data, units)
            if p.grad is not None:
                s.zero_(p.grad, units)
            if optimizer is not None and p in optimizer.state:
                for v in optimizer.state[p].values():
                    if torch.is_tensor(v) and v.shape == p.shape:
                        s.zero_(v, units)

    def root_channels(self, units: Sequence[int]) -> list[int]:
        """Root-layer channel indices owned by the given units."""
        c = self.channels_per_unit
        return [u * c + j for u in units for j in range(c)]

    def producer_modules(self) -> list[nn.Module]:
        return list({id(s.module): s.module for s in self.slices if s.role == PRODUCER_WEIGHT}.values())

    def modules(self) -> dict[str, nn.Module]:
        """``{module name: module}`` of every slice."""
        return {s.module_name: s.module for s in self.slices}


def _slice_from_dep(dep, idxs, root_idxs, names: dict) -> list[Slice]:
    layer, fn = dep.target.module, dep.handler
    if not isinstance(layer, nn.Module):
        return []
    index = torch.as_tensor(list(idxs), dtype=torch.long)
    unit = torch.as_tensor(list(root_idxs), dtype=torch.long)
    name = names.get(layer, layer.__class__.__name__)
    out: list[Slice] = []
    if fn in _OUT_FNS:
        kind = _OUT_FNS[fn]
        if kind in ("conv", "linear"):
            transposed = getattr(layer, "transposed", False)
            out.append(Slice(layer, name, "weight", 1 if transposed else 0, index, unit, PRODUCER_WEIGHT, kind))
            if getattr(layer, "bias", None) is not None:
                out.append(Slice(layer, name, "bias", 0, index, unit, PRODUCER_OTHER, kind))
        elif kind == "norm":
            if getattr(layer, "affine", False):
                out.append(Slice(layer, name, "weight", 0, index, unit, PRODUCER_OTHER, kind))
                out.append(Slice(layer, name, "bias", 0, index, unit, PRODUCER_OTHER, kind))
        elif kind == "prelu" and layer.weight.numel() > 1:
            out.append(Slice(layer, name, "weight", 0, index, unit, PRODUCER_OTHER, kind))
    elif fn in _IN_FNS:
        kind = _IN_FNS[fn]
        if kind == "conv" and getattr(layer, "transposed", False):
            out.append(Slice(layer, name, "weight", 0, index, unit, CONSUMER, kind))
        elif kind == "conv" and layer.groups > 1:
            rows = layer.out_channels // layer.groups
            out.append(Slice(layer, name, "weight", 1, index, unit, CONSUMER, kind, group_rows=rows))
        else:
            out.append(Slice(layer, name, "weight", 1, index, unit, CONSUMER, kind))
    return out


#: Unit providers: ``provider(model, names) -> (unit_sets, claimed_modules)``. They define unit
#: sets that torch-pruning's channel groups cannot express (attention heads) and claim the
#: blocks those live in (the attention module itself, not only its projections): a claimed
#: block is opaque to the dependency graph, and any channel group touching it is left to the
#: provider. Register with :func:`register_unit_provider`.
_UNIT_PROVIDERS: list[Callable] = []


def register_unit_provider(provider: Callable) -> Callable:
    """Add a unit provider (decorator-friendly); see ``_UNIT_PROVIDERS``."""
    if provider not in _UNIT_PROVIDERS:
        _UNIT_PROVIDERS.append(provider)
    return provider


def provided_units(model: nn.Module) -> tuple[list[UnitSet], list[nn.Module]]:
    """Every registered provider's unit sets of ``model`` and the modules they claim."""
    names = {m: n for n, m in model.named_modules()}
    unit_sets, claimed = [], []
    for provider in _UNIT_PROVIDERS:
        provided, modules = provider(model, names)
        unit_sets += provided
        claimed += list(modules)
    return unit_sets, claimed


def model_graph(model: nn.Module, example_inputs, claimed: Sequence[nn.Module] | None = None) -> tp.DependencyGraph:
    """torch-pruning's graph of ``model`` with the provider-claimed blocks opaque
    (:func:`forceprune.tracing.trace_graph`); ``claimed`` defaults to the providers' claims."""
    if claimed is None:
        claimed = provided_units(model)[1]
    try:
        return trace_graph(model, example_inputs, claimed)
    except Exception as exc:  # torch-pruning raises many kinds; name the cause and the fix
        raise _inputs_error("could not trace the model", exc) from exc


def _inputs_error(what: str, exc: Exception) -> ForcePruneError:
    return ForcePruneError(
        f"{what} on the given example_inputs ({type(exc).__name__}: {exc}). Pass example_inputs that the model "
        "accepts: a tensor, a tuple of positional args, or a dict of keyword args, e.g. torch.randn(1, 3, 32, 32)."
    )


def build_unit_sets(
    model: nn.Module,
    example_inputs,
    ignored_layers: Sequence[nn.Module] = (),
    ignore_output_layers: bool = True,
    root_module_types: Iterable[type] = (nn.modules.conv._ConvNd, nn.Linear),
) -> tuple[tp.DependencyGraph, list[UnitSet]]:
    """The model's graph (:func:`model_graph`) and its prunable unit sets: the providers'
    (attention heads, FFN neurons, ...) and torch-pruning's channel groups of the rest.

    Groups are skipped when they touch an ignored layer (and, by default, the model's output
    layers), a block a provider claimed, or a layer whose channels cannot be removed
    losslessly (LayerNorm, embeddings: the hidden size of a transformer, for example; a
    GroupNorm unless the group holds whole GroupNorm groups, which then are the units).
    Unit sets touching a parameter that several modules share are left out with a
    :class:`SharedWeightWarning`, unless their surgery keeps the sharing.
    """
    provided, claimed = provided_units(model)
    try:
        graph = trace_graph(model, example_inputs, claimed)  # one pass: the graph and the output layers
    except Exception as exc:  # torch-pruning raises many kinds; name the cause and the fix
        try:
            find_output_layers(model, example_inputs)
        except Exception as run_exc:
            raise _inputs_error("the model does not run", run_exc) from run_exc
        raise _inputs_error("could not trace the model", exc) from exc
    ignored = list(ignored_layers) + (graph.output_layers if ignore_output_layers else [])
    ignored_all = [sub for m in ignored for sub in m.modules()]
    ignored_ids = {id(m) for m in ignored_all}
    names = {m: n for n, m in model.named_modules()}
    unit_sets = [us for us in provided if not any(id(m) in ignored_ids for m in us.producer_modules())]
    claimed_ids = {id(m) for m in claimed}
    for group in graph.get_all_groups(ignored_layers=ignored_all, root_module_types=tuple(root_module_types)):
        if any(id(dep.target.module) in claimed_ids for dep, _ in group):
            continue
        us = _channel_unit_set(group, names)
        if us is not None:
            unit_sets.append(us)
    unit_sets = _without_shared_weights(model, unit_sets)
    graph.own_groups = {id(us.root): us for us in unit_sets if us.root_fn == OWN_SURGERY}
    order = {m: i for i, m in enumerate(model.modules())}
    unit_sets.sort(key=lambda us: min(order[m] for m in us.producer_modules()))
    return graph, unit_sets


def _channel_unit_set(group, names: dict) -> UnitSet | None:
    """The unit set of one torch-pruning group, or None when it cannot be removed losslessly."""
    unsupported = {dep.handler for dep, _ in group if dep.handler in _UNSUPPORTED_FNS}
    per_unit = 1
    if unsupported == {tpf.prune_groupnorm_out_channels}:
        per_unit = groupnorm_channels_per_unit(group)
        if per_unit is None:
            return None
    elif unsupported:
        return None
    root_dep = group[0].dep
    root = root_dep.target.module
    slices = []
    for item in group:
        slices += _slice_from_dep(item.dep, item.idxs, item.root_idxs, names)
    size = len(group[0].idxs) // per_unit
    if size < 2 or not any(s.role == PRODUCER_WEIGHT for s in slices):
        return None
    if per_unit == 1:
        return UnitSet(name=names.get(root, str(root)), root=root, root_fn=root_dep.handler, size=size, slices=slices)
    for s in slices:
        s.unit = s.unit // per_unit
    norms = [names[dep.target.module] for dep, _ in group if dep.handler == tpf.prune_groupnorm_out_channels]
    return UnitSet(name=names.get(root, str(root)), root=root, root_fn=root_dep.handler, size=size, slices=slices,
                   channels_per_unit=per_unit, kind="group", layout="torch-pruning channel group of GroupNorm groups",
                   on_removed=lambda model, kept: _set_groups(model, norms, per_unit))


def _set_groups(model: nn.Module, norms: list[str], per_unit: int) -> None:
    """After torch-pruning removed whole groups' channels: one group per ``per_unit`` channels."""
    for name in norms:
        gn = model.get_submodule(name)
        gn.num_groups = gn.num_channels // per_unit


class SharedWeightWarning(UserWarning):
    """Some units were left out: their parameters are shared by several modules (tied weights)."""


def _without_shared_weights(model: nn.Module, unit_sets: list[UnitSet]) -> list[UnitSet]:
    shared = shared_parameters(model)
    if not shared:
        return unit_sets
    kept, dropped = [], []
    for us in unit_sets:
        hit = next((shared[id(s.param)] for s in us.slices if id(s.param) in shared), None)
        if hit is None or us.keeps_ties:
            kept.append(us)
        else:
            dropped.append(f"{us.name} (shares {' = '.join(hit)})")
    if dropped:
        warnings.warn(
            f"forceprune left {len(dropped)} unit set(s) unpruned because they touch a parameter that several modules "
            f"share (tied weights): {'; '.join(dropped[:5])}. Removing their units would untie the modules. Untie "
            "the weights before building the ForcePruner (e.g. give each module its own nn.Parameter) to prune them.",
            SharedWeightWarning, stacklevel=4,
        )
    return kept
