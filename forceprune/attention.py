"""Attention heads and feed-forward neurons as prunable units.

A *head* is one unit spanning its query, key and value rows (and biases) and the matching
input columns of the output projection (the consumer). A *neuron* of a transformer's
feed-forward block spans one row (and bias) of the up-projection and one input column of
the down-projection. torch-pruning's channel groups cannot express a head (``head_dim``
coupled channels that must go together, and for fused or packed projections rows at three
offsets), so this module registers a *unit provider* (see
:func:`forceprune.units.register_unit_provider`) that builds these unit sets itself and
claims the modules involved, so that no channel-level group touches them.

Layouts understood out of the box:

* HF BERT-family encoders (BERT, RoBERTa, MiniLM, ELECTRA, ...; DistilBERT's
  ``q_lin/k_lin/v_lin/out_lin`` likewise): a module with
  ``self.query/key/value`` and ``output.dense`` whose ``self`` carries
  ``num_attention_heads``/``attention_head_size``/``all_head_size``. Removal goes through
  torch-pruning's dependency graph, rooted at the query projection (its group couples K, V
  and the output projection, checked by the tests); ``on_removed`` then updates the head
  counts, completes any projection the graph did not reach, and records the kept heads in
  ``model.config.forceprune`` so that a saved model can be rebuilt
  (:func:`forceprune.integrations.transformers.load_pruned`).
* ``nn.MultiheadAttention`` (packed ``in_proj_weight`` or separate q/k/v weights): a head
  spans rows of the input projection at three offsets and columns of ``out_proj``.
  ``nn.MultiheadAttention`` cannot hold fewer heads than ``embed_dim / head_dim`` (its
  forward assumes ``3 * embed_dim`` packed rows), so removal replaces the module with a
  :class:`PrunedMultiheadAttention` (same call signature and outputs, separate q/k/v
  ``nn.Linear`` projections of width ``heads * head_dim``).
* A fused ``qkv`` ``nn.Linear`` (timm-style ViT ``Attention``: ``qkv``, ``proj``,
  ``num_heads``; rows ordered ``(3, heads, head_dim)``). The forward must reshape the
  attention output with ``-1`` (or ``num_heads * head_dim``), not with the input width.

Feed-forward neurons are given ``kind="neuron"`` for HF BERT-family layers
(``intermediate.dense -> output.dense``; DistilBERT ``ffn.lin1 -> ffn.lin2``) and ``nn.TransformerEncoderLayer`` /
``nn.TransformerDecoderLayer`` (``linear1 -> linear2``); other MLPs keep torch-pruning's
channel groups (``kind="channel"``).

Other layouts: register a mapping with :func:`register_attention_layout`, e.g.::

    from forceprune.attention import SeparateHeads, register_attention_layout
    register_attention_layout(SeparateHeads("distilbert", q="q_lin", k="k_lin", v="v_lin",
                                            o="out_lin", num_heads="n_heads"))

A module that looks like attention (class name containing "attention"/"attn" with linear
projections or a head-count attribute) but matches no layout is left unpruned, with an
:class:`UnmappedAttentionWarning` naming it and showing this call.
"""
from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch_pruning.pruner import function as tpf

from .errors import ForcePruneError
from .units import CONSUMER, PRODUCER_OTHER, PRODUCER_WEIGHT, Slice, UnitSet, register_unit_provider

__all__ = [
    "SeparateHeads",
    "FusedHeads",
    "FeedForward",
    "PrunedMultiheadAttention",
    "UnmappedAttentionWarning",
    "register_attention_layout",
    "register_ffn_layout",
    "attention_layouts",
    "heads_per_layer",
    "ffn_per_layer",
    "shrink_to_state_dict",
    "CONFIG_KEY",
]

#: ``model.config.<CONFIG_KEY>``: what removal recorded (``kept_heads``, ``intermediate_size``
#: per module name relative to the base model), so that a saved pruned model can be rebuilt.
CONFIG_KEY = "forceprune"


