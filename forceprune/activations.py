"""Activation-aware unit importance: Wanda's ``|W| x ||X||`` for structured units.

On a pretrained language model the size of a unit's weights says little about what it does:
removing the 27 % of SmolLM2-135M's FFN neurons with the smallest weight norms takes held-out
perplexity from 159 to ~1e7, removing those with the smallest ``|W| x ||X||`` to ~255
(BENCHMARKS.md §10). What a unit contributes is its weights *times what flows through them*.

* :func:`input_norms` measures, once, the L2 norm of every input channel of the layers that
  read a unit set's channels (``o_proj`` for a head, ``down_proj`` for an FFN neuron), over
  calibration batches;
* :func:`activation_scores` is a unit's ``sum |W_ij| * ||X_j||_2`` over the weights that read
  it, with the *current* weights: a unit the force has shrunk scores lower, a zero unit 0.

Used by the Wanda-sp baseline (:class:`forceprune.baselines.WandaSp`) to rank once, and by
:meth:`forceprune.ForcePruner.calibrate` so that the force pushes the units that matter least.
Norms are keyed by module identity and input channel, so they hold until a removal changes the
model's widths.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
import torch.nn as nn

from ._torch import eval_mode
from .errors import ForcePruneError
from .units import CONSUMER, UnitSet

#: ``{id(module): (in_channels,) float64 L2 norm of each input channel}``
InputNorms = dict[int, torch.Tensor]


def input_norms(model: nn.Module, unit_sets: list[UnitSet], batches: Iterable, run_batch: Callable[[nn.Module, Any], Any],
                max_batches: int = 32) -> InputNorms:
    """L2 norm of each input channel, over every calibration token (or pixel) of the first
    ``max_batches`` batches, for every layer that reads a unit set's channels (eval mode, no
    grad). ``run_batch(model, batch)`` runs the model forward on a batch."""
    readers = {id(s.module): s.module for us in unit_sets for s in us.slices if s.role == CONSUMER}
    sums: dict[int, torch.Tensor] = {}

    def hook(module, args):
        x = args[0].detach().double()
        x = x.movedim(1, -1) if isinstance(module, nn.modules.conv._ConvNd) else x  # channels last
        sq = (x * x).reshape(-1, x.shape[-1]).sum(0).cpu()
        sums[id(module)] = sums.get(id(module), 0) + sq

    handles = [m.register_forward_pre_hook(hook) for m in readers.values()]
    try:
        with torch.no_grad(), eval_mode(model):
            for i, batch in enumerate(batches):
                if i >= max_batches:
                    break
                run_batch(model, batch)
    finally:
        for h in handles:
            h.remove()
    if not sums:
        raise ForcePruneError("the calibration batches ran no layer that reads a unit set; pass training batches that "
                              "run the model.")
    return {k: v.sqrt() for k, v in sums.items()}


def reads(us: UnitSet, norms: InputNorms) -> bool:
    """Whether some layer that reads ``us`` was measured in ``norms``."""
    return any(s.role == CONSUMER and id(s.module) in norms for s in us.slices)


def activation_scores(us: UnitSet, norms: InputNorms) -> torch.Tensor:
    """``(G,)`` float32 ``sum |W_ij| * ||X_j||`` over the current weights of the layers that
    read each unit (a head sums over its channels)."""
    readers = [s for s in us.slices if s.role == CONSUMER and id(s.module) in norms]
    if not readers:
        raise ForcePruneError(f"no measured layer reads unit set {us.name!r}, so it has no activation-aware score; "
                              "leave it out of widths (or of kinds).")
    out = torch.zeros(us.size, dtype=torch.float64)
    with torch.no_grad():
        for s in readers:
            per_position = s.position_sums(1).detach().double().cpu() * norms[id(s.module)][s.index.cpu()]
            out.index_add_(0, s.unit.cpu(), per_position)
    return out.float()
