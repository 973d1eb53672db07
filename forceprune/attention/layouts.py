"""Multi-head attention layouts: how a module's heads map onto its weights, and their surgery.

Each layout describes one way of writing attention, builds the
:class:`~forceprune.units.UnitSet` of a matching module and does the surgery when heads are
removed (``on_removed``): it slices the projections and updates the module's head attributes
(``num_heads`` & co.). Every attention module a layout claims is opaque to torch-pruning's
graph (:mod:`forceprune.tracing`), so the surgery is all the layout's own
(``root_fn = OWN_SURGERY``); it reads the module's current shapes, so it composes with the
other surgeries of one removal (the residual stream slicing the projections' input columns,
the key/value groups of :mod:`.gqa`). Grouped-query attention lives in :mod:`.gqa`,
feed-forward blocks in :mod:`.ffn`. Which layouts are tried, and the unit provider that
applies them, live in :mod:`forceprune.attention.registry`.

Layout protocol (what the registry and :mod:`.rebuild` call): ``matches(module)``,
``geometry(module) -> (heads, head_dim)``, ``modules(module)`` (the module and its
projections: what the layout claims), ``unit_sets(model, name, module)``, ``sync(module)``
(head attributes from the weight shapes, after loading a pruned state dict) and, for the
residual stream of :mod:`.hidden`, ``residual_io(module) -> (reader paths, writer paths)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn as nn

from ..errors import ForcePruneError
from ..units import OWN_SURGERY, PRODUCER_OTHER, PRODUCER_WEIGHT, UnitSet
from .mha import PrunedMultiheadAttention
from .slicing import (
    get_path, head_rows, head_slices, in_features, is_projection, join_path, linear_head_slices, out_features,
    row_slices, slice_linear,
)


def set_head_attrs(owner: nn.Module, num_heads: str, derived: dict, heads: int, d: int) -> None:
    """Set ``owner.<num_heads> = heads`` and every ``derived`` attribute to ``f(heads, d)``."""
    setattr(owner, num_heads, heads)
    for attr, fn in derived.items():
        setattr(owner, attr, fn(heads, d))


def accepts(match, match_type, module: nn.Module) -> bool:
    """Whether ``module`` passes a layout's optional ``match_type`` and ``match`` predicate."""
    if match_type is not None and not isinstance(module, match_type):
        return False
    return match is None or bool(match(module))


def head_unit_set(layout, name: str, root: nn.Module, root_name: str, heads: int, d: int, slices: list,
                  remove: Callable, kind: str = "head", removal: str = "either", module_name: str | None = None) -> UnitSet:
    """A provider unit set of ``heads`` units of ``d`` channels whose surgery is ``remove``
    (``remove(model, module_name, kept)``; ``module_name`` defaults to ``name``)."""
    module_name = name if module_name is None else module_name
    return UnitSet(
        name=name, root=root, root_fn=OWN_SURGERY, size=heads, slices=slices, channels_per_unit=d,
        on_removed=lambda model, kept: remove(model, module_name, kept), kind=kind, root_name=root_name,
        removal=removal, layout=layout.name,
    )


