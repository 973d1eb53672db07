"""A model's state kept aside while a removal is checked: putting it back in place, and
checking that parameters shared between modules (tied weights) are still shared."""
from __future__ import annotations

import torch.nn as nn

from .errors import ForcePruneError


def restore(model: nn.Module, saved: nn.Module) -> None:
    """Give ``model`` the state of ``saved`` (a deep copy taken earlier), in place: every module
    that still exists keeps its identity (and its hooks); replaced modules are put back."""
    for key, value in saved.__dict__.items():
        if key != "_modules" and "hook" not in key and key != "forward":
            model.__dict__[key] = value
    for name, child in saved._modules.items():
        live = model._modules.get(name)
        if live is not None and type(live) is type(child) and child is not None:
            restore(live, child)
        else:
            model._modules[name] = child
    for name in [n for n in model._modules if n not in saved._modules]:
        del model._modules[name]


def check_ties(model: nn.Module, ties: dict[int, list[str]], backup: nn.Module | None) -> None:
    """Parameters shared before removal must still be shared (the same tensor) after it."""
    params = dict(model.named_parameters(remove_duplicate=False))
    for owners in ties.values():
        tensors = {id(params.get(n)) for n in owners}
        if len(tensors) > 1:
            if backup is not None:
                restore(model, backup)
            raise ForcePruneError(
                f"removal untied the shared parameter {' = '.join(owners)}; this is a bug in the surgery of a unit set "
                "touching it. Untie the weights before building the ForcePruner, or exclude the modules with "
                "ignored_layers."
            )
