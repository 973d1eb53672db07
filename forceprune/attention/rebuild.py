"""Reading head counts, FFN widths and the hidden size off a model, and resizing a freshly built
model to the shapes of a saved pruned one (what a loader needs before ``load_state_dict``)."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..tracing import shared_parameters
from .hidden import residual_norms
from .registry import attention_layouts, ffn_layouts, match_layout
from .slicing import is_projection, join_path, sync_projection


def _attention(model: nn.Module):
    """``(name, module, layout)`` of every mapped attention module (outermost matches)."""
    layouts, mapped = attention_layouts(), []
    for name, module in model.named_modules():
        layout = match_layout(module, layouts)
        if layout is None or any(name.startswith(m + ".") for m in mapped):
            continue
        mapped.append(name)
        yield name, module, layout


def heads_per_layer(model: nn.Module) -> dict[str, int]:
    """``{attention module name: number of (query) heads}`` for every mapped attention module."""
    return {name: layout.geometry(module)[0] for name, module, layout in _attention(model)}


def kv_heads_per_layer(model: nn.Module) -> dict[str, int]:
    """``{attention module name: number of key/value heads}`` for grouped-query attention."""
    return {name: layout.shape(module)[0] for name, module, layout in _attention(model) if hasattr(layout, "shape")}


def head_dims(model: nn.Module) -> dict[str, int]:
    """``{attention module name: head size}``."""
    return {name: layout.geometry(module)[1] for name, module, layout in _attention(model)}


def ffn_blocks(model: nn.Module) -> dict[str, str]:
    """``{up-projection name (the neuron unit set's name): feed-forward block name}`` for every
    mapped FFN block, e.g. ``{"bert.encoder.layer.0.intermediate.dense": "bert.encoder.layer.0"}``."""
    layouts = ffn_layouts()
    out = {}
    for name, module in model.named_modules():
        layout = match_layout(module, layouts)
        if layout is not None:
            out[join_path(name, layout.up)] = name
    return out


def ffn_per_layer(model: nn.Module) -> dict[str, int]:
    """``{up-projection name: number of feed-forward neurons}`` for every mapped FFN block."""
    layouts = ffn_layouts()
    out = {}
    for up, block in ffn_blocks(model).items():
        module = model.get_submodule(block)
        out[up] = match_layout(module, layouts).width(module)
    return out


def _sync_sizes(module: nn.Module) -> None:
    """Size attributes of a standard layer from its (resized) parameters."""
    w = getattr(module, "weight", None)
    if is_projection(module):
        sync_projection(module)
    elif isinstance(module, nn.Embedding):
        module.num_embeddings, module.embedding_dim = int(w.shape[0]), int(w.shape[1])
    elif isinstance(module, nn.LayerNorm) and w is not None:
        module.normalized_shape = tuple(w.shape)
    elif isinstance(module, nn.GroupNorm) and w is not None:
        module.num_channels = int(w.shape[0])


def shrink_to_state_dict(model: nn.Module, state_dict: dict, rms_norm_eps: float | None = None) -> list[str]:
    """Resize every parameter of ``model`` whose saved tensor has another shape (projections,
    embeddings, norms), keeping parameters shared between modules shared; then set the size
    attributes of those layers and the head attributes of mapped attention modules from the
    new shapes, and (``rms_norm_eps``: a pruned residual stream's) the epsilon of the residual
    RMS norms. Values are left uninitialised: load ``state_dict`` afterwards. Returns the names
    of resized modules."""
    owners = {n: names for names in shared_parameters(model).values() for n in names}
    new: dict[int, nn.Parameter] = {}
    resized = []
    for name, module in model.named_modules():
        changed = False
        for pname, p in list(module.named_parameters(recurse=False)):
            key = join_path(name, pname)
            saved = _saved(state_dict, key, owners.get(key, [key]))
            if saved is None or tuple(saved.shape) == tuple(p.shape):
                continue
            if id(p) not in new:
                new[id(p)] = nn.Parameter(torch.empty(saved.shape, dtype=p.dtype, device=p.device),
                                          requires_grad=p.requires_grad)
            setattr(module, pname, new[id(p)])
            changed = True
        if changed:
            _sync_sizes(module)
            resized.append(name)
    for name, module in model.named_modules():
        layout = match_layout(module, attention_layouts()) or match_layout(module, ffn_layouts())
        if layout is not None:
            layout.sync(module)
    if rms_norm_eps is not None:
        for norm in residual_norms(model):
            setattr(norm, "variance_epsilon" if hasattr(norm, "variance_epsilon") else "eps", float(rms_norm_eps))
    return resized


def _saved(state_dict: dict, key: str, aliases: list[str]):
    """The saved tensor of ``key`` or of a parameter tied to it (a tied LM head is saved once)."""
    for k in [key, *aliases]:
        if k in state_dict:
            return state_dict[k]
    return None