@dataclass
class SeparateHeads:
    """Attention with separate q/k/v projections (``nn.Linear`` or ``Conv1D``) and an output
    projection, as many key/value heads as query heads.

    Paths are relative to the matched module; ``owner`` is the sub-module carrying the head
    attributes. ``num_heads`` names the head-count attribute, ``head_dim`` the head-size
    attribute (``None``: ``q`` outputs // ``num_heads``); ``derived`` maps other attributes
    to ``f(num_heads, head_dim)`` (e.g. ``all_head_size``). ``match_type`` / ``match``
    restrict the modules matched; ``on_kept(owner, kept)`` is an optional hook after removal.
    Head ``h`` is rows ``[h*d, (h+1)*d)`` of q, k and v and the same columns of o.
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
    match: Callable | None = None

    def matches(self, module: nn.Module) -> bool:
        projections = [get_path(module, p) for p in (self.q, self.k, self.v, self.o)]
        owner = get_path(module, self.owner) if self.owner else module
        return (accepts(self.match, self.match_type, module) and all(is_projection(m) for m in projections)
                and isinstance(getattr(owner, self.num_heads, None), int))

    def _owner(self, module: nn.Module) -> nn.Module:
        return get_path(module, self.owner) if self.owner else module

    def geometry(self, module: nn.Module) -> tuple[int, int]:
        owner = self._owner(module)
        if self.head_dim is not None:
            d = int(getattr(owner, self.head_dim))
            return out_features(get_path(module, self.q)) // d, d
        heads = int(getattr(owner, self.num_heads))
        return heads, out_features(get_path(module, self.q)) // max(heads, 1)

    def projections(self, module: nn.Module) -> list[nn.Module]:
        return [get_path(module, p) for p in (self.q, self.k, self.v, self.o)]

    def modules(self, module: nn.Module) -> list[nn.Module]:
        return [module, *self.projections(module)]

    def residual_io(self, module: nn.Module) -> tuple[list[str], list[str]]:
        return [self.q, self.k, self.v], [self.o]

    def unit_sets(self, model: nn.Module, name: str, module: nn.Module) -> list[UnitSet]:
        heads, d = self.geometry(module)
        q, k, v, o = self.projections(module)
        n = {p: join_path(name, p) for p in (self.q, self.k, self.v, self.o)}
        if any(out_features(m) != heads * d for m in (q, k, v)) or in_features(o) != heads * d:
            raise ForcePruneError(
                f"{name}: {heads} heads of size {d} do not match the projections (q/k/v out {out_features(q)}/"
                f"{out_features(k)}/{out_features(v)}, o in {in_features(o)}); the {self.name!r} layout's attributes "
                "are inconsistent with the weights."
            )
        slices = []
        for lin, path in ((q, self.q), (k, self.k), (v, self.v)):
            slices += linear_head_slices(lin, n[path], heads, d)
        slices += linear_head_slices(o, n[self.o], heads, d, role_rows=False)
        return [head_unit_set(self, name, q, n[self.q], heads, d, slices, self.remove)]

    def remove(self, model: nn.Module, name: str, kept: list[int]) -> None:
        """Keep heads ``kept``: rows of q, k, v and columns of o; then the head attributes."""
        module = model.get_submodule(name)
        _, d = self.geometry(module)
        q, k, v, o = self.projections(module)
        rows = head_rows(kept, d)
        for lin in (q, k, v):
            slice_linear(lin, rows=rows)
        slice_linear(o, cols=rows)
        owner = self._owner(module)
        set_head_attrs(owner, self.num_heads, self.derived, len(kept), d)
        if self.on_kept is not None:
            self.on_kept(owner, kept)

    def sync(self, module: nn.Module) -> None:
        """Set the head attributes from the weight shapes (after loading a pruned state dict)."""
        if self.head_dim is None:
            return
        heads, d = self.geometry(module)
        set_head_attrs(self._owner(module), self.num_heads, self.derived, heads, d)


@dataclass
class FusedHeads:
    """Attention with one fused qkv projection (``nn.Linear`` or GPT-2's ``Conv1D``; outputs
    ordered ``(3, heads, head_dim)`` for ``order="3hd"``, ``(heads, 3, head_dim)`` for
    ``"h3d"``) and an output projection. ``derived`` as for :class:`SeparateHeads`."""

    name: str
    qkv: str = "qkv"
    o: str = "proj"
    num_heads: str = "num_heads"
    head_dim: str | None = "head_dim"
    order: str = "3hd"
    derived: dict = field(default_factory=dict)
    match_type: type | tuple | None = None
    match: Callable | None = None

    def matches(self, module: nn.Module) -> bool:
        qkv, o = get_path(module, self.qkv), get_path(module, self.o)
        heads = getattr(module, self.num_heads, None)
        return (
            accepts(self.match, self.match_type, module) and is_projection(qkv) and is_projection(o)
            and isinstance(heads, int) and heads > 0 and out_features(qkv) == 3 * in_features(o)
        )

    def geometry(self, module: nn.Module) -> tuple[int, int]:
        heads = int(getattr(module, self.num_heads))
        d = getattr(module, self.head_dim, None) if self.head_dim else None
        d = int(d) if d is not None else in_features(get_path(module, self.o)) // heads
        return in_features(get_path(module, self.o)) // d, d

    def projections(self, module: nn.Module) -> list[nn.Module]:
        return [get_path(module, self.qkv), get_path(module, self.o)]

    def modules(self, module: nn.Module) -> list[nn.Module]:
        return [module, *self.projections(module)]

    def residual_io(self, module: nn.Module) -> tuple[list[str], list[str]]:
        return [self.qkv], [self.o]

    def _rows(self, kept: Sequence[int], heads: int, d: int) -> list[int]:
        if self.order == "3hd":
            return [r for c in range(3) for r in head_rows(kept, d, c * heads * d)]
        return [h * 3 * d + c * d + j for h in kept for c in range(3) for j in range(d)]

    def unit_sets(self, model: nn.Module, name: str, module: nn.Module) -> list[UnitSet]:
        heads, d = self.geometry(module)
        qkv, o = self.projections(module)
        if out_features(qkv) != 3 * heads * d or in_features(o) != heads * d:
            raise ForcePruneError(
                f"{name}: {heads} heads of size {d} do not match {self.qkv} ({out_features(qkv)} outputs) "
                f"and {self.o} ({in_features(o)} inputs)."
            )
        nq, no = join_path(name, self.qkv), join_path(name, self.o)
        index = torch.as_tensor(self._rows(range(heads), heads, d))
        unit = torch.as_tensor(self._heads_of_rows(heads, d))
        slices = row_slices(qkv, nq, index, unit) + linear_head_slices(o, no, heads, d, role_rows=False)
        return [head_unit_set(self, name, qkv, nq, heads, d, slices, self.remove)]

    def _heads_of_rows(self, heads: int, d: int) -> list[int]:
        if self.order == "3hd":
            return [h for _ in range(3) for h in range(heads) for _ in range(d)]
        return [h for h in range(heads) for _ in range(3) for _ in range(d)]

    def remove(self, model: nn.Module, name: str, kept: list[int]) -> None:
        module = model.get_submodule(name)
        heads, d = self.geometry(module)
        qkv, o = self.projections(module)
        slice_linear(qkv, rows=self._rows(kept, heads, d))
        slice_linear(o, cols=head_rows(kept, d))
        set_head_attrs(module, self.num_heads, self.derived, len(kept), d)

    def sync(self, module: nn.Module) -> None:
        if self.head_dim is None or getattr(module, self.head_dim, None) is None:
            return
        heads, d = self.geometry(module)
        set_head_attrs(module, self.num_heads, self.derived, heads, d)


@dataclass
class MultiheadAttentionHeads:
    """``nn.MultiheadAttention``: rows of the (packed) input projection at three offsets and
    columns of ``out_proj``; removal swaps in a :class:`PrunedMultiheadAttention`."""

    name: str = "torch.nn.MultiheadAttention"

    def matches(self, module: nn.Module) -> bool:
        return isinstance(module, nn.MultiheadAttention) and module.bias_k is None and not module.add_zero_attn

    def geometry(self, module: nn.Module) -> tuple[int, int]:
        return module.num_heads, module.head_dim

    def modules(self, module: nn.Module) -> list[nn.Module]:
        return [module, module.out_proj]

    def unit_sets(self, model: nn.Module, name: str, module: nn.Module) -> list[UnitSet]:
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
        return [head_unit_set(self, name, module, name, heads, d, slices, self.remove)]

    def remove(self, model: nn.Module, name: str, kept: list[int]) -> None:
        module = model.get_submodule(name)
        new = PrunedMultiheadAttention.from_multihead_attention(module, kept)
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, new)

    def sync(self, module: nn.Module) -> None:  # never saved pruned: it is replaced on removal
        pass
