"""The residual stream of an RMSNorm decoder (Llama, Mistral, Qwen, SmolLM, Phi-3): each channel
of the hidden size is one unit (``kind="hidden"``).

A channel ``c`` of the residual stream ``h`` is written by the token embedding (column ``c``)
and by every block's output projections (attention ``o`` and MLP ``down``: row ``c`` and bias
entry ``c``), and read by every norm. When every write is zero, ``h_c = 0`` everywhere
(``removal="writers"``), so the projections reading the norms' outputs (q, k, v, gate, up and
the LM head: column ``c``) read zeros, whatever the norms' weights. Removing ``c`` then
changes only the norms' statistics: over ``H' = H - removed`` channels,

    RMSNorm(h)_c = w_c h_c / sqrt(S / H + eps),   S = sum_c h_c^2 (the removed channels add 0),

and with ``eps' = eps H / H'`` the new denominator is ``sqrt(S / H' + eps') = sqrt(H / H')``
times the old one, a known constant folded into the weights: ``w' = w sqrt(H / H')``.
Exact (to rounding), for every input. The force acts on the writes, the norms' weights and the
reads alike, so a captured channel is zero in all of them.

A LayerNorm also subtracts the mean over the channels, ``mean = S1 / H``: after removal it
becomes ``S1 / H'`` while the kept channels' values are unchanged, which shifts every kept
channel by a different amount for every token -- no constant folds it, so the hidden size of
LayerNorm models (BERT, GPT-2, ViT) is left alone (``docs/transformers.md``).

Recognised: a decoder with ``embed_tokens`` (``nn.Embedding``), ``layers`` whose blocks hold
nothing with parameters but ``input_layernorm``, ``self_attn``, ``post_attention_layernorm``
and ``mlp`` (both mapped by layouts), a final ``norm``, and the model's ``lm_head`` (or
``score``) reading it; every norm must compute ``w * x / sqrt(mean(x^2) + eps)`` (checked on a
probe: Gemma's ``(1 + w)`` is not this). A tied ``lm_head`` stays tied to the embedding.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..units import OWN_SURGERY, PRODUCER_OTHER, PRODUCER_WEIGHT, Slice, UnitSet
from .slicing import column_slice, in_features, is_projection, join_path, row_slices, slice_linear, slice_param

_BLOCK_PARTS = ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp")
_HEADS = ("lm_head", "score")
_EPS = ("variance_epsilon", "eps")


def _eps_attr(norm: nn.Module) -> str | None:
    return next((a for a in _EPS if isinstance(getattr(norm, a, None), float)), None)


def is_rms_norm(norm: nn.Module, width: int) -> bool:
    """``norm`` computes ``weight * x / sqrt(mean(x^2, -1) + eps)`` over ``width`` channels
    (checked on a random probe, so look-alikes such as ``(1 + weight) * ...`` are refused)."""
    w = getattr(norm, "weight", None)
    eps = _eps_attr(norm)
    if not isinstance(w, torch.Tensor) or w.shape != (width,) or eps is None or w.device.type == "meta":
        return False
    with torch.no_grad():
        x = torch.randn(3, width, generator=torch.Generator().manual_seed(0)).to(w.device, w.dtype)
        expected = w * (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + getattr(norm, eps))).to(w.dtype)
        try:
            return bool(torch.allclose(norm(x).float(), expected.float(), rtol=1e-3, atol=1e-5))
        except Exception:
            return False


def _decoder_parts(model: nn.Module, name: str, decoder: nn.Module, mapped: dict) -> dict | None:
    """The modules of a recognised decoder: ``{"norms": [...], "readers": [...],
    "writers": [...], "head": name}`` (module names), or None."""
    embed, layers, final = (getattr(decoder, a, None) for a in ("embed_tokens", "layers", "norm"))
    if not isinstance(embed, nn.Embedding) or not isinstance(layers, nn.ModuleList) or final is None:
        return None
    width = embed.embedding_dim
    head = next((h for h in _HEADS if is_projection(getattr(model, h, None))), None)
    if head is None or in_features(getattr(model, head)) != width:
        return None
    norms, readers, writers, blocks = [join_path(name, "norm")], [head], [], []
    for i, layer in enumerate(layers):
        lname = join_path(name, "layers", str(i))
        parts = {n for n, m in layer.named_children() if any(True for _ in m.parameters())}
        if not parts <= set(_BLOCK_PARTS) or any(getattr(layer, p, None) is None for p in _BLOCK_PARTS):
            return None
        for part in ("self_attn", "mlp"):
            layout = mapped.get(join_path(lname, part))
            if layout is None or not hasattr(layout, "residual_io"):
                return None
            reads, writes = layout.residual_io(getattr(layer, part))
            readers += [join_path(lname, part, p) for p in reads]
            writers += [join_path(lname, part, p) for p in writes]
        norms += [join_path(lname, "input_layernorm"), join_path(lname, "post_attention_layernorm")]
        blocks += [lname, join_path(lname, "self_attn"), join_path(lname, "mlp")]
    if not all(is_rms_norm(model.get_submodule(n), width) for n in norms):
        return None
    return {"embed": join_path(name, "embed_tokens"), "norms": norms, "readers": readers, "writers": writers,
            "blocks": blocks}


def residual_stream_units(model: nn.Module, mapped: dict) -> list[UnitSet]:
    """The hidden-channel unit set of every recognised decoder in ``model`` (``mapped``:
    ``{module name: layout}`` of the attention and FFN blocks the registry matched)."""
    out = []
    for name, module in model.named_modules():
        parts = _decoder_parts(model, name, module, mapped) if hasattr(module, "embed_tokens") else None
        if parts is not None:
            out.append(_unit_set(model, name, parts))
    return out


def _unit_set(model: nn.Module, name: str, parts: dict) -> UnitSet:
    embed = model.get_submodule(parts["embed"])
    width = embed.embedding_dim
    idx = torch.arange(width)
    slices = [Slice(embed, parts["embed"], "weight", 1, idx, idx, PRODUCER_WEIGHT, "linear")]
    for w in parts["writers"]:
        slices += row_slices(model.get_submodule(w), w, idx, idx)
    for n in parts["norms"]:
        slices.append(Slice(model.get_submodule(n), n, "weight", 0, idx, idx, PRODUCER_OTHER, "norm"))
    for r in parts["readers"]:
        slices.append(column_slice(model.get_submodule(r), r, idx, idx))
    unit_name = join_path(name, "hidden")
    return UnitSet(
        name=unit_name, root=embed, root_fn=OWN_SURGERY, size=width, slices=slices, kind="hidden",
        root_name=parts["embed"], removal="writers", layout="rmsnorm-residual-stream", keeps_ties=True,
        on_removed=lambda m, kept: remove_channels(m, parts, kept),
    )


def remove_channels(model: nn.Module, parts: dict, kept: list[int]) -> None:
    """Keep residual channels ``kept``: embedding columns, writer rows, reader columns, norm
    entries; then fold the statistics' change into the norms (``w' = w sqrt(H/H')``,
    ``eps' = eps H/H'``). A reader tied to the embedding (a tied LM head) stays tied."""
    embed = model.get_submodule(parts["embed"])
    factor = embed.embedding_dim / len(kept)
    tied = [r for r in parts["readers"] if model.get_submodule(r).weight is embed.weight]
    slice_param(embed, "weight", 1, kept)
    embed.embedding_dim = len(kept)
    for w in parts["writers"]:
        slice_linear(model.get_submodule(w), rows=kept)
    for r in parts["readers"]:
        reader = model.get_submodule(r)
        if r in tied:
            reader.weight = embed.weight
            slice_linear(reader)  # sizes from the shared weight
        else:
            slice_linear(reader, cols=kept)
    with torch.no_grad():
        for n in parts["norms"]:
            norm = model.get_submodule(n)
            slice_param(norm, "weight", 0, kept)
            norm.weight.mul_(math.sqrt(factor))
            eps = _eps_attr(norm)
            setattr(norm, eps, getattr(norm, eps) * factor)
    for b in parts["blocks"]:  # informational ``hidden_size`` attributes of the blocks, kept true
        block = model.get_submodule(b)
        if isinstance(getattr(block, "hidden_size", None), int):
            block.hidden_size = len(kept)


def residual_norms(model: nn.Module) -> list[nn.Module]:
    """The norms reading the residual stream of every decoder in ``model`` (``embed_tokens`` /
    ``layers`` / ``norm`` layout): each block's two norms and the final one."""
    out = []
    for module in model.modules():
        layers = getattr(module, "layers", None)
        if isinstance(getattr(module, "embed_tokens", None), nn.Embedding) and isinstance(layers, nn.ModuleList):
            for layer in layers:
                out += [getattr(layer, a) for a in ("input_layernorm", "post_attention_layernorm") if hasattr(layer, a)]
            if getattr(module, "norm", None) is not None:
                out.append(module.norm)
    return out


def residual_eps(model: nn.Module) -> float | None:
    """The epsilon of the residual RMS norms (one value: removal scales them alike), or None."""
    for norm in residual_norms(model):
        attr = _eps_attr(norm)
        if attr is not None:
            return float(getattr(norm, attr))
    return None
