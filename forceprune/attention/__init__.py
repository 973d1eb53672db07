"""Attention heads and feed-forward neurons as prunable units.

A *head* is one unit spanning its query, key and value rows (and biases) and the matching
input columns of the output projection (the consumer). A *neuron* of a transformer's
feed-forward block spans one row (and bias) of the up-projection and one input column of
the down-projection. torch-pruning's channel groups cannot express a head (``head_dim``
coupled channels that must go together, and for fused or packed projections rows at three
offsets), so this package registers a *unit provider* (:mod:`.registry`, on ``import
forceprune``; see :func:`forceprune.units.register_unit_provider`) that builds these unit
sets itself and claims the modules involved, so that no channel-level group touches them.

Layouts understood out of the box:

* HF BERT-family encoders (BERT, RoBERTa, MiniLM, ELECTRA, ...; DistilBERT's
  ``q_lin/k_lin/v_lin/out_lin`` likewise): a module with
  ``self.query/key/value`` and ``output.dense`` whose ``self`` carries
  ``num_attention_heads``/``attention_head_size``/``all_head_size``. Removal goes through
  torch-pruning's dependency graph, rooted at the query projection (its group couples K, V
  and the output projection, checked by the tests); ``on_removed`` then updates the head
  counts and completes any projection the graph did not reach. (Saving such a model with
  its kept heads recorded, and rebuilding it, is the job of
  :mod:`forceprune.integrations.transformers`.)
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

Modules, one job each:

* :mod:`.layouts` -- the layout descriptors (what a head or neuron spans, and the surgery);
* :mod:`.registry` -- the registered layouts and the unit provider applying them;
* :mod:`.mha` -- :class:`PrunedMultiheadAttention`;
* :mod:`.rebuild` -- head counts / FFN widths of a model, resizing one to saved shapes.
"""
from .layouts import FeedForward, FusedHeads, MultiheadAttentionHeads, SeparateHeads
from .mha import PrunedMultiheadAttention
from .rebuild import ffn_blocks, ffn_per_layer, heads_per_layer, shrink_to_state_dict
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
    "ffn_per_layer",
    "ffn_blocks",
    "shrink_to_state_dict",
]