class UnmappedAttentionWarning(UserWarning):
    """An attention-like module matched no registered layout; its weights are not pruned."""


# ---------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------
def _get(module: nn.Module, path: str):
    obj = module
    for part in path.split(".") if path else []:
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def _replace_param(module: nn.Module, name: str, data: torch.Tensor) -> None:
    old = getattr(module, name)
    setattr(module, name, nn.Parameter(data.contiguous().clone(), requires_grad=old.requires_grad))


def _slice_linear(lin: nn.Linear, rows: Sequence[int] | None = None, cols: Sequence[int] | None = None) -> None:
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


def _head_rows(kept: Sequence[int], head_dim: int, offset: int = 0) -> list[int]:
    return [offset + h * head_dim + j for h in kept for j in range(head_dim)]


def _head_slices(
    module: nn.Module, module_name: str, param: str, dim: int, heads: int, head_dim: int, role: str,
    offsets: Sequence[int] = (0,), kind: str = "linear",
) -> Slice:
    index = torch.cat([torch.arange(heads * head_dim) + o for o in offsets])
    unit = (torch.arange(heads * head_dim) // head_dim).repeat(len(offsets))
    return Slice(module, module_name, param, dim, index, unit, role, kind)


def _linear_head_slices(lin: nn.Linear, name: str, heads: int, head_dim: int, role_rows: bool = True) -> list[Slice]:
    """Producer rows (+ bias) of a q/k/v projection, or consumer columns of an output projection."""
    if role_rows:
        out = [_head_slices(lin, name, "weight", 0, heads, head_dim, PRODUCER_WEIGHT)]
        if lin.bias is not None:
            out.append(_head_slices(lin, name, "bias", 0, heads, head_dim, PRODUCER_OTHER))
        return out
    return [_head_slices(lin, name, "weight", 1, heads, head_dim, CONSUMER)]


def _record(model: nn.Module, name: str, key: str, value) -> None:
    """Write ``value`` under ``model.config.forceprune[key][name]`` (HF-style configs only)."""
    cfg = getattr(model, "config", None)
    if cfg is None or not hasattr(cfg, "to_dict"):
        return
    prefix = getattr(model, "base_model_prefix", "") or ""
    if prefix and name.startswith(prefix + "."):
        name = name[len(prefix) + 1 :]
    rec = dict(getattr(cfg, CONFIG_KEY, None) or {})
    sub = dict(rec.get(key, {}))
    sub[name] = value
    rec[key] = sub
    setattr(cfg, CONFIG_KEY, rec)


def _recorded(model: nn.Module, name: str, key: str):
    cfg = getattr(model, "config", None)
    rec = getattr(cfg, CONFIG_KEY, None) if cfg is not None else None
    if not rec or key not in rec:
        return None
    prefix = getattr(model, "base_model_prefix", "") or ""
    if prefix and name.startswith(prefix + "."):
        name = name[len(prefix) + 1 :]
    return rec[key].get(name)


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


_DEFERRED = _DeferredSurgery()


# ---------------------------------------------------------------------------------------------
# layouts
# ---------------------------------------------------------------------------------------------
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
        lins = [_get(module, p) for p in (self.q, self.k, self.v, self.o)]
        owner = _get(module, self.owner) if self.owner else module
        return all(isinstance(m, nn.Linear) for m in lins) and isinstance(getattr(owner, self.num_heads, None), int)

    def geometry(self, module: nn.Module) -> tuple[int, int]:
        owner = _get(module, self.owner) if self.owner else module
        heads = int(getattr(owner, self.num_heads))
        if self.head_dim is not None:
            d = int(getattr(owner, self.head_dim))
        else:
            d = _get(module, self.q).out_features // max(heads, 1)
        return heads, d

    def modules(self, module: nn.Module) -> list[nn.Module]:
        return [_get(module, p) for p in (self.q, self.k, self.v, self.o)]

    def unit_set(self, model: nn.Module, name: str, module: nn.Module) -> UnitSet | None:
        heads, d = self.geometry(module)
        q, k, v, o = self.modules(module)
        n = {p: _join(name, p) for p in (self.q, self.k, self.v, self.o)}
        if any(lin.out_features != heads * d for lin in (q, k, v)) or o.in_features != heads * d:
            raise ForcePruneError(
                f"{name}: {heads} heads of size {d} do not match the projections "
                f"(q/k/v out {q.out_features}/{k.out_features}/{v.out_features}, o in {o.in_features}); "
                f"the {self.name!r} layout's attributes are inconsistent with the weights."
            )
        slices = []
        for lin, path in ((q, self.q), (k, self.k), (v, self.v)):
            slices += _linear_head_slices(lin, n[path], heads, d)
        slices += _linear_head_slices(o, n[self.o], heads, d, role_rows=False)
        return UnitSet(
            name=name,
            root=q,
            root_fn=tpf.prune_linear_out_channels if self.use_graph else _DEFERRED.prune_out_channels,
            size=heads,
            slices=slices,
            channels_per_unit=d,
            on_removed=lambda m, kept: self.remove(m, name, kept, heads, d),
            kind="head",
            root_name=n[self.q],
        )

    def remove(self, model: nn.Module, name: str, kept: list[int], heads: int, d: int) -> None:
        """After removal: slice whatever the graph did not, fix attributes, record."""
        module = model.get_submodule(name)
        q, k, v, o = self.modules(module)
        new = len(kept) * d
        rows = _head_rows(kept, d)
        for lin, path in ((q, self.q), (k, self.k), (v, self.v)):
            if lin.out_features == heads * d and new != heads * d:
                _slice_linear(lin, rows=rows)
            elif lin.out_features != new:
                raise ForcePruneError(f"{_join(name, path)}: has {lin.out_features} outputs after removal, expected {new}.")
        if o.in_features == heads * d and new != heads * d:
            _slice_linear(o, cols=rows)
        elif o.in_features != new:
            raise ForcePruneError(f"{_join(name, self.o)}: has {o.in_features} inputs after removal, expected {new}.")
        owner = _get(module, self.owner) if self.owner else module
        setattr(owner, self.num_heads, len(kept))
        for attr, fn in self.derived.items():
            setattr(owner, attr, fn(len(kept), d))
        if self.on_kept is not None:
            self.on_kept(owner, kept)
        _record_heads(model, name, heads, kept)

    def sync(self, module: nn.Module) -> None:
        """Set the head attributes from the weight shapes (after loading a pruned state dict)."""
        owner = _get(module, self.owner) if self.owner else module
        q = _get(module, self.q)
        d = int(getattr(owner, self.head_dim)) if self.head_dim else None
        if d is None:
            return
        heads = q.out_features // d
        setattr(owner, self.num_heads, heads)
        for attr, fn in self.derived.items():
            setattr(owner, attr, fn(heads, d))


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
        qkv, o = _get(module, self.qkv), _get(module, self.o)
        heads = getattr(module, self.num_heads, None)
        return (
            isinstance(qkv, nn.Linear) and isinstance(o, nn.Linear) and isinstance(heads, int)
            and heads > 0 and qkv.out_features == 3 * o.in_features
        )

    def geometry(self, module: nn.Module) -> tuple[int, int]:
        heads = int(getattr(module, self.num_heads))
        d = getattr(module, self.head_dim, None) if self.head_dim else None
        d = int(d) if d is not None else _get(module, self.o).in_features // heads
        return heads, d

    def modules(self, module: nn.Module) -> list[nn.Module]:
        return [_get(module, self.qkv), _get(module, self.o)]

    def _rows(self, kept: Sequence[int], heads: int, d: int) -> list[int]:
        if self.order == "3hd":
            return [r for c in range(3) for r in _head_rows(kept, d, c * heads * d)]
        return [h * 3 * d + c * d + j for h in kept for c in range(3) for j in range(d)]

    def unit_set(self, model: nn.Module, name: str, module: nn.Module) -> UnitSet | None:
        heads, d = self.geometry(module)
        qkv, o = self.modules(module)
        if qkv.out_features != 3 * heads * d or o.in_features != heads * d:
            raise ForcePruneError(
                f"{name}: {heads} heads of size {d} do not match {self.qkv} ({qkv.out_features} outputs) "
                f"and {self.o} ({o.in_features} inputs)."
            )
        nq, no = _join(name, self.qkv), _join(name, self.o)
        all_heads = list(range(heads))
        index = torch.as_tensor(self._rows(all_heads, heads, d))
        unit = torch.as_tensor([h for h in self._heads_of_rows(heads, d)])
        slices = [Slice(qkv, nq, "weight", 0, index, unit, PRODUCER_WEIGHT, "linear")]
        if qkv.bias is not None:
            slices.append(Slice(qkv, nq, "bias", 0, index, unit, PRODUCER_OTHER, "linear"))
        slices += _linear_head_slices(o, no, heads, d, role_rows=False)
        return UnitSet(
            name=name, root=qkv, root_fn=_DEFERRED.prune_out_channels, size=heads, slices=slices,
            channels_per_unit=d, on_removed=lambda m, kept: self.remove(m, name, kept, heads, d), kind="head", root_name=nq,
        )

    def _heads_of_rows(self, heads: int, d: int) -> list[int]:
        if self.order == "3hd":
            return [h for _ in range(3) for h in range(heads) for _ in range(d)]
        return [h for h in range(heads) for _ in range(3) for _ in range(d)]

    def remove(self, model: nn.Module, name: str, kept: list[int], heads: int, d: int) -> None:
        module = model.get_submodule(name)
        qkv, o = self.modules(module)
        _slice_linear(qkv, rows=self._rows(kept, heads, d))
        _slice_linear(o, cols=_head_rows(kept, d))
        setattr(module, self.num_heads, len(kept))
        for attr, fn in self.derived.items():
            setattr(module, attr, fn(len(kept), d))
        _record_heads(model, name, heads, kept)

    def sync(self, module: nn.Module) -> None:
        d = getattr(module, self.head_dim, None) if self.head_dim else None
        if d is None:
            return
        heads = _get(module, self.o).in_features // int(d)
        setattr(module, self.num_heads, heads)
        for attr, fn in self.derived.items():
            setattr(module, attr, fn(heads, d))


@dataclass
class _MHAHeads:
    """``nn.MultiheadAttention``: rows of the (packed) input projection at three offsets and
    columns of ``out_proj``; removal swaps in a :class:`PrunedMultiheadAttention`."""

    name: str = "torch.nn.MultiheadAttention"

    def matches(self, module: nn.Module) -> bool:
        return (
            isinstance(module, nn.MultiheadAttention)
            and module.bias_k is None
            and not module.add_zero_attn
        )

    def modules(self, module: nn.Module) -> list[nn.Module]:
        return [module, module.out_proj]

    def unit_set(self, model: nn.Module, name: str, module: nn.Module) -> UnitSet | None:
        heads, d = module.num_heads, module.head_dim
        e = module.embed_dim
        if module._qkv_same_embed_dim:
            slices = [_head_slices(module, name, "in_proj_weight", 0, heads, d, PRODUCER_WEIGHT, (0, e, 2 * e))]
        else:
            slices = [
                _head_slices(module, name, p, 0, heads, d, PRODUCER_WEIGHT)
                for p in ("q_proj_weight", "k_proj_weight", "v_proj_weight")
            ]
        if module.in_proj_bias is not None:
            slices.append(_head_slices(module, name, "in_proj_bias", 0, heads, d, PRODUCER_OTHER, (0, e, 2 * e)))
        slices += _linear_head_slices(module.out_proj, _join(name, "out_proj"), heads, d, role_rows=False)
        return UnitSet(
            name=name, root=module, root_fn=_DEFERRED.prune_out_channels, size=heads, slices=slices,
            channels_per_unit=d, on_removed=lambda m, kept: self.remove(m, name, kept), kind="head", root_name=name,
        )

    def remove(self, model: nn.Module, name: str, kept: list[int]) -> None:
        module = model.get_submodule(name)
        new = PrunedMultiheadAttention.from_multihead_attention(module, kept)
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, new)
        _record_heads(model, name, module.num_heads, kept)

    def sync(self, module: nn.Module) -> None:  # never saved pruned: it is replaced on removal
        pass


