"""The force-law base class and its registry.

A force law answers one question: *how hard is each unit pushed towards zero?* It returns a
``(G,)`` tensor of non-negative weights ``phi_i`` for the ``G`` units of a unit set; the
penalty is ``beta * reduce_i(phi_i * ||w_i||)``. Forces know nothing about graphs, files or
training loops; adding one is one small class with ``@register_force("name")``.
"""
from __future__ import annotations

import abc
import dataclasses
import difflib
import functools
import math
from dataclasses import dataclass
from typing import Callable, ClassVar, Union

import torch

from ..errors import ForcePruneError, UnknownForceError

NORMS = ("l1", "l2", "l2sq")
REDUCTIONS = ("mean", "sum")
INCLUDES = ("all", "producers", "weights")
DISTANCE_NORMS = ("max", "G")
Pivot = Union[int, str]

_REGISTRY: dict[str, type["Force"]] = {}


def register_force(name: str) -> Callable[[type["Force"]], type["Force"]]:
    """Class decorator: make a force law selectable by ``name``."""

    def wrap(cls: type["Force"]) -> type["Force"]:
        if name in _REGISTRY:
            raise ForcePruneError(f"a force named {name!r} is already registered ({_REGISTRY[name].__name__})")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def available() -> list[str]:
    """Names of the registered force laws (presets included)."""
    from .presets import PRESETS

    return sorted(list(_REGISTRY) + list(PRESETS))


def force_class(name: str) -> type["Force"]:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, available(), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownForceError(f"unknown force {name!r}.{hint} Available: {', '.join(available())}.")
    return _REGISTRY[name]


