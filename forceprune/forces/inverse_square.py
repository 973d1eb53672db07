"""Inverse-square force laws: gravity (masses) and electrostatics (charges).

Both papers (Ferdi 2024; Ferdi et al. 2024) state that units *far* from the anchor filter are
pushed to zero, yet a literal ``1/d**2`` in the index distance is strongest *next to* the
anchor. We implement the reading that yields a structured tail of zeros as the default and
keep the literal reading as an option (``distance="index"``); ``docs/forces.md`` records
the small experiment behind the choice.

Normalised distance ``x`` is in [0, 1]. The separation ``r`` entering ``1/r**2`` is

* ``distance="from_tail"`` (default): ``r = (1 + eps - x) / (1 + eps)``: the anchor's
  counterpart sits beyond the far end, so the force grows from 1 at the pivot to
  ``((1 + eps) / eps)**2`` at the farthest unit (121 for eps = 0.1, close to ETP's e**5).
* ``distance="index"``: ``r = (x + eps) / (1 + eps)``, the literal law: strongest next to
  the anchor, 1 at the far end.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..errors import ForcePruneError
from .base import Force, check_choice, register_force

DISTANCES = ("from_tail", "index")


def _inverse_square(x: torch.Tensor, distance: str, eps: float) -> torch.Tensor:
    r = (1 + eps - x) if distance == "from_tail" else (x + eps)
    return ((1 + eps) / r) ** 2


@dataclass(frozen=True)
class _InverseSquare(Force):
    positional: ClassVar[bool] = False  # masses / charges are the units' norms

    distance: str = "from_tail"
    eps: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("distance", self.distance, DISTANCES)
        if not (isinstance(self.eps, (int, float)) and math.isfinite(self.eps) and self.eps > 0):
            raise ForcePruneError(f"eps (softening of 1/r^2) must be > 0, got {self.eps!r}; try 0.1.")

    @staticmethod
    def _relative(norms: torch.Tensor, anchor: int) -> float:
        """The anchor's mass/charge relative to the set's mean (dimensionless, detached)."""
        mean = float(norms.mean())
        return float(norms[anchor]) / mean if mean > 0 else 1.0


@register_force("gravity")
@dataclass(frozen=True)
class Gravity(_InverseSquare):
    """Gravity regularisation (Ferdi, 2024): ``F_i = G m_a m_i / r_i**2`` with masses
    ``m = ||w||_1`` (``norm="l1"``). The anchor (pivot) mass is detached and taken relative to
    the mean mass, so ``beta`` plays the role of ``G``; the anchor feels no force itself."""

    norm: str = "l1"

    def weights(self, x: torch.Tensor, norms: torch.Tensor, anchor: int, signs: torch.Tensor | None = None) -> torch.Tensor:
        w = self._relative(norms, anchor) * _inverse_square(x, self.distance, self.eps)
        w[anchor] = 0.0
        return w


@register_force("electrostatic")
@dataclass(frozen=True)
class Electrostatic(_InverseSquare):
    """Electrostatic force regularisation (Ferdi et al., 2024): ``F_i = k q_s q_i / r_i**2``.

    Charges (``charge``):

    * ``"positional"`` (default): ``|q_i| = ||w_i||``; units with normalised distance below
      ``keep_ratio`` carry the charge opposite to the source (attracted: kept), the others
      the same charge (repelled towards zero). Gives a structured tail and makes the kept
      fraction an explicit input.
    * ``"signed_mean"``: the sign of each unit's mean weight, as the abstract's "charge" could
      also be read; repelled units are those with the source's sign. Not tail-structured.

    Attraction is not turned into a negative penalty by default (``attraction=0``): a force
    pulling norms up is unbounded; set ``attraction>0`` to add it, scaled down by that factor.
    """

    charge: str = "positional"
    keep_ratio: float = 0.5
    attraction: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("charge", self.charge, ("positional", "signed_mean"))
        if not 0.0 < self.keep_ratio < 1.0:
            raise ForcePruneError(f"keep_ratio must be in (0, 1), got {self.keep_ratio!r}.")
        if not 0.0 <= self.attraction <= 1.0:
            raise ForcePruneError(f"attraction must be in [0, 1], got {self.attraction!r}.")

    def weights(self, x: torch.Tensor, norms: torch.Tensor, anchor: int, signs: torch.Tensor | None = None) -> torch.Tensor:
        like = self.like_charges(x, anchor, signs)
        w = self._relative(norms, anchor) * _inverse_square(x, self.distance, self.eps)
        w = torch.where(like, w, -self.attraction * w)
        w[anchor] = 0.0
        return w

    def like_charges(self, x: torch.Tensor, anchor: int, signs: torch.Tensor | None) -> torch.Tensor:
        """``(G,)`` bool: units carrying the source's charge (repelled towards zero)."""
        if self.charge == "positional":
            return x >= self.keep_ratio
        if signs is None:
            return torch.ones_like(x, dtype=torch.bool)  # no sign information: all alike
        signs = signs.to(x.device)
        return signs == signs[anchor]