def _record_heads(model: nn.Module, name: str, heads_before: int, kept: list[int]) -> None:
    prev = _recorded(model, name, "kept_heads") or list(range(heads_before))
    if len(prev) != heads_before:
        prev = list(range(heads_before))
    _record(model, name, "kept_heads", [int(prev[i]) for i in kept])


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
            isinstance(_get(module, self.up), nn.Linear)
            and isinstance(_get(module, self.down), nn.Linear)
            and bool(self.match(module))
        )

    def modules(self, module: nn.Module) -> list[nn.Module]:
        return [_get(module, self.up), _get(module, self.down)]

    def unit_set(self, model: nn.Module, name: str, module: nn.Module) -> UnitSet | None:
        up, down = self.modules(module)
        if up.out_features != down.in_features:
            raise ForcePruneError(f"{name}: {self.up} has {up.out_features} outputs but {self.down} reads {down.in_features}.")
        nu, nd = _join(name, self.up), _join(name, self.down)
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
            _slice_linear(up, rows=kept)
        if down.in_features != size:
            _slice_linear(down, cols=kept)
        _record(model, name, "intermediate_size", size)


# ---------------------------------------------------------------------------------------------
# registry and provider
# ---------------------------------------------------------------------------------------------
def _hf_bert_like(module: nn.Module) -> bool:
    own = getattr(module, "self", None)
    return own is not None and hasattr(own, "attention_head_size")


