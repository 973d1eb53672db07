"""Attention and feed-forward layouts: how a module's heads (or neurons) map onto its weights.

Each layout describes one way of writing attention (or a feed-forward block), builds the
:class:`~forceprune.units.UnitSet` of a matching module, and does the surgery when units are
removed (``on_removed``): it slices what torch-pruning's graph did not reach and updates the
module's head attributes (``num_heads`` & co.). Which layouts are tried, and the unit
provider that applies them to a model, live in :mod:`forceprune.attention.registry`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn as nn
from torch_pruning.pruner import function as tpf

from ..errors import ForcePruneError
from ..units import CONSUMER, PRODUCER_OTHER, PRODUCER_WEIGHT, Slice, UnitSet
from .mha import PrunedMultiheadAttention
from .slicing import deferred_surgery, get_path, head_rows, head_slices, join_path, linear_head_slices, slice_linear


def _set_head_count(layout, owner: nn.Module, heads: int, d: int) -> None:
    """Set the layout's head-count attribute of ``owner`` and the ``derived`` ones."""
    setattr(owner, layout.num_heads, heads)
    for attr, fn in layout.derived.items():
        setattr(owner, attr, fn(heads, d))


@dataclass
class SeparateHeads:
    """Attention with separate ``nn.Linear`` q/k/v projections and an output projection.

    Paths are relative to the matched module; ``owner`` is the sub-module carrying the head
    attributes. ``num_heads`` names the head-count attribute, ``head_dim`` the head-size
    attribute (``None``: ``q.out_features // num_heads``); ``derived`` maps other attributes
    to ``f(num_heads, head_dim)`` (e.g. ``all_head_size``). ``on_kept(owner, kept)`` is an
    optional hook after removal.
    """

    name: str
    q: str
    k: str
    v: str
    o: str
    num_heads: str
    head_dim: str | None = None
    owner: str = ""
    derived: dict = field(default_factory=dict)
    match_type: type | tuple | None = None
    on_kept: Callable | None = None
    use_graph: bool = True  # remove through torch-pruning's graph rooted at q (else own surgery)

    def matches(self, module: nn.Module) -> bool:
        if self.match_type is not None and not isinstance(module, self.match_type):
            return False
        lins = [get_path(module, p) for p in (self.q, self.k, self.v, self.o)]
        owner = get_path(module, self.owner) if self.owner else module
        return all(isinstance(m, nn.Linear) for m in lins) and isinstance(getattr(owner, self.num_heads, None), int)

    def geometry(self, module: nn.Module) -> tuple[int, int]:
        owner = get_path(module, self.owner) if self.owner else module
        heads = int(getattr(owner, self.num_heads))
        if self.head_dim is not None:
            d = int(getattr(owner, self.head_dim))
        else:
            d = get_path(module, self.q).out_features // max(heads, 1)
        return heads, d

    def modules(self, module: nn.Module) -> list[nn.Module]:
        return [get_path(module, p) for p in (self.q, self.k, self.v, self.o)]

    def unit_set(self, model: nn.Module, name: str, module: nn.Module) -> UnitSet | None:
        heads, d = self.geometry(module)
        q, k, v, o = self.modules(module)
        n = {p: join_path(name, p) for p in (self.q, self.k, self.v, self.o)}
        if any(lin.out_features != heads * d for lin in (q, k, v)) or o.in_features != heads * d:
            raise ForcePruneError(
                f"{name}: {heads} heads of size {d} do not match the projections "
                f"(q/k/v out {q.out_features}/{k.out_features}/{v.out_features}, o in {o.in_features}); "
                f"the {self.name!r} layout's attributes are inconsistent with the weights."
            )
        slices = []
        for lin, path in ((q, self.q), (k, self.k), (v, self.v)):
            slices += linear_head_slices(lin, n[path], heads, d)
        slices += linear_head_slices(o, n[self.o], heads, d, role_rows=False)
        return UnitSet(
            name=name,
            root=q,
            root_fn=tpf.prune_linear_out_channels if self.use_graph else deferred_surgery,
            size=heads,
            slices=slices,
            channels_per_unit=d,
            on_removed=lambda m, kept: self.remove(m, name, kept, heads, d),
            kind="head",
            root_name=n[self.q],
        )

    def remove(self, model: nn.Module, name: str, kept: list[int], heads: int, d: int) -> None:
        """After removal: slice whatever the graph did not, then fix the head attributes."""
        module = model.get_submodule(name)
        q, k, v, o = self.modules(module)
        new = len(kept) * d
        rows = head_rows(kept, d)
        for lin, path in ((q, self.q), (k, self.k), (v, self.v)):
            if lin.out_features == heads * d and new != heads * d:
                slice_linear(lin, rows=rows)
            elif lin.out_features != new:
                raise ForcePruneError(f"{join_path(name, path)}: has {lin.out_features} outputs after removal, expected {new}.")
        if o.in_features == heads * d and new != heads * d:
            slice_linear(o, cols=rows)
        elif o.in_features != new:
            raise ForcePruneError(f"{join_path(name, self.o)}: has {o.in_features} inputs after removal, expected {new}.")
        owner = get_path(module, self.owner) if self.owner else module
        _set_head_count(self, owner, len(kept), d)
        if self.on_kept is not None:
            self.on_kept(owner, kept)

    def sync(self, module: nn.Module) -> None:
        """Set the head attributes from the weight shapes (after loading a pruned state dict)."""
        owner = get_path(module, self.owner) if self.owner else module
        q = get_path(module, self.q)
        d = int(getattr(owner, self.head_dim)) if self.head_dim else None
        if d is None:
            return
        heads = q.out_features // d
        _set_head_count(self, owner, heads, d)