@dataclass(frozen=True)
class Force(abc.ABC):
    """Common options of every force law.

    Args:
        beta: global strength of the penalty (dimensionless, >= 0).
        norm: unit norm: ``"l1"`` (sum |w|), ``"l2"`` (sqrt of sum w^2, drives whole units to
            exactly zero) or ``"l2sq"`` (sum w^2, the ETP paper's text; shrinks but never zeroes).
        pivot: where the force is anchored: ``0`` (first channel), ``"middle"``, an index, or
            ``"ranked"`` (distance = rank of the unit by current norm, largest first; use it on
            pretrained models whose channel order carries no meaning).
        reduction: ``"mean"`` divides each unit set's sum by its size G (ETP's code), ``"sum"``
            does not.
        include: which coupled slices the force acts on: ``"all"`` (producer rows, biases, norm
            entries and consumers' input columns), ``"producers"`` or ``"weights"`` (producer
            conv/linear weights only, as ETP's official code).
        distance_norm: distances are divided by the largest distance in the set (``"max"``:
            the farthest unit sits at 1 whatever the width) or by G (``"G"``: the paper's
            lambda = exp(s/G)).
    """

    beta: float = 1e-4
    norm: str = "l2"
    pivot: Pivot = 0
    reduction: str = "mean"
    include: str = "all"
    distance_norm: str = "max"

    name: ClassVar[str] = "base"
    #: the weights depend on the units' positions only (not on their norms or signs): with a
    #: fixed pivot the profile is a function of the set's size, computed once per size
    positional: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not isinstance(self.beta, (int, float)) or not math.isfinite(self.beta) or self.beta < 0:
            raise ForcePruneError(f"beta must be a finite number >= 0, got {self.beta!r}; try beta=1e-4.")
        check_choice("norm", self.norm, NORMS)
        check_choice("reduction", self.reduction, REDUCTIONS)
        check_choice("include", self.include, INCLUDES)
        check_choice("distance_norm", self.distance_norm, DISTANCE_NORMS)
        if isinstance(self.pivot, str):
            check_choice("pivot", self.pivot, ("middle", "ranked"))
        elif not isinstance(self.pivot, int) or isinstance(self.pivot, bool) or self.pivot < 0:
            raise ForcePruneError(f"pivot must be 0, 'middle', 'ranked' or a channel index >= 0, got {self.pivot!r}.")

    # -- the one method a force law must provide -------------------------------------------
    @abc.abstractmethod
    def weights(self, x: torch.Tensor, norms: torch.Tensor, anchor: int, signs: torch.Tensor | None = None) -> torch.Tensor:
        """Force profile: ``(G,)`` weights (non-negative but for optional attraction).

        Args:
            x: ``(G,)`` distances to the pivot, normalised (see ``distance_norm``).
            norms: ``(G,)`` current unit norms (detached): masses or charges for the
                inverse-square laws.
            anchor: index of the pivot unit in the set.
            signs: ``(G,)`` sign of each unit's mean producer weight (only the electrostatic
                ``charge="signed_mean"`` reading uses it).
        """

    # -- shared machinery ---------------------------------------------------------------------
    @property
    def power(self) -> int:
        return 1 if self.norm == "l1" else 2

    def unit_norms(self, sums: torch.Tensor) -> torch.Tensor:
        """Turn per-unit sums of ``|w|**power`` into the configured norm (safe at 0)."""
        if self.norm == "l2":
            return torch.where(sums == 0, torch.zeros_like(sums), sums.clamp_min(1e-30).sqrt())
        return sums

    def distances(self, size: int, norms: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Index distances ``(G,)`` to the pivot (float) and the pivot's index."""
        idx = torch.arange(size, dtype=torch.float32)
        if self.pivot == "ranked":
            order = torch.argsort(norms.float().cpu(), descending=True, stable=True)
            rank = torch.empty(size, dtype=torch.float32)
            rank[order] = idx
            return rank, int(order[0])
        p = (size - 1) // 2 if self.pivot == "middle" else min(int(self.pivot), size - 1)
        return (idx - p).abs(), p

    def normalised(self, d: torch.Tensor, size: int) -> torch.Tensor:
        scale = float(d.max()) if self.distance_norm == "max" else float(size)
        return d / max(scale, 1.0)

    def profile(self, size: int, norms: torch.Tensor | None = None, signs: torch.Tensor | None = None) -> torch.Tensor:
        """The ``(G,)`` force weights for a unit set of ``size`` units (for plots and tests)."""
        return self._profile(size, norms, signs).clone()

    def _profile(self, size: int, norms: torch.Tensor | None, signs: torch.Tensor | None) -> torch.Tensor:
        """:meth:`profile`, shared (do not modify it): a positional law with a fixed pivot
        computes it once per size (the penalty asks for it at every step)."""
        if self.positional and self.pivot != "ranked":
            return self._positional_profile(size)
        norms = torch.ones(size) if norms is None else norms.detach().float().cpu()
        d, anchor = self.distances(size, norms)
        return self.weights(self.normalised(d, size), norms, anchor, signs)

    @functools.lru_cache(maxsize=64)  # noqa: B019 (forces are frozen, hashable and few)
    def _positional_profile(self, size: int) -> torch.Tensor:
        norms = torch.ones(size)
        d, anchor = self.distances(size, norms)
        return self.weights(self.normalised(d, size), norms, anchor, None)

    def penalty(self, sums: torch.Tensor, signs: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                importance: torch.Tensor | None = None) -> torch.Tensor:
        """``beta * reduce(phi * norm)`` for one unit set, from its per-unit sums (``(G,)``);
        ``mask`` (``(G,)``, optional) multiplies ``phi`` (0 spares a unit); ``importance``
        (``(G,)``, optional) stands in for the norms in the profile (a ranked pivot ranks by it).
        Differentiable through ``sums`` (the definition; training uses :meth:`penalty_coefficients`)."""
        norms = self.unit_norms(sums)
        return self.beta * (self._phi(norms, signs, mask, importance) * norms).sum() / self._divisor(len(sums))

    def penalty_coefficients(self, sums: torch.Tensor, signs: torch.Tensor | None = None,
                             mask: torch.Tensor | None = None,
                             importance: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`penalty` (a scalar, no grad) and its derivative by each unit's sum, ``(G,)``.

        ``phi`` does not depend on the weights (positions, or norms read detached), so the
        derivative is ``beta * phi_i * dn_i/ds_i / R`` (``R``: G for ``"mean"``, else 1), with
        ``dn/ds = 1 / (2 sqrt(s))`` for ``"l2"`` (0 at s = 0, like autograd through
        :meth:`unit_norms`) and 1 for ``"l1"`` / ``"l2sq"``."""
        with torch.no_grad():
            norms = self.unit_norms(sums)
            weighted = self.beta * self._phi(norms, signs, mask, importance) / self._divisor(len(sums))
            if self.norm == "l2":
                slope = torch.where(sums > 1e-30, 0.5 / sums.clamp_min(1e-30).sqrt(), torch.zeros_like(sums))
            else:
                slope = torch.ones_like(sums)
            return (weighted * norms).sum(), weighted * slope

    def _phi(self, norms: torch.Tensor, signs: torch.Tensor | None, mask: torch.Tensor | None,
             importance: torch.Tensor | None) -> torch.Tensor:
        """The ``(G,)`` profile on ``norms``' device and dtype, times ``mask``."""
        phi = self._profile(len(norms), norms if importance is None else importance, signs).to(norms.device, norms.dtype)
        return phi if mask is None else phi * mask.to(phi.device, phi.dtype)

    def _divisor(self, size: int) -> int:
        return size if self.reduction == "mean" else 1

    def options(self) -> dict:
        """JSON-safe dict of this force's options (``name`` included)."""
        return {"name": self.name, **dataclasses.asdict(self)}


def check_choice(field: str, value, choices) -> None:
    if value not in choices:
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ForcePruneError(f"{field}={value!r} is not supported.{hint} Choose one of {', '.join(map(repr, choices))}.")
