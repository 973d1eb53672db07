"""Checks of a :class:`~forceprune.ForcePruner`'s arguments and of the model it is given,
each raising :class:`~forceprune.errors.ForcePruneError` with the fix."""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from .capture import CAPTURE_MODES
from .errors import ForcePruneError, NonFiniteError
from .units import UNIT_KINDS


def check_options(capture: str, threshold: float, capture_every, snap, cost_power, kinds) -> None:
    if capture not in CAPTURE_MODES:
        raise ForcePruneError(f"capture={capture!r} is not supported; choose 'unit' or 'element'.")
    if not (math.isfinite(threshold) and threshold >= 0):
        raise ForcePruneError(f"threshold must be a finite number >= 0, got {threshold!r}; try 1e-3.")
    if not isinstance(capture_every, int) or capture_every < 0:
        raise ForcePruneError(f"capture_every must be an int >= 0, got {capture_every!r}.")
    if not (isinstance(snap, (int, float)) and math.isfinite(snap) and snap >= 0):
        raise ForcePruneError(f"snap must be a finite number >= 0, got {snap!r}; 1.0 is the proximal bound.")
    if not (isinstance(cost_power, (int, float)) and 0 <= cost_power <= 4):
        raise ForcePruneError(f"cost_power must be in [0, 4], got {cost_power!r}; 0 = uniform, 1 = MACs-proportional.")
    if kinds is not None and (isinstance(kinds, str) or not set(kinds) <= set(UNIT_KINDS)):
        raise ForcePruneError(f"kinds={kinds!r}: give a list of unit kinds from {UNIT_KINDS}, e.g. kinds=('head', 'neuron').")


def check_materialised(model: nn.Module) -> None:
    """Refuse a model whose weights are not materialised (meta device): nothing could be traced,
    measured or removed."""
    meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type == "meta"]
    if meta:
        raise ForcePruneError(
            f"the model's tensors are on the meta device (not materialised), e.g. {meta[0]!r}: forceprune needs real "
            "weights to trace, measure and remove units. Load the weights first (from_pretrained without "
            "device_map='meta'/init_empty_weights, or model.to_empty(device='cpu') then load_state_dict)."
        )


def check_finite(model: nn.Module) -> None:
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            raise NonFiniteError(
                f"parameter {name!r} contains NaN/Inf; removal would not be meaningful. "
                "Restore a finite checkpoint (lower the learning rate or beta) and try again."
            )


def check_modules(model: nn.Module, watched: list[tuple[str, nn.Module]]) -> None:
    """Each ``(name, module)`` a pruner's unit sets point at is still ``model``'s module of that
    name: a module replaced after the pruner was built would escape the force and break removal."""
    for name, module in watched:
        try:
            now = model.get_submodule(name)
        except AttributeError:
            now = None
        if now is not module:
            what = "removed" if now is None else f"replaced by a {type(now).__name__}"
            raise ForcePruneError(
                f"module {name!r} was {what} after the ForcePruner was built: the pruner's unit sets still point at "
                "the old module, so the force and removal would act on weights the model no longer uses. Build a "
                "new ForcePruner after changing the model (pruner state can be carried over with "
                "state_dict()/load_state_dict() when the shapes are unchanged)."
            )


def check_finite_penalty(total: torch.Tensor) -> None:
    if not torch.isfinite(total):
        raise NonFiniteError("the force penalty is NaN/Inf: the weights have diverged. Lower the learning rate or beta, "
                             "or check the inputs for NaN.")


def raise_no_units(kinds) -> None:
    raise ForcePruneError(
        "the model has no prunable unit: every conv/linear layer is ignored, is an output layer, or is "
        f"coupled to a LayerNorm/embedding{'' if kinds is None else f', or of a kind not in kinds={kinds}'}. "
        "Check ignored_layers, or pass ignore_output_layers=False; for attention that was reported unmapped, "
        "register its layout (forceprune.attention.register_attention_layout).")


def check_reachable(floor: float, budget, metric: str, asked: float) -> None:
    """``floor``: the kept fraction of the smallest model the budget allows."""
    if floor > budget.target:
        raise ForcePruneError(
            f"target_{metric}={asked} cannot be met: the smallest model that keeps min_width={budget.min_width} "
            f"unit(s) per unit set, widths a multiple of round_to={budget.round_to}, has {floor:.3f} of the dense "
            f"{metric}. Raise the target, lower min_width or round_to, or prune more layers (check ignored_layers).")


def check_pushed(remove, sizes: list[int], planned: bool) -> None:
    """``planned``: the pruner has a MACs or params target and ``spare_keepers``."""
    if not planned:
        raise ForcePruneError("set_pushed_units() needs target_macs or target_params and spare_keepers=True.")
    if [len(r) for r in remove] != sizes:
        raise ForcePruneError(f"set_pushed_units() needs one (G,) mask per unit set, of sizes {sizes}; "
                              f"got sizes {[len(r) for r in remove]}.")


def checked_state(name: str, dead: torch.Tensor, size: int) -> torch.Tensor:
    """A saved unit set's ``(G,)`` mask, checked against the model's unit set of ``size`` units."""
    if len(dead) != size:
        raise ForcePruneError(f"state for unit set {name!r} has {len(dead)} units but the model has {size}; "
                              "load it into the same (unpruned) model it was saved from.")
    return dead