_ATTENTION_LAYOUTS: list = [
    SeparateHeads(
        "hf-bert", q="self.query", k="self.key", v="self.value", o="output.dense", owner="self",
        num_heads="num_attention_heads", head_dim="attention_head_size",
        derived={"all_head_size": lambda h, d: h * d},
    ),
    SeparateHeads(
        "hf-distilbert", q="q_lin", k="k_lin", v="v_lin", o="out_lin", num_heads="n_heads",
        head_dim="attention_head_size",
    ),
    _MHAHeads(),
    FusedHeads("fused-qkv"),
]
_FFN_LAYOUTS: list = [
    FeedForward(
        "hf-bert-ffn", up="intermediate.dense", down="output.dense",
        match=lambda m: hasattr(getattr(m, "intermediate", None), "intermediate_act_fn")
        and hasattr(getattr(m, "output", None), "LayerNorm"),
    ),
    FeedForward(
        "hf-distilbert-ffn", up="lin1", down="lin2",
        match=lambda m: type(m).__name__ == "FFN" and hasattr(m, "activation") and hasattr(m, "chunk_size_feed_forward"),
    ),
    FeedForward(
        "torch-transformer-ffn", up="linear1", down="linear2",
        match=lambda m: isinstance(m, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)),
    ),
]


def register_attention_layout(layout) -> None:
    """Add an attention layout (:class:`SeparateHeads`, :class:`FusedHeads` or any object with
    ``matches(module)``, ``modules(module)``, ``unit_set(model, name, module)`` and
    ``sync(module)``). Layouts registered later are tried first."""
    _ATTENTION_LAYOUTS.insert(0, layout)