@dataclass
class FusedHeads:
    """Attention with one fused ``qkv`` ``nn.Linear`` (rows ``(3, heads, head_dim)`` for
    ``order="3hd"``, ``(heads, 3, head_dim)`` for ``"h3d"``) and an output projection."""

    name: str
    qkv: str = "qkv"
    o: str = "proj"
    num_heads: str = "num_heads"
    head_dim: str | None = "head_dim"
    order: str = "3hd"
    derived: dict = field(default_factory=dict)
    match_type: type | tuple | None = None

    def matches(self, module: nn.Module) -> bool:
        if self.match_type is not None and not isinstance(module, self.match_type):
            return False
        qkv, o = get_path(module, self.qkv), get_path(module, self.o)
        heads = getattr(module, self.num_heads, None)
        return (
            isinstance(qkv, nn.Linear) and isinstance(o, nn.Linear) and isinstance(heads, int)
            and heads > 0 and qkv.out_features == 3 * o.in_features
        )

    def geometry(self, module: nn.Module) -> tuple[int, int]:
        heads = int(getattr(module, self.num_heads))
        d = getattr(module, self.head_dim, None) if self.head_dim else None
        d = int(d) if d is not None else get_path(module, self.o).in_features // heads
        return heads, d

    def modules(self, module: nn.Module) -> list[nn.Module]:
        return [get_path(module, self.qkv), get_path(module, self.o)]

    def _rows(self, kept: Sequence[int], heads: int, d: int) -> list[int]:
        if self.order == "3hd":
            return [r for c in range(3) for r in head_rows(kept, d, c * heads * d)]
        return [h * 3 * d + c * d + j for h in kept for c in range(3) for j in range(d)]

    def unit_set(self, model: nn.Module, name: str, module: nn.Module) -> UnitSet | None:
        heads, d = self.geometry(module)
        qkv, o = self.modules(module)
        if qkv.out_features != 3 * heads * d or o.in_features != heads * d:
            raise ForcePruneError(
                f"{name}: {heads} heads of size {d} do not match {self.qkv} ({qkv.out_features} outputs) "
                f"and {self.o} ({o.in_features} inputs)."
            )
        nq, no = join_path(name, self.qkv), join_path(name, self.o)
        all_heads = list(range(heads))
        index = torch.as_tensor(self._rows(all_heads, heads, d))
        unit = torch.as_tensor([h for h in self._heads_of_rows(heads, d)])
        slices = [Slice(qkv, nq, "weight", 0, index, unit, PRODUCER_WEIGHT, "linear")]
        if qkv.bias is not None:
            slices.append(Slice(qkv, nq, "bias", 0, index, unit, PRODUCER_OTHER, "linear"))
        slices += linear_head_slices(o, no, heads, d, role_rows=False)
        return UnitSet(
            name=name, root=qkv, root_fn=deferred_surgery, size=heads, slices=slices,
            channels_per_unit=d, on_removed=lambda m, kept: self.remove(m, name, kept, heads, d), kind="head", root_name=nq,
        )

    def _heads_of_rows(self, heads: int, d: int) -> list[int]:
        if self.order == "3hd":
            return [h for _ in range(3) for h in range(heads) for _ in range(d)]
        return [h for h in range(heads) for _ in range(3) for _ in range(d)]

    def remove(self, model: nn.Module, name: str, kept: list[int], heads: int, d: int) -> None:
        module = model.get_submodule(name)
        qkv, o = self.modules(module)
        slice_linear(qkv, rows=self._rows(kept, heads, d))
        slice_linear(o, cols=head_rows(kept, d))
        _set_head_count(self, module, len(kept), d)

    def sync(self, module: nn.Module) -> None:
        d = getattr(module, self.head_dim, None) if self.head_dim else None
        if d is None:
            return
        heads = get_path(module, self.o).in_features // int(d)
        _set_head_count(self, module, heads, d)


