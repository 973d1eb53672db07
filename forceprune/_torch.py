"""Small torch helpers every room uses: moving nested inputs, calling a model on them, and
switching a model to eval mode for a while.

Example inputs are a tensor, a tuple/list of positional args or a dict of keyword args
(possibly nested); every helper here accepts all three.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
import torch.nn as nn


def to_device(inputs: Any, device: torch.device | str) -> Any:
    """``inputs`` with every tensor inside (nested tuples, lists, dicts) moved to ``device``."""
    if torch.is_tensor(inputs):
        return inputs.to(device)
    if isinstance(inputs, dict):
        return {k: to_device(v, device) for k, v in inputs.items()}
    if isinstance(inputs, (list, tuple)):
        return type(inputs)(to_device(v, device) for v in inputs)
    return inputs


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the ``with`` block and restore its training flag after,
    whatever happens inside (BatchNorm running statistics and dropout stay untouched)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def run_model(model: nn.Module, example_inputs: Any) -> Any:
    """Call ``model`` on example inputs given as a tensor, a tuple/list of args or a dict of kwargs."""
    if isinstance(example_inputs, dict):
        return model(**example_inputs)
    if isinstance(example_inputs, (list, tuple)):
        return model(*example_inputs)
    return model(example_inputs)


def flatten_tensors(obj: Any) -> list[torch.Tensor]:
    """All tensors inside nested tuples/lists/dicts/ModelOutputs, in order."""
    if torch.is_tensor(obj):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in flatten_tensors(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in flatten_tensors(v)]
    return []


def param_group(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> dict | None:
    """The optimizer's parameter group holding ``param`` (None if it holds none)."""
    for group in optimizer.param_groups:
        if any(p is param for p in group["params"]):
            return group
    return None