def register_ffn_layout(layout: FeedForward) -> None:
    """Add a feed-forward layout (tried before the built-in ones)."""
    _FFN_LAYOUTS.insert(0, layout)


def attention_layouts() -> list:
    return list(_ATTENTION_LAYOUTS)


_ATTN_NAME = re.compile(r"attention|attn", re.IGNORECASE)
_HEAD_ATTRS = ("num_heads", "n_heads", "num_attention_heads", "n_head", "heads", "num_key_value_heads")


def _looks_like_attention(module: nn.Module) -> bool:
    if not _ATTN_NAME.search(type(module).__name__):
        return False
    lins = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if any(isinstance(getattr(module, a, None), int) for a in _HEAD_ATTRS) and lins:
        return True
    return len(lins) >= 3 or any(m.out_features == 3 * m.in_features for m in lins)


def _match(module: nn.Module, layouts: list):
    for layout in layouts:
        try:
            if layout.matches(module):
                return layout
        except Exception:  # a user predicate that does not apply to this module
            continue
    return None


def _unmapped_message(names: list[str], model: nn.Module) -> str:
    shown = ", ".join(f"{n} ({type(model.get_submodule(n)).__name__})" for n in names[:5])
    more = f" and {len(names) - 5} more" if len(names) > 5 else ""
    return (
        f"forceprune could not map the attention layout of {shown}{more}: their weights are left "
        "unpruned (no head or channel of them is removed). To prune their heads, register a mapping "
        "before creating the ForcePruner, e.g.\n"
        "    from forceprune.attention import SeparateHeads, FusedHeads, register_attention_layout\n"
        "    register_attention_layout(SeparateHeads('mine', q='q_proj', k='k_proj', v='v_proj', "
        "o='out_proj', num_heads='num_heads', head_dim='head_dim'))\n"
        "or, for one fused projection, FusedHeads('mine', qkv='qkv', o='proj', num_heads='num_heads')."
    )


