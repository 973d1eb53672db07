"""A latency model of the machine it runs on, for latency budgets.

For each unit set we measure the model with that set cut to half its width (everything else
dense) and fit a straight line between the dense time and that point, so the predicted time of
a pruned model is

    t(widths) = t_dense - sum_S slope_S * (1 - width_S / G_S)      (milliseconds)

The fit is checked against one measured model with every set at half width; timings whose
repeat-to-repeat spread exceeds ``max_noise`` are refused (``fit`` returns None and the caller
falls back to a MACs target with a warning). Fits are cached per model layout in memory.
"""
from __future__ import annotations

import statistics
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .errors import ForcePruneError
from .metrics import measure_latency
from .preview import pruned_copy
from .units import UnitSet

_CACHE: dict[tuple, "LatencyModel"] = {}


@dataclass
class LatencyModel:
    dense_ms: float
    slopes: dict[str, float]  # ms saved per unit set when it goes from full width to zero
    sizes: dict[str, int]
    check_error: float = 0.0  # |predicted - measured| / measured at all-half width
    noise: float = 0.0  # relative spread of repeated dense timings
    points: dict[str, float] = field(default_factory=dict)

    def predict(self, widths: dict[str, int]) -> float:
        """Predicted milliseconds per forward pass for the given kept widths."""
        saved = sum(self.slopes[n] * (1 - widths.get(n, g) / g) for n, g in self.sizes.items())
        return max(self.dense_ms - saved, 0.05 * self.dense_ms)

    @classmethod
    def from_timings(cls, dense: list[float], half: dict[str, float], sizes: dict[str, int],
                     all_half: float, max_noise: float = 0.15) -> "LatencyModel | None":
        """Fit from measured timings (ms): repeated dense medians, each set at half width, and
        every set at half width. Returns None when the dense repeats are too noisy."""
        dense_ms = statistics.median(dense)
        noise = (max(dense) - min(dense)) / dense_ms if dense_ms > 0 else float("inf")
        if noise > max_noise:
            return None
        slopes = {n: max(0.0, 2.0 * (dense_ms - t)) for n, t in half.items()}
        model = cls(dense_ms=dense_ms, slopes=slopes, sizes=dict(sizes), noise=noise, points=dict(half))
        predicted = model.predict({n: g // 2 for n, g in sizes.items()})
        model.check_error = abs(predicted - all_half) / max(all_half, 1e-9)
        return model

    @classmethod
    def fit(cls, model: nn.Module, unit_sets: list[UnitSet], inputs, repeats: int = 20,
            max_noise: float = 0.15) -> "LatencyModel | None":
        """Measure ``model`` on this machine (a few dozen forward passes of ``inputs`` per unit
        set, each set cut to half width in a copy); None when the timings are too noisy."""
        key = (type(model).__name__, tuple((us.name, us.size) for us in unit_sets),
               tuple(inputs.shape) if torch.is_tensor(inputs) else None)
        if key in _CACHE:
            return _CACHE[key]
        sizes = {us.name: us.size for us in unit_sets}

        def half_masks(only=None):
            masks = []
            for us in unit_sets:
                m = torch.zeros(us.size, dtype=torch.bool)
                if only is None or us.name == only:
                    m[us.size // 2 + us.size % 2:] = True
                masks.append(m)
            return masks

        dense = [measure_latency(model, inputs, repeats=repeats, copy_model=True) for _ in range(3)]
        half = {us.name: measure_latency(pruned_copy(model, unit_sets, inputs, half_masks(us.name)), inputs, repeats=repeats)
                for us in unit_sets}
        all_half = measure_latency(pruned_copy(model, unit_sets, inputs, half_masks()), inputs, repeats=repeats)
        fitted = cls.from_timings(dense, half, sizes, all_half, max_noise)
        if fitted is not None:
            _CACHE[key] = fitted
        return fitted


def latency_budget(model: nn.Module, unit_sets: list[UnitSet], inputs, target_ms: float
                   ) -> tuple[str, float, LatencyModel | None]:
    """A latency target as a budget: ``(metric, target fraction, latency model)``.

    With a usable fit the metric is ``"latency"`` and the fraction ``target_ms / dense_ms``;
    when timing on this machine is too noisy, a MACs target of the same ratio (with a warning)."""
    fitted = LatencyModel.fit(model, unit_sets, inputs)
    if fitted is None:
        dense_ms = measure_latency(model, inputs, copy_model=True)
        warnings.warn(
            "timing on this machine is too noisy to fit a latency model (repeated timings of the dense "
            "model differ by more than 15%); falling back to a MACs target with the same ratio "
            f"(target_latency_ms / {dense_ms:.3f} ms). Run on a quiet machine for a latency target.",
            stacklevel=4,
        )
        return "macs", min(max(target_ms / dense_ms, 1e-3), 0.999), None
    fraction = target_ms / fitted.dense_ms
    if not 0 < fraction < 1:
        raise ForcePruneError(
            f"target_latency_ms={target_ms} is not below the dense model's {fitted.dense_ms:.3f} ms on this "
            "machine: nothing to prune for it."
        )
    return "latency", fraction, fitted
