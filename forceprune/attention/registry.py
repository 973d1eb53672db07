"""The registered layouts, and the unit provider that maps a model's modules with them.

:func:`attention_unit_provider` (registered with :func:`forceprune.units.register_unit_provider`
when this module is imported, i.e. on ``import forceprune``) builds the head (and key/value
group) unit sets of every module an attention layout matches, a neuron unit set for every
matched feed-forward block and, for an RMSNorm decoder whose blocks are all mapped, the
residual-stream unit set (:mod:`.hidden`). It claims the matched modules: they are opaque to
torch-pruning's graph and no channel-level group touches them. A module that looks like
attention but matches no layout is left unpruned, with an :class:`UnmappedAttentionWarning`
naming it and showing how to register a layout.
"""
from __future__ import annotations

import re
import warnings

import torch.nn as nn

from ..units import UnitSet, register_unit_provider
from .ffn import FeedForward
from .gqa import GroupedQueryHeads
from .hidden import residual_stream_units
from .layouts import FusedHeads, MultiheadAttentionHeads, SeparateHeads
from .mha import PrunedMultiheadAttention
from .slicing import is_conv1d


class UnmappedAttentionWarning(UserWarning):
    """An attention-like module matched no registered layout; its weights are not pruned."""


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
    MultiheadAttentionHeads(),
    FusedHeads("fused-qkv"),
    # GPT-2: one Conv1D c_attn (outputs q | k | v), split into q, k, v by ``split_size``
    FusedHeads("hf-gpt2", qkv="c_attn", o="c_proj", derived={"split_size": lambda h, d: h * d},
               match=lambda m: not getattr(m, "is_cross_attention", True) and is_conv1d(m.c_attn)),
    # Llama, Mistral, Qwen2/Qwen3, SmolLM: separate q/k/v/o, ``num_key_value_groups`` query heads per kv head
    GroupedQueryHeads("hf-grouped-query"),
    # Phi-3: one fused qkv_proj (q rows, then k, then v); its forward reads the head count from its config
    GroupedQueryHeads("hf-phi3", qkv="qkv_proj", config_heads=True),
    # HF ViT (transformers 5): q_proj/k_proj/v_proj/o_proj with num_attention_heads and head_dim
    SeparateHeads("hf-vit", q="q_proj", k="k_proj", v="v_proj", o="o_proj", num_heads="num_attention_heads",
                  head_dim="head_dim"),
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
    FeedForward("hf-gpt2-mlp", up="c_fc", down="c_proj", match=lambda m: hasattr(m, "act") and is_conv1d(m.c_fc)),
    # Llama-family gated MLP: down(act(gate(x)) * up(x))
    FeedForward("hf-gated-mlp", gate="gate_proj", up="up_proj", down="down_proj", match=lambda m: hasattr(m, "act_fn")),
    # Phi-3: gate, up = gate_up_proj(x).chunk(2)
    FeedForward("hf-phi3-mlp", up="gate_up_proj", down="down_proj", fused_gate=True,
                match=lambda m: hasattr(m, "activation_fn")),
    # HF ViT / CLIP-style MLP: fc2(act(fc1(x)))
    FeedForward("hf-fc-mlp", up="fc1", down="fc2",
                match=lambda m: hasattr(m, "activation_fn") and type(m).__name__.endswith("MLP")),
]


def register_attention_layout(layout) -> None:
    """Add an attention layout (:class:`SeparateHeads`, :class:`FusedHeads`,
    :class:`GroupedQueryHeads` or any object with ``matches(module)``, ``geometry(module) ->
    (heads, head_dim)``, ``modules(module)`` (the module and its projections),
    ``unit_sets(model, name, module)`` and ``sync(module)``; see :mod:`.layouts`). Layouts
    registered later are tried first."""
    _ATTENTION_LAYOUTS.insert(0, layout)


def unregister_attention_layout(layout) -> None:
    """Remove a layout added by :func:`register_attention_layout`."""
    _ATTENTION_LAYOUTS.remove(layout)


def register_ffn_layout(layout: FeedForward) -> None:
    """Add a feed-forward layout (tried before the built-in ones)."""
    _FFN_LAYOUTS.insert(0, layout)


def attention_layouts() -> list:
    """The registered attention layouts, in the order they are tried."""
    return list(_ATTENTION_LAYOUTS)


def ffn_layouts() -> list:
    """The registered feed-forward layouts, in the order they are tried."""
    return list(_FFN_LAYOUTS)


_ATTN_NAME = re.compile(r"attention|attn", re.IGNORECASE)
_HEAD_ATTRS = ("num_heads", "n_heads", "num_attention_heads", "n_head", "heads", "num_key_value_heads")


def _looks_like_attention(module: nn.Module) -> bool:
    if not _ATTN_NAME.search(type(module).__name__):
        return False
    lins = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if any(isinstance(getattr(module, a, None), int) for a in _HEAD_ATTRS) and lins:
        return True
    return len(lins) >= 3 or any(m.out_features == 3 * m.in_features for m in lins)


def match_layout(module: nn.Module, layouts: list):
    """The first of ``layouts`` that matches ``module``, or None."""
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


def _layout_units(layout, model: nn.Module, name: str, module: nn.Module) -> list[UnitSet]:
    if hasattr(layout, "unit_sets"):
        sets = layout.unit_sets(model, name, module)
    else:  # a layout written for the one-set protocol (``unit_set``)
        one = layout.unit_set(model, name, module)
        sets = [] if one is None else [one]
    return [us for us in sets if us.size >= 2]


@register_unit_provider
def attention_unit_provider(model: nn.Module, names: dict) -> tuple[list[UnitSet], list[nn.Module]]:
    """Unit provider: head (and key/value group) unit sets for every mapped attention module,
    neuron unit sets for mapped feed-forward blocks, the residual stream of a mapped RMSNorm
    decoder; claims every module they (or unmapped attention) live in."""
    unit_sets: list[UnitSet] = []
    claimed: list[nn.Module] = []
    attention: list[str] = []
    mapped: dict = {}  # module name -> layout, attention and feed-forward
    for name, module in model.named_modules():
        layout = match_layout(module, _ATTENTION_LAYOUTS)
        if layout is not None and not any(name.startswith(m + ".") for m in attention):
            attention.append(name)
            mapped[name] = layout
            claimed += layout.modules(module)
            unit_sets += _layout_units(layout, model, name, module)
        ffn = match_layout(module, _FFN_LAYOUTS)
        if ffn is not None:
            mapped.setdefault(name, ffn)
            claimed += ffn.modules(module)
            unit_sets += _layout_units(ffn, model, name, module)
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
        warnings.warn(_unmapped_message(unmapped, model), UnmappedAttentionWarning, stacklevel=4)
    else:
        unit_sets += residual_stream_units(model, mapped)
    return unit_sets, claimed


def _pruned_mha_kept(owner: PrunedMultiheadAttention, kept: list[int]) -> None:
    owner.kept_heads = [owner.kept_heads[i] for i in kept]


register_attention_layout(
    SeparateHeads(
        "forceprune-pruned-mha", q="q_proj", k="k_proj", v="v_proj", o="out_proj", num_heads="num_heads",
        head_dim="head_dim", match_type=PrunedMultiheadAttention, on_kept=_pruned_mha_kept,
    )
)