@register_unit_provider
def attention_unit_provider(model: nn.Module, names: dict) -> tuple[list[UnitSet], list[nn.Module]]:
    """Unit provider: head unit sets for every mapped attention module, neuron unit sets for
    mapped feed-forward blocks, and every module they (or unmapped attention) touch."""
    unit_sets: list[UnitSet] = []
    claimed: list[nn.Module] = []
    mapped: list[str] = []
    for name, module in model.named_modules():
        layout = _match(module, _ATTENTION_LAYOUTS)
        if layout is not None and not any(name.startswith(m + ".") for m in mapped):
            mapped.append(name)
            claimed += layout.modules(module)
            us = layout.unit_set(model, name, module)
            if us is not None and us.size >= 2:
                unit_sets.append(us)
        ffn = _match(module, _FFN_LAYOUTS)
        if ffn is not None:
            claimed += ffn.modules(module)
            us = ffn.unit_set(model, name, module)
            if us.size >= 2:
                unit_sets.append(us)
    unmapped = []
    for name, module in model.named_modules():
        if not name or any(name == m or name.startswith(m + ".") or m.startswith(name + ".") for m in mapped):
            continue
        if any(name.startswith(u + ".") for u in unmapped):
            continue
        if _looks_like_attention(module):
            unmapped.append(name)
            claimed += [m for m in module.modules()]
    if unmapped:
        warnings.warn(_unmapped_message(unmapped, model), UnmappedAttentionWarning, stacklevel=3)
    return unit_sets, claimed


