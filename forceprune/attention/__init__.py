"""Attention heads, key/value groups, feed-forward neurons and a decoder's residual stream as
prunable units.

A *head* is one unit spanning its query, key and value rows (and biases) and the matching
input columns of the output projection (the consumer). With grouped-query attention a
*key/value group* is a key/value head with the query heads that share it, and the query heads
within the groups are units too, kept uniform across groups (:mod:`.gqa`). A *neuron* of a
feed-forward block spans its row of the up- (and gate-) projection and its column of the
down-projection (:mod:`.ffn`). In an RMSNorm decoder every channel of the residual stream is a
unit (:mod:`.hidden`). torch-pruning's channel groups cannot express these (``head_dim``
coupled channels, rows at offsets of fused projections, a statistic to fold), and its group
search does not finish on grouped-query attention, so this package registers a *unit
provider* (:mod:`.registry`, on ``import forceprune``; see
:func:`forceprune.units.register_unit_provider`) that builds these unit sets from layouts,
claims the modules involved (opaque to the graph: :mod:`forceprune.tracing`) and does their
surgery itself. ``docs/transformers.md`` explains the exactness of each kind.

Layouts understood out of the box (:mod:`.registry`): HF BERT-family encoders (BERT, RoBERTa,
MiniLM, ELECTRA; DistilBERT), ``nn.MultiheadAttention`` (replaced on removal by a
:class:`PrunedMultiheadAttention`), timm-style fused ``qkv`` attention, GPT-2 (``Conv1D``
``c_attn`` / ``c_proj``, ``c_fc`` / ``c_proj``), Llama / Mistral / Qwen2 / Qwen3 / SmolLM
(grouped-query attention, gated MLP), Phi-3 (fused ``qkv_proj`` and ``gate_up_proj``), HF ViT
(``q_proj`` / ``k_proj`` / ``v_proj`` / ``o_proj``, ``fc1`` / ``fc2``), and the FFN of
``nn.TransformerEncoderLayer`` / ``nn.TransformerDecoderLayer``. Other MLPs keep
torch-pruning's channel groups (``kind="channel"``).

Other layouts: register a mapping with :func:`register_attention_layout`, e.g.::

    from forceprune.attention import SeparateHeads, register_attention_layout
    register_attention_layout(SeparateHeads("distilbert", q="q_lin", k="k_lin", v="v_lin",
                                            o="out_lin", num_heads="n_heads"))

A module that looks like attention (class name containing "attention"/"attn" with linear
projections or a head-count attribute) but matches no layout is left unpruned, with an
:class:`UnmappedAttentionWarning` naming it and showing this call. A layout that maps units
wrongly is caught at the first removal (:class:`forceprune.removal.LossyRemovalError`).

Modules, one job each:

* :mod:`.layouts` -- multi-head attention layouts (separate, fused, ``nn.MultiheadAttention``);
* :mod:`.gqa` -- grouped-query attention; :mod:`.ffn` -- feed-forward blocks;
* :mod:`.hidden` -- the residual stream of RMSNorm decoders and its norm fold;
* :mod:`.registry` -- the registered layouts and the unit provider applying them;
* :mod:`.slicing` -- projection surgery shared by all; :mod:`.mha` -- :class:`PrunedMultiheadAttention`;
* :mod:`.rebuild` -- head counts / FFN widths of a model, resizing one to saved shapes.
"""
from .ffn import FeedForward
from .gqa import GroupedQueryHeads
from .layouts import FusedHeads, MultiheadAttentionHeads, SeparateHeads
from .mha import PrunedMultiheadAttention
from .rebuild import ffn_blocks, ffn_per_layer, head_dims, heads_per_layer, kv_heads_per_layer, shrink_to_state_dict
from .registry import (
    UnmappedAttentionWarning,
    attention_layouts,
    attention_unit_provider,
    ffn_layouts,
    match_layout,
    register_attention_layout,
    register_ffn_layout,
    unregister_attention_layout,
)

__all__ = [
    "SeparateHeads",
    "FusedHeads",
    "FeedForward",
    "GroupedQueryHeads",
    "MultiheadAttentionHeads",
    "PrunedMultiheadAttention",
    "UnmappedAttentionWarning",
    "register_attention_layout",
    "unregister_attention_layout",
    "register_ffn_layout",
    "attention_layouts",
    "ffn_layouts",
    "match_layout",
    "attention_unit_provider",
    "heads_per_layer",
    "kv_heads_per_layer",
    "head_dims",
    "ffn_per_layer",
    "ffn_blocks",
    "shrink_to_state_dict",
]
