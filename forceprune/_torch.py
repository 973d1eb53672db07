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


def map_tensors(inputs: Any, fn) -> Any:
    """``inputs`` with ``fn`` applied to every tensor inside (nested tuples, lists, dicts)."""
    if torch.is_tensor(inputs):
        return fn(inputs)
    if isinstance(inputs, dict):
        return {k: map_tensors(v, fn) for k, v in inputs.items()}
    if isinstance(inputs, (list, tuple)):
        return type(inputs)(map_tensors(v, fn) for v in inputs)
    return inputs


def to_device(inputs: Any, device: torch.device | str) -> Any:
    """``inputs`` with every tensor inside moved to ``device``."""
    return map_tensors(inputs, lambda t: t.to(device))


def to_float64(inputs: Any) -> Any:
    """``inputs`` with every floating tensor inside cast to float64 (token ids stay integers)."""
    return map_tensors(inputs, lambda t: t.double() if t.is_floating_point() else t)


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