# ---------------------------------------------------------------------------------------------
# nn.MultiheadAttention with fewer heads
# ---------------------------------------------------------------------------------------------
class PrunedMultiheadAttention(nn.Module):
    """Drop-in for ``nn.MultiheadAttention`` after head removal: same call signature and
    outputs, with separate ``q_proj``/``k_proj``/``v_proj`` (``embed_dim -> heads * head_dim``)
    and ``out_proj`` (``heads * head_dim -> embed_dim``). ``kept_heads`` lists the original
    head indices (a per-head 3-D ``attn_mask`` of the original model is sliced to them).

    ``_qkv_same_embed_dim`` is ``False`` and ``in_proj_weight``/``in_proj_bias`` are ``None``
    so that ``nn.TransformerEncoderLayer``'s fused fast path (which assumes the full head
    count) is never taken."""

    def __init__(
        self, embed_dim: int, num_heads: int, head_dim: int, *, kdim: int | None = None, vdim: int | None = None,
        bias: bool = True, out_bias: bool = True, dropout: float = 0.0, batch_first: bool = False,
        kept_heads: Sequence[int] | None = None, orig_num_heads: int | None = None, device=None, dtype=None,
    ) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, head_dim
        self.kdim, self.vdim = kdim or embed_dim, vdim or embed_dim
        self.dropout, self.batch_first = dropout, batch_first
        inner = num_heads * head_dim
        self.q_proj = nn.Linear(embed_dim, inner, bias=bias, **kw)
        self.k_proj = nn.Linear(self.kdim, inner, bias=bias, **kw)
        self.v_proj = nn.Linear(self.vdim, inner, bias=bias, **kw)
        self.out_proj = nn.Linear(inner, embed_dim, bias=out_bias, **kw)
        self.kept_heads = list(kept_heads) if kept_heads is not None else list(range(num_heads))
        self.orig_num_heads = orig_num_heads or num_heads
        self._qkv_same_embed_dim = False
        self.in_proj_weight = None
        self.in_proj_bias = None
        self.bias_k = self.bias_v = None
        self.add_zero_attn = False

    @classmethod
    def from_multihead_attention(cls, mha: nn.MultiheadAttention, kept: Sequence[int]) -> "PrunedMultiheadAttention":
        d, e = mha.head_dim, mha.embed_dim
        w = mha.in_proj_weight
        ref = w if w is not None else mha.q_proj_weight
        new = cls(
            e, len(kept), d, kdim=mha.kdim, vdim=mha.vdim, bias=mha.in_proj_bias is not None,
            out_bias=mha.out_proj.bias is not None, dropout=mha.dropout, batch_first=mha.batch_first,
            kept_heads=kept, orig_num_heads=mha.num_heads, device=ref.device, dtype=ref.dtype,
        )
        with torch.no_grad():
            for c, proj in enumerate((new.q_proj, new.k_proj, new.v_proj)):
                rows = torch.as_tensor(_head_rows(kept, d), device=ref.device)
                if w is not None:
                    src = w[c * e : (c + 1) * e]
                else:
                    src = (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)[c]
                proj.weight.copy_(src.index_select(0, rows))
                proj.weight.requires_grad_(ref.requires_grad)
                if mha.in_proj_bias is not None:
                    proj.bias.copy_(mha.in_proj_bias[c * e : (c + 1) * e].index_select(0, rows))
            cols = torch.as_tensor(_head_rows(kept, d), device=ref.device)
            new.out_proj.weight.copy_(mha.out_proj.weight.index_select(1, cols))
            if mha.out_proj.bias is not None:
                new.out_proj.bias.copy_(mha.out_proj.bias)
        new.train(mha.training)
        return new

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, head_dim={self.head_dim}, kept_heads={self.kept_heads}"

    def _mask(self, mask: torch.Tensor | None, dtype, bsz: int, tgt: int, src: int) -> torch.Tensor | None:
        if mask is None:
            return None
        if mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
        else:
            mask = mask.to(dtype)
        if mask.dim() == 3:  # (bsz * heads, tgt, src): per head, in the original head numbering
            if mask.shape[0] == bsz * self.orig_num_heads:
                mask = mask.view(bsz, self.orig_num_heads, tgt, src)[:, self.kept_heads]
            else:
                mask = mask.view(bsz, -1, tgt, src)
        return mask

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True, attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
        is_causal: bool = False,
    ):
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        tgt, bsz, _ = query.shape
        src = key.shape[0]
        h, d = self.num_heads, self.head_dim
        q = self.q_proj(query).view(tgt, bsz, h, d).permute(1, 2, 0, 3)
        k = self.k_proj(key).view(src, bsz, h, d).permute(1, 2, 0, 3)
        v = self.v_proj(value).view(src, bsz, h, d).permute(1, 2, 0, 3)
        mask = self._mask(attn_mask, q.dtype, bsz, tgt, src)
        if is_causal and mask is None:
            mask = torch.full((tgt, src), float("-inf"), dtype=q.dtype, device=q.device).triu(1)
        kpm = self._mask(key_padding_mask, q.dtype, bsz, tgt, src)
        if kpm is not None:
            kpm = kpm.view(bsz, 1, 1, src)
            mask = kpm if mask is None else mask + kpm
        p = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = (q * math.sqrt(1.0 / d)) @ k.transpose(-2, -1)
            if mask is not None:
                scores = scores + mask
            attn = scores.softmax(-1)
            out = F.dropout(attn, p) @ v if p > 0 else attn @ v
            weights = attn.mean(1) if average_attn_weights else attn
            if unbatched:
                weights = weights.squeeze(0)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        out = self.out_proj(out.permute(2, 0, 1, 3).reshape(tgt, bsz, h * d))
        if unbatched:
            out = out.squeeze(1)
        elif self.batch_first:
            out = out.transpose(0, 1)
        return out, weights


