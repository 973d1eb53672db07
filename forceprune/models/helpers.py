"""Shared helpers: weight initialisation and output-layer lookup."""
from __future__ import annotations

from typing import List

import torch.nn as nn

__all__ = ["init_weights", "output_layers", "make_divisible", "CLASSIFIER_ATTR"]

#: Every model in this package stores its final classifier (an ``nn.Linear``) here.
CLASSIFIER_ATTR = "classifier"


def init_weights(model: nn.Module, zero_init_residual_bn: List[nn.BatchNorm2d] = ()) -> None:
    """Kaiming-normal (fan_out, ReLU) for convs, BN weight 1 / bias 0, zero conv biases.

    Linear layers keep PyTorch's default init (with zero bias).  BN layers listed in
    ``zero_init_residual_bn`` get weight 0 (Goyal et al. zero-init residual trick).
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d, nn.GroupNorm)):
            if m.weight is not None:
                nn.init.ones_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    for bn in zero_init_residual_bn:
        nn.init.zeros_(bn.weight)


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``v`` to a multiple of ``divisor`` without dropping more than 10% (MobileNet rule)."""
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def output_layers(model: nn.Module) -> List[nn.Module]:
    """The model's final classifier layer(s): pass these as ``ignored_layers`` to a pruner.

    Uses ``model.classifier`` (all forceprune models); if that is a container, its last
    ``nn.Linear``/``nn.Conv2d``.  For other models, falls back to the last ``nn.Linear``
    registered in ``model`` (or the last conv if it has no Linear).  Returns ``[]`` if nothing fits.
    """
    head = getattr(model, CLASSIFIER_ATTR, None)
    if isinstance(head, (nn.Linear, nn.Conv2d)):
        return [head]
    if isinstance(head, nn.Module):
        layers = [m for m in head.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
        if layers:
            return [layers[-1]]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if linears:
        return [linears[-1]]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    return [convs[-1]] if convs else []
