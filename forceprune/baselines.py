"""Torch-Pruning's methods in forceprune's pruner slot, for side-by-side benchmarks.

* ``"tp_l1"``: magnitude pruning — L1 norm of each channel group
  (``tp.importance.MagnitudeImportance(p=1)``), no regularisation during training.
* ``"tp_group_norm"``: DepGraph's group sparse learning — ``tp.pruner.GroupNormPruner``, whose
  ``regularize(model)`` edits gradients after ``backward()`` and whose regulariser is updated
  once per epoch, as in Torch-Pruning's ``reproduce/main.py``.

Both remove channels with Torch-Pruning's own progressive loop: global pruning in many small
steps until the MACs target is met (``prune_to``). This module only adapts their calling
conventions to our ``Trainer`` (``penalty``/``after_backward``/``step``/``capture``); the
methods themselves are Torch-Pruning's, unchanged.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch_pruning as tp

from .errors import ForcePruneError
from .metrics import count_macs_params

METHODS = ("tp_l1", "tp_group_norm")


class TorchPruningMethod:
    """A Torch-Pruning pruner with the interface our training loop calls.

    Args:
        model, example_inputs: as for ``ForcePruner`` (a batch of one for MACs per sample).
        method: ``"tp_l1"`` or ``"tp_group_norm"``.
        ignored_layers: layers never pruned (the classifier).
        reg: group-norm regularisation strength (Torch-Pruning's reproduce default, 5e-4).
        iterative_steps: granularity of the progressive removal loop.
    """

    def __init__(self, model: nn.Module, example_inputs, method: str = "tp_group_norm",
                 ignored_layers: Sequence[nn.Module] = (), reg: float = 5e-4, iterative_steps: int = 400,
                 regularize: bool = True):
        if method not in METHODS:
            raise ForcePruneError(f"unknown torch-pruning method {method!r}; choose one of {METHODS}.")
        self.model, self.example_inputs, self.method = model, example_inputs, method
        self.regularize = regularize and method == "tp_group_norm"
        importance = tp.importance.GroupMagnitudeImportance(p=2) if method == "tp_group_norm" \
            else tp.importance.MagnitudeImportance(p=1)
        cls = tp.pruner.GroupNormPruner if method == "tp_group_norm" else tp.pruner.BasePruner
        kwargs = {"reg": reg} if method == "tp_group_norm" else {}
        self.tp_pruner = cls(model, example_inputs, importance=importance, global_pruning=True, pruning_ratio=1.0,
                             max_pruning_ratio=1.0, iterative_steps=iterative_steps,
                             ignored_layers=list(ignored_layers), **kwargs)
        self.macs_dense, self.params_dense = count_macs_params(model, example_inputs)

    # -- the training-loop interface -------------------------------------------------------
    def penalty(self) -> torch.Tensor:
        return torch.zeros((), device=next(self.model.parameters()).device)

    def after_backward(self) -> None:
        if self.regularize:
            self.tp_pruner.regularize(self.model)

    def step(self) -> None:
        pass

    def capture(self) -> int:
        """Called at each epoch end: update the regulariser (Torch-Pruning's per-epoch call)."""
        if self.regularize:
            self.tp_pruner.update_regularizer()
        return 0

    def attach_optimizer(self, optimizer) -> None:
        pass

    def force_field(self) -> list:
        return []

    def summary(self) -> dict:
        macs, params = count_macs_params(self.model, self.example_inputs)
        return {"units_total": 0, "units_zero": 0, "macs_dense": self.macs_dense, "params_dense": self.params_dense,
                "macs_if_pruned": macs, "params_if_pruned": params}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    # -- removal -----------------------------------------------------------------------------
    def prune_to(self, target_macs: float) -> dict:
        """Remove channels progressively (global ranking) until MACs <= ``target_macs`` x dense."""
        macs = self.macs_dense
        steps = 0
        was = self.model.training
        self.model.eval()
        try:
            while macs > target_macs * self.macs_dense and steps < self.tp_pruner.iterative_steps:
                self.tp_pruner.step()
                steps += 1
                macs, params = count_macs_params(self.model, self.example_inputs)
        finally:
            self.model.train(was)
        macs, params = count_macs_params(self.model, self.example_inputs)
        return {"macs_before": self.macs_dense, "macs_after": macs, "params_before": self.params_dense,
                "params_after": params, "steps": steps}