def _pruned_mha_kept(owner: PrunedMultiheadAttention, kept: list[int]) -> None:
    owner.kept_heads = [owner.kept_heads[i] for i in kept]


register_attention_layout(
    SeparateHeads(
        "forceprune-pruned-mha", q="q_proj", k="k_proj", v="v_proj", o="out_proj", num_heads="num_heads",
        head_dim="head_dim", match_type=PrunedMultiheadAttention, on_kept=_pruned_mha_kept,
    )
)


# ---------------------------------------------------------------------------------------------
# introspection and rebuilding
# ---------------------------------------------------------------------------------------------
def heads_per_layer(model: nn.Module) -> dict[str, int]:
    """``{attention module name: number of heads}`` for every mapped attention module."""
    out, mapped = {}, []
    for name, module in model.named_modules():
        layout = _match(module, _ATTENTION_LAYOUTS)
        if layout is None or any(name.startswith(m + ".") for m in mapped):
            continue
        mapped.append(name)
        if isinstance(layout, _MHAHeads):
            out[name] = module.num_heads
        else:
            out[name] = layout.geometry(module)[0]
    return out


def ffn_per_layer(model: nn.Module) -> dict[str, int]:
    """``{up-projection name: number of feed-forward neurons}`` for every mapped FFN block."""
    out = {}
    for name, module in model.named_modules():
        layout = _match(module, _FFN_LAYOUTS)
        if layout is not None:
            out[_join(name, layout.up)] = layout.modules(module)[0].out_features
    return out


def shrink_to_state_dict(model: nn.Module, state_dict: dict) -> list[str]:
    """Resize every ``nn.Linear`` of ``model`` whose saved weight is smaller, then set the head
    attributes of mapped attention modules from the new shapes. Values are left
    uninitialised: load ``state_dict`` afterwards. Returns the names of resized layers."""
    resized = []
    for name, module in model.named_modules():
        key = _join(name, "weight")
        if not isinstance(module, nn.Linear) or key not in state_dict:
            continue
        shape = tuple(state_dict[key].shape)
        if shape == tuple(module.weight.shape):
            continue
        out_f, in_f = shape
        w = module.weight
        module.weight = nn.Parameter(torch.empty(shape, dtype=w.dtype, device=w.device), requires_grad=w.requires_grad)
        if module.bias is not None:
            b = module.bias
            module.bias = nn.Parameter(torch.empty(out_f, dtype=b.dtype, device=b.device), requires_grad=b.requires_grad)
        module.out_features, module.in_features = out_f, in_f
        resized.append(name)
    for name, module in model.named_modules():
        layout = _match(module, _ATTENTION_LAYOUTS)
        if layout is not None:
            layout.sync(module)
    return resized
