"""Previews: what the model would cost if some units were removed, without touching it.

A preview removes units from a deep copy of the model with the same surgery as the real
removal (:func:`forceprune.removal.apply_removal`), so its MACs, parameters and latency are
those the pruned model will have. Budgets call this a few dozen times per controller update
(each costs a deep copy, and one trace of the copy when torch-pruning channel groups lose
units); nothing here keeps state.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from ._torch import eval_mode
from .metrics import count_macs_params
from .removal import RemovalPlan, apply_removal, keep_one, needs_graph
from .units import UnitSet, model_graph


def pruned_copy(model: nn.Module, unit_sets: list[UnitSet], inputs, removable: list[torch.Tensor]) -> nn.Module:
    """A deep copy of ``model`` with the given units (``(G,)`` bool per unit set) removed; the
    model itself is untouched. ``inputs``: example inputs on the model's device."""
    clone = copy.deepcopy(model)
    # an instance-level forward wrapper (e.g. the HF callback's penalty hook) is bound to the
    # original model: the copy must run its own class forward
    clone.__dict__.pop("forward", None)
    plans = [RemovalPlan(us, keep_one(rem), torch.zeros(us.size, dtype=torch.bool)) for us, rem in zip(unit_sets, removable)]
    # provider unit sets (attention, FFN, residual stream) need no graph: a decoder previews without a trace
    graph = model_graph(clone, inputs) if needs_graph(plans) else None
    with eval_mode(clone):
        apply_removal(graph, plans, clone)
    return clone


def counts_if_removed(model: nn.Module, unit_sets: list[UnitSet], inputs, removable: list[torch.Tensor]) -> tuple[int, int]:
    """``(MACs, params)`` of the model with the given units removed (per forward pass of ``inputs``)."""
    return count_macs_params(pruned_copy(model, unit_sets, inputs, removable), inputs)

