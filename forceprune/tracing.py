"""torch-pruning's dependency graph of a model, with the blocks a unit provider owns left opaque.

torch-pruning traces every ``nn.Linear``/conv of a model and couples channels through every
reshape, expand and split between them. Inside attention that search is where it gets lost:
on grouped-query attention (``repeat_kv``: expand + reshape of the key/value heads) its group
search in ``get_all_groups`` does not finish, even for one layer of width 64, and where it
finishes it cannot express a head. A unit provider (:mod:`forceprune.attention`) knows those
blocks from their layout and builds their units itself, so the graph does not need to see
inside them: :func:`trace_graph` runs each *opaque* block under ``torch.no_grad()`` and ties
its first output to its inputs through one marker node. Channels that flow into or out of a
marker are coupled to something only the provider understands, so every channel group
touching a marker (its handlers are :data:`OPAQUE_HANDLERS`) is left to the provider.

The cost of the trace is then one forward pass of the model (``benchmarks/discovery.py``).

Also here, the other model-reading pieces of unit discovery: :func:`find_output_layers`
(found in the same pass as the trace), :func:`groupnorm_channels_per_unit` (when a channel
group holds whole GroupNorm groups), :func:`shared_parameters` (tied weights), and
:class:`SliceGroup`, a provider unit set seen as a torch-pruning group.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch
import torch.nn as nn
import torch_pruning as tp
from torch_pruning._helpers import GroupItem
from torch_pruning.pruner.function import (BasePruningFunc, prune_groupnorm_out_channels, prune_linear_in_channels,
                                           prune_linear_out_channels)

from ._torch import eval_mode, flatten_tensors, run_model

_MARKER_ATTR = "_forceprune_opaque_marker"


class _Attach(torch.autograd.Function):
    """``out`` (computed without autograd) given a grad_fn whose inputs are ``inputs``: the
    graph sees one edge from every input to the output and nothing in between."""

    @staticmethod
    def forward(ctx, out: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        return out.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # never called: the graph is only read
        return (None,) * len(ctx.needs_input_grad)


class OpaqueMarker(nn.Module):
    """The node an opaque block's output passes through while the graph is traced."""

    saw_sequence = False  # the block returned (batch, tokens, channels) tensors

    def forward(self, out: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        self.saw_sequence = self.saw_sequence or out.dim() == 3
        return _Attach.apply(out, *inputs)


#: ``UnitSet.root_fn`` of unit sets whose whole surgery is their ``on_removed`` (a provider's
#: units, inside a block the graph sees as opaque)
OWN_SURGERY = "own-surgery"


class _DependencyGraph(tp.DependencyGraph):
    """torch-pruning's graph, told what its own ``nn.Linear`` hook would have told it had the
    blocks been traced: that the model carries token sequences (3-D tensors). Its reshape
    index mapping assumes 2-D/4-D tensors otherwise, and divides by zero on a ViT's
    ``flatten(2)`` of the patch embedding followed by the class-token concatenation.

    ``get_pruning_group(root, OWN_SURGERY, idxs)`` of a provider unit set's root gives a
    :class:`SliceGroup` (what torch-pruning importance criteria read), registered in
    ``own_groups`` by :func:`forceprune.units.build_unit_sets`."""

    markers: Sequence[OpaqueMarker] = ()

    def _trace(self, *args, **kwargs):
        module2node = super()._trace(*args, **kwargs)
        if any(m.saw_sequence for m in self.markers):
            self._2d_4d = False
        return module2node

    def get_pruning_group(self, module, pruning_fn, idxs):
        if pruning_fn == OWN_SURGERY:
            unit_set = getattr(self, "own_groups", {}).get(id(module))
            if unit_set is None:
                raise ValueError(f"{type(module).__name__} is the root of no provider unit set of this graph.")
            return SliceGroup(unit_set)
        return super().get_pruning_group(module, pruning_fn, idxs)


class SliceGroup(list):
    """A provider unit set seen as a torch-pruning group of every root channel: items
    ``(dep, idxs)`` with ``dep.layer`` / ``dep.pruning_fn`` (linear out- or in-channel pruning)
    and ``root_idxs``, one per ``nn.Linear`` weight slice, the root's slice first. Position
    ``k`` of unit ``u`` in a slice is root channel ``u * c + (k mod c)``
    (``c = channels_per_unit``), so importance criteria that sum over a group sum a unit's
    slices into its ``c`` root channels."""

    def __init__(self, unit_set):
        items = []
        for s in sorted(unit_set.slices, key=lambda s: s.module is not unit_set.root):
            if not isinstance(s.module, nn.Linear) or s.param_name != "weight":
                continue
            fn = prune_linear_in_channels if s.dim == 1 else prune_linear_out_channels
            rank = torch.zeros_like(s.unit)
            for u in s.unit.unique():
                where = s.unit == u
                rank[where] = torch.arange(int(where.sum())) % unit_set.channels_per_unit
            item = GroupItem(_SliceDep(s.module, fn), s.index.tolist())
            item.root_idxs = (s.unit * unit_set.channels_per_unit + rank).tolist()
            items.append(item)
        super().__init__(items)


class _SliceDep:
    def __init__(self, layer: nn.Module, fn):
        self.layer = self.target_module = layer
        self.pruning_fn = self.handler = fn


class _OpaquePruner(BasePruningFunc):
    """torch-pruning handler of a marker: it reports no channels and prunes nothing; its in
    and out handlers differ, so no group passes through it."""

    TARGET_MODULES = OpaqueMarker

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        return layer

    def get_out_channels(self, layer: nn.Module):
        return None

    def get_in_channels(self, layer: nn.Module):
        return None


_OPAQUE_PRUNER = _OpaquePruner()
#: the handlers of marker nodes: a channel group holding one touches an opaque block
OPAQUE_HANDLERS = frozenset({_OPAQUE_PRUNER.prune_out_channels, _OPAQUE_PRUNER.prune_in_channels})


def outermost(modules: Sequence[nn.Module], model: nn.Module) -> list[nn.Module]:
    """The ``modules`` (of ``model``) that no other of them contains, in model order."""
    wanted = {id(m) for m in modules}
    out, inside = [], set()
    for m in model.modules():
        if id(m) in inside or id(m) not in wanted:
            continue
        out.append(m)
        inside |= {id(sub) for sub in m.modules()}
    return out


def _first_tensor(obj):
    """``(tensor, rebuild)``: the first floating tensor of a module output and a function that
    puts a replacement in its place; ``(None, None)`` if there is none."""
    if torch.is_tensor(obj):
        return (obj, lambda t: t) if obj.is_floating_point() else (None, None)
    if isinstance(obj, (tuple, list)):
        for i, v in enumerate(obj):
            t, put = _first_tensor(v)
            if t is not None:
                def rebuild(new, i=i, put=put):
                    items = list(obj)
                    items[i] = put(new)
                    return type(obj)(items) if isinstance(obj, list) else tuple(items)
                return t, rebuild
    if isinstance(obj, dict):
        for k, v in obj.items():
            t, put = _first_tensor(v)
            if t is not None:
                def rebuild(new, k=k, put=put):
                    obj[k] = put(new)
                    return obj
                return t, rebuild
    return None, None


def _opaque_forward(block: nn.Module, marker: OpaqueMarker):
    original = block.forward

    def forward(*args, **kwargs):
        with torch.no_grad():
            out = original(*args, **kwargs)
        # with no input on the graph (the block reads the model's inputs), a leaf of its own keeps
        # the marker on it: whatever the output flows into is then coupled to the marker
        sources = [t for t in flatten_tensors((args, kwargs)) if t.requires_grad] or [torch.zeros((), requires_grad=True)]
        first, rebuild = _first_tensor(out)
        if first is None:
            return out
        return rebuild(marker(first, *sources))

    return forward


@contextmanager
def opaque(model: nn.Module, blocks: Sequence[nn.Module]) -> Iterator[list[OpaqueMarker]]:
    """While the block runs, each of ``blocks`` runs its forward without autograd and passes
    its first output through a fresh :class:`OpaqueMarker` (a child of the block for the
    time being, so that torch-pruning hooks it). Yields the markers."""
    markers, saved = [], []
    try:
        for block in blocks:
            marker = OpaqueMarker()
            saved.append((block, "forward" in block.__dict__, block.__dict__.get("forward")))
            block.add_module(_MARKER_ATTR, marker)
            block.forward = _opaque_forward(block, marker)
            markers.append(marker)
        yield markers
    finally:
        for block, had, old in saved:
            block._modules.pop(_MARKER_ATTR, None)
            if had:
                block.forward = old
            else:
                block.__dict__.pop("forward", None)


@contextmanager
def no_kv_cache(model: nn.Module) -> Iterator[None]:
    """Hugging Face decoders return a key/value cache object by default (``use_cache=True``),
    which a trace cannot follow; switch it off for the ``with`` block."""
    cfg = getattr(model, "config", None)
    had = cfg is not None and getattr(cfg, "use_cache", None) is not None
    old = cfg.use_cache if had else None
    if had:
        cfg.use_cache = False
    try:
        yield
    finally:
        if had:
            cfg.use_cache = old


def trace_graph(model: nn.Module, example_inputs, opaque_blocks: Sequence[nn.Module] = ()) -> tp.DependencyGraph:
    """torch-pruning's :class:`~torch_pruning.DependencyGraph` of ``model`` on ``example_inputs``
    (eval mode, no KV cache) with ``opaque_blocks`` seen only as marker nodes. The same pass
    finds the model's output layers (:func:`find_output_layers`): ``graph.output_layers``."""
    blocks = outermost(opaque_blocks, model)
    with eval_mode(model), no_kv_cache(model), output_layer_hooks(model) as heads, opaque(model, blocks) as markers:
        graph = _DependencyGraph()
        graph.markers = markers
        graph.build_dependency(model, example_inputs=example_inputs, verbose=False,
                               customized_pruners={OpaqueMarker: _OPAQUE_PRUNER} if markers else None)
    graph.output_layers = heads()
    return graph


@contextmanager
def output_layer_hooks(model: nn.Module) -> Iterator[Callable[[], list[nn.Module]]]:
    """While the block runs the model once, record which conv/linear layers produced (part of)
    its output; yields a function returning them after the run."""
    produced: dict[int, nn.Module] = {}
    outputs: list = []
    hooks = [
        m.register_forward_hook(lambda mod, _i, o: produced.__setitem__(id(o), mod) if torch.is_tensor(o) else None)
        for m in model.modules()
        if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))
    ]
    hooks.append(model.register_forward_hook(lambda mod, _i, o: outputs.append(o)))
    try:
        yield lambda: [produced[id(t)] for t in flatten_tensors(outputs[:1]) if id(t) in produced]
    finally:
        for h in hooks:
            h.remove()


