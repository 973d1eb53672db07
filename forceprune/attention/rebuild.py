"""Reading head counts and FFN widths off a model, and resizing a freshly built model to the
shapes of a saved pruned one (what a loader needs before ``load_state_dict``)."""
from __future__ import annotations

import torch
import torch.nn as nn

from .registry import attention_layouts, ffn_layouts, match_layout
from .slicing import join_path


def heads_per_layer(model: nn.Module) -> dict[str, int]:
    """``{attention module name: number of heads}`` for every mapped attention module."""
    layouts = attention_layouts()
    out, mapped = {}, []
    for name, module in model.named_modules():
        layout = match_layout(module, layouts)
        if layout is None or any(name.startswith(m + ".") for m in mapped):
            continue
        mapped.append(name)
        out[name] = layout.geometry(module)[0]
    return out


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
    return {up: model.get_submodule(up).out_features for up in ffn_blocks(model)}


def shrink_to_state_dict(model: nn.Module, state_dict: dict) -> list[str]:
    """Resize every ``nn.Linear`` of ``model`` whose saved weight is smaller, then set the head
    attributes of mapped attention modules from the new shapes. Values are left
    uninitialised: load ``state_dict`` afterwards. Returns the names of resized layers."""
    resized = []
    for name, module in model.named_modules():
        key = join_path(name, "weight")
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
    layouts = attention_layouts()
    for name, module in model.named_modules():
        layout = match_layout(module, layouts)
        if layout is not None:
            layout.sync(module)
    return resized
