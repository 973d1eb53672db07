"""Torque-family force laws: the penalty weight grows with the distance to the pivot."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import ForcePruneError
from .base import Force, register_force


@register_force("etp")
@dataclass(frozen=True)
class ExponentialTorque(Force):
    """Exponential Torque Pruning (Modi et al., 2025): ``phi(d) = lambda**d`` with
    ``lambda = exp(scale / D)``, i.e. ``phi = exp(scale * x)`` for normalised distance
    ``x = d / D``.

    With ``distance_norm="max"`` (default) the farthest unit gets exactly ``e**scale`` times the
    pivot's force in every layer, whatever its width; ``distance_norm="G"`` is the paper's
    ``lambda = exp(s/G)`` (farthest unit: ``e**(s (G-1)/G)``).
    """

    scale: float = 5.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (isinstance(self.scale, (int, float)) and 0 < self.scale <= 50 and math.isfinite(self.scale)):
            raise ForcePruneError(f"scale must be in (0, 50], got {self.scale!r}; the paper uses 5.")

    def weights(self, x: torch.Tensor, norms: torch.Tensor, anchor: int, signs: torch.Tensor | None = None) -> torch.Tensor:
        return torch.exp(self.scale * x.double()).float()


@register_force("torque")
@dataclass(frozen=True)
class LinearTorque(Force):
    """Linear torque (Gupta et al., WACV 2024): ``phi(d) = d / D`` (``normalize=True``,
    the farthest unit gets 1) or the raw index distance ``phi(d) = d``. The pivot itself
    feels no force."""

    normalize: bool = True

    def weights(self, x: torch.Tensor, norms: torch.Tensor, anchor: int, signs: torch.Tensor | None = None) -> torch.Tensor:
        if self.normalize:
            return x.clone()
        d, _ = self.distances(len(x), norms)
        return d


@register_force("group_lasso")
@dataclass(frozen=True)
class GroupLasso(Force):
    """Classic group lasso: every unit feels the same force, ``phi = 1``."""

    def weights(self, x: torch.Tensor, norms: torch.Tensor, anchor: int, signs: torch.Tensor | None = None) -> torch.Tensor:
        return torch.ones_like(x)