def find_output_layers(model: nn.Module, example_inputs) -> list[nn.Module]:
    """Conv/linear layers whose output *is* (part of) the model's output: the classifier
    heads. Found by running the model once with forward hooks, in eval mode (a training-mode
    pass would move BatchNorm running statistics toward the example's)."""
    with eval_mode(model), no_kv_cache(model), torch.no_grad(), output_layer_hooks(model) as heads:
        run_model(model, example_inputs)
    return heads()


def groupnorm_channels_per_unit(group) -> int | None:
    """Channels per unit when every GroupNorm of ``group`` sees whole groups, else None.

    Exactness: a GroupNorm normalises each group of ``c = num_channels / num_groups``
    channels by that group's own mean and variance, so removing whole groups leaves the
    other groups' outputs unchanged. Required: every GroupNorm of the group has the same
    ``c``, the root's channels come in blocks of ``c`` (block ``b`` = root channels
    ``[b*c, (b+1)*c)``) and each block lands on exactly one whole group of every norm."""
    norms = [(dep.target.module, item) for item in group for dep in [item.dep]
             if dep.handler == prune_groupnorm_out_channels]
    sizes = {m.num_channels // m.num_groups for m, _ in norms}
    if len(sizes) != 1:
        return None
    c = sizes.pop()
    if len(group[0].idxs) % c:
        return None
    for _, item in norms:
        blocks: dict[int, set[int]] = {}
        for idx, root in zip(item.idxs, item.root_idxs):
            if idx % c != root % c:
                return None
            blocks.setdefault(root // c, set()).add(idx // c)
        if any(len(g) != 1 for g in blocks.values()) or len({min(g) for g in blocks.values()}) != len(blocks):
            return None
    return c


def shared_parameters(model: nn.Module) -> dict[int, list[str]]:
    """``{id(parameter): [owner names]}`` for every parameter held by more than one module."""
    owners: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        for pname, p in module.named_parameters(recurse=False):
            owners.setdefault(id(p), []).append(f"{name}.{pname}" if name else pname)
    return {k: sorted(set(v)) for k, v in owners.items() if len(set(v)) > 1}
