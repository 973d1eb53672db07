"""Grouped-query attention (Llama, Mistral, Qwen2/Qwen3, SmolLM, Phi-3): two kinds of unit.

With ``n_kv`` key/value heads shared by ``n_rep`` query heads each (query head ``h`` reads
key/value head ``h // n_rep``, as ``repeat_kv`` and ``scaled_dot_product_attention(...,
enable_gqa=True)`` expand them), the forward needs the same ``n_rep`` in every group. Two unit
sets keep that true whatever is removed:

* a **key/value group** (``kind="kv_group"``; ``"head"`` when ``n_rep == 1``): key/value head
  ``i`` -- its k and v rows -- with the q rows of query heads ``i*n_rep .. i*n_rep + n_rep - 1``
  and their o columns. Removing it lowers ``num_key_value_heads`` and the query-head count by
  ``n_rep``. Exact when nobody reads it (its o columns zero) or when its q, k, v weight rows
  are zero: then v is its bias everywhere, the softmax rows sum to one, and the group emits
  that constant into o (folded into o's bias).
* a **query head within every group** (``kind="head"``, only when ``n_rep > 1``): unit ``j`` is
  query head ``j`` of each group, its q rows and o columns; removing it lowers ``n_rep``
  (``num_key_value_groups``). Exact only when its o columns are zero
  (``removal="consumers"``): a query with zero weights still averages the values.

Rotary embeddings act within a head (on ``head_dim``), q/k norms (Qwen3) are shared by every
head (shape ``(head_dim,)``) and q/k/v biases (Qwen2) are sliced with their rows, so none of
them needs more. The projections may be separate (``q``/``k``/``v``) or one fused ``qkv``
whose rows are q (``n_q * d``), then k, then v (``n_kv * d`` each; Phi-3's ``qkv_proj``).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from ..errors import ForcePruneError
from ..units import UnitSet
from .layouts import accepts, head_unit_set
from .slicing import column_slice, get_path, head_rows, in_features, is_projection, join_path, out_features, row_slices, slice_linear

#: module attributes holding head counts, updated when present: query heads, key/value heads
_QUERY_ATTRS = ("num_heads", "num_attention_heads")
_KV_ATTRS = ("num_key_value_heads",)


@dataclass
class GroupedQueryHeads:
    """Grouped-query (or plain multi-head) attention with ``head_dim`` and
    ``num_key_value_groups`` (``n_rep``) attributes on the module.

    ``q``/``k``/``v``/``o`` are paths of projections; give ``qkv`` instead of ``q``/``k``/``v``
    for one fused projection. ``config_heads``: the forward reads the head counts from
    ``module.config`` (Phi-3 slices its fused projection with ``config.num_attention_heads``),
    so removal gives the module its own copy of the config with its own counts.
    """

    name: str
    q: str = "q_proj"
    k: str = "k_proj"
    v: str = "v_proj"
    o: str = "o_proj"
    qkv: str | None = None
    head_dim: str = "head_dim"
    groups: str = "num_key_value_groups"
    config_heads: bool = False
    match_type: type | tuple | None = None
    match: Callable | None = None

    def _paths(self) -> list[str]:
        return [self.qkv] if self.qkv else [self.q, self.k, self.v]

    def matches(self, module: nn.Module) -> bool:
        return (accepts(self.match, self.match_type, module)
                and all(is_projection(get_path(module, p)) for p in [*self._paths(), self.o])
                and isinstance(getattr(module, self.head_dim, None), int)
                and isinstance(getattr(module, self.groups, None), int))

    def shape(self, module: nn.Module) -> tuple[int, int, int]:
        """``(n_kv, n_rep, head_dim)`` of the module now."""
        d, n_rep = int(getattr(module, self.head_dim)), int(getattr(module, self.groups))
        n_q = in_features(get_path(module, self.o)) // d
        if n_q % n_rep:
            raise ForcePruneError(f"{type(module).__name__}: {n_q} query heads do not split into groups of {n_rep}; "
                                  f"the {self.name!r} layout's attributes are inconsistent with the weights.")
        return n_q // n_rep, n_rep, d

    def geometry(self, module: nn.Module) -> tuple[int, int]:
        n_kv, n_rep, d = self.shape(module)
        return n_kv * n_rep, d

    def modules(self, module: nn.Module) -> list[nn.Module]:
        return [module, *[get_path(module, p) for p in [*self._paths(), self.o]]]

    def residual_io(self, module: nn.Module) -> tuple[list[str], list[str]]:
        return self._paths(), [self.o]

    def _spans(self, module: nn.Module, n_kv: int, n_rep: int, d: int) -> dict[str, tuple[str, int]]:
        """``{"q"|"k"|"v": (projection path, first row)}``."""
        if self.qkv:
            n_q = n_kv * n_rep
            return {"q": (self.qkv, 0), "k": (self.qkv, n_q * d), "v": (self.qkv, (n_q + n_kv) * d)}
        return {"q": (self.q, 0), "k": (self.k, 0), "v": (self.v, 0)}

    def unit_sets(self, model: nn.Module, name: str, module: nn.Module) -> list[UnitSet]:
        n_kv, n_rep, d = self.shape(module)
        spans = self._spans(module, n_kv, n_rep, d)
        rows_needed = {p: 0 for p in self._paths()}
        for key, (path, first) in spans.items():
            rows_needed[path] = max(rows_needed[path], first + (n_kv * n_rep if key == "q" else n_kv) * d)
        for path, rows in rows_needed.items():
            if out_features(get_path(module, path)) != rows:
                raise ForcePruneError(
                    f"{join_path(name, path)}: {out_features(get_path(module, path))} outputs, but {n_kv} key/value heads "
                    f"x {n_rep} query heads of size {d} need {rows}; the {self.name!r} layout does not fit this module.")
        o_name = join_path(name, self.o)
        o = get_path(module, self.o)
        q_rows = torch.arange(n_kv * n_rep * d)
        q_head = q_rows // d  # query head of each q row
        kv_rows = torch.arange(n_kv * d)
        group_slices = self._rows("q", spans, module, name, q_rows, q_head // n_rep)
        for key in ("k", "v"):
            group_slices += self._rows(key, spans, module, name, kv_rows, kv_rows // d)
        group_slices += [column_slice(o, o_name, q_rows, q_head // n_rep)]
        kind = "kv_group" if n_rep > 1 else "head"
        k_path = spans["k"][0]
        sets = [head_unit_set(self, name, get_path(module, k_path), join_path(name, k_path), n_kv, d, group_slices,
                              self.remove_groups, kind=kind)]
        if n_rep > 1:
            query_slices = self._rows("q", spans, module, name, q_rows, q_head % n_rep)
            query_slices += [column_slice(o, o_name, q_rows, q_head % n_rep)]
            q_path = spans["q"][0]
            sets.append(head_unit_set(self, join_path(name, "query_heads"), get_path(module, q_path),
                                      join_path(name, q_path), n_rep, d * n_kv, query_slices, self.remove_queries,
                                      removal="consumers", module_name=name))
        return sets

    def _rows(self, key: str, spans: dict, module: nn.Module, name: str, rows: torch.Tensor, unit: torch.Tensor) -> list:
        path, first = spans[key]
        return row_slices(get_path(module, path), join_path(name, path), rows + first, unit)

    def remove_groups(self, model: nn.Module, name: str, kept: list[int]) -> None:
        """Keep key/value groups ``kept``, each with all its query heads."""
        module = model.get_submodule(name)
        n_kv, n_rep, d = self.shape(module)
        queries = [i * n_rep + j for i in kept for j in range(n_rep)]
        self._slice(module, n_kv, n_rep, d, queries, kept)
        self._set_counts(module, len(kept), n_rep)

    def remove_queries(self, model: nn.Module, name: str, kept: list[int]) -> None:
        """Keep query heads ``kept`` (positions within a group) in every group."""
        module = model.get_submodule(name)
        n_kv, n_rep, d = self.shape(module)
        queries = [i * n_rep + j for i in range(n_kv) for j in kept]
        self._slice(module, n_kv, n_rep, d, queries, list(range(n_kv)))
        self._set_counts(module, n_kv, len(kept))

    def _slice(self, module: nn.Module, n_kv: int, n_rep: int, d: int, queries: list[int], kv: list[int]) -> None:
        spans = self._spans(module, n_kv, n_rep, d)
        keep = {"q": head_rows(queries, d, spans["q"][1]), "k": head_rows(kv, d, spans["k"][1]),
                "v": head_rows(kv, d, spans["v"][1])}
        if self.qkv:
            slice_linear(get_path(module, self.qkv), rows=keep["q"] + keep["k"] + keep["v"])
        else:
            for key in ("q", "k", "v"):
                slice_linear(get_path(module, spans[key][0]), rows=keep[key])
        slice_linear(get_path(module, self.o), cols=head_rows(queries, d))

    def _set_counts(self, module: nn.Module, n_kv: int, n_rep: int) -> None:
        setattr(module, self.groups, n_rep)
        for attrs, value in ((_QUERY_ATTRS, n_kv * n_rep), (_KV_ATTRS, n_kv)):
            for attr in attrs:
                if isinstance(getattr(module, attr, None), int):
                    setattr(module, attr, value)
        if self.config_heads and getattr(module, "config", None) is not None:
            cfg = copy.copy(module.config)  # this layer's own counts; the model's config is shared
            cfg.num_attention_heads, cfg.num_key_value_heads = n_kv * n_rep, n_kv
            module.config = cfg

    def sync(self, module: nn.Module) -> None:
        """Set ``n_rep`` and the head counts from the weight shapes (after loading a pruned state dict)."""
        d = int(getattr(module, self.head_dim))
        n_q = in_features(get_path(module, self.o)) // d
        if self.qkv:
            n_kv = (out_features(get_path(module, self.qkv)) // d - n_q) // 2
        else:
            n_kv = out_features(get_path(module, self.k)) // d
        self._set_counts(module, n_kv, n_q // max(n_kv, 1))