@dataclass
class MultiheadAttentionHeads:
    """``nn.MultiheadAttention``: rows of the (packed) input projection at three offsets and
    columns of ``out_proj``; removal swaps in a :class:`PrunedMultiheadAttention`."""

    name: str = "torch.nn.MultiheadAttention"

    def matches(self, module: nn.Module) -> bool:
        return (
            isinstance(module, nn.MultiheadAttention)
            and module.bias_k is None
            and not module.add_zero_attn
        )

    def geometry(self, module: nn.Module) -> tuple[int, int]:
        return module.num_heads, module.head_dim

    def modules(self, module: nn.Module) -> list[nn.Module]:
        return [module, module.out_proj]

    def unit_set(self, model: nn.Module, name: str, module: nn.Module) -> UnitSet | None:
        heads, d = self.geometry(module)
        e = module.embed_dim
        if module._qkv_same_embed_dim:
            slices = [head_slices(module, name, "in_proj_weight", 0, heads, d, PRODUCER_WEIGHT, (0, e, 2 * e))]
        else:
            slices = [
                head_slices(module, name, p, 0, heads, d, PRODUCER_WEIGHT)
                for p in ("q_proj_weight", "k_proj_weight", "v_proj_weight")
            ]
        if module.in_proj_bias is not None:
            slices.append(head_slices(module, name, "in_proj_bias", 0, heads, d, PRODUCER_OTHER, (0, e, 2 * e)))
        slices += linear_head_slices(module.out_proj, join_path(name, "out_proj"), heads, d, role_rows=False)
        return UnitSet(
            name=name, root=module, root_fn=deferred_surgery, size=heads, slices=slices,
            channels_per_unit=d, on_removed=lambda m, kept: self.remove(m, name, kept), kind="head", root_name=name,
        )

    def remove(self, model: nn.Module, name: str, kept: list[int]) -> None:
        module = model.get_submodule(name)
        new = PrunedMultiheadAttention.from_multihead_attention(module, kept)
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, new)

    def sync(self, module: nn.Module) -> None:  # never saved pruned: it is replaced on removal
        pass


@dataclass
class FeedForward:
    """A feed-forward block ``down(act(up(x)))``: each up-projection row is one neuron.

    Only register blocks whose forward applies nothing but an element-wise activation (and
    dropout) between ``up`` and ``down``: the unit set is built from this description, not
    traced."""

    name: str
    up: str
    down: str
    match: Callable[[nn.Module], bool]

    def matches(self, module: nn.Module) -> bool:
        return (
            isinstance(get_path(module, self.up), nn.Linear)
            and isinstance(get_path(module, self.down), nn.Linear)
            and bool(self.match(module))
        )

    def modules(self, module: nn.Module) -> list[nn.Module]:
        return [get_path(module, self.up), get_path(module, self.down)]

    def unit_set(self, model: nn.Module, name: str, module: nn.Module) -> UnitSet | None:
        up, down = self.modules(module)
        if up.out_features != down.in_features:
            raise ForcePruneError(f"{name}: {self.up} has {up.out_features} outputs but {self.down} reads {down.in_features}.")
        nu, nd = join_path(name, self.up), join_path(name, self.down)
        idx = torch.arange(up.out_features)
        slices = [Slice(up, nu, "weight", 0, idx, idx, PRODUCER_WEIGHT, "linear")]
        if up.bias is not None:
            slices.append(Slice(up, nu, "bias", 0, idx, idx, PRODUCER_OTHER, "linear"))
        slices.append(Slice(down, nd, "weight", 1, idx, idx, CONSUMER, "linear"))
        return UnitSet(
            name=nu, root=up, root_fn=tpf.prune_linear_out_channels, size=up.out_features, slices=slices,
            on_removed=lambda m, kept: self.remove(m, name, kept), kind="neuron", root_name=nu,
        )

    def remove(self, model: nn.Module, name: str, kept: list[int]) -> None:
        module = model.get_submodule(name)
        up, down = self.modules(module)
        size = len(kept)
        if up.out_features != size:  # torch-pruning's graph did not reach it: do it here
            slice_linear(up, rows=kept)
        if down.in_features != size:
            slice_linear(down, cols=kept)
