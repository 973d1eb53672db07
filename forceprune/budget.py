"""Budgets: ask for a fraction of the dense model's MACs or parameters (or a latency) and get it.

The controller replaces the papers' grid search over ``beta``. It multiplies the force by a
scale ``s`` that it adjusts while training, so that the fraction ``f`` of the dense cost the
model would keep if the captured units were removed follows a planned trajectory:

* ``f_plan = 1`` during warm-up (``progress <= warmup``); while the plan below can set the
  strength, the force is *off* during warm-up (a force at the starting ``beta`` there decided,
  on a barely trained network, what the plan would then have to live with: on ResNet-20 a
  10x stronger start captured 49 units in 24 steps; BENCHMARKS.md, the starting-strength table);
* a geometric ramp ``f_plan = target ** ((progress - warmup) / (reach - warmup))`` until
  ``progress = reach`` (default 70 % of training);
* then hold at ``target``.

Every ``every`` steps it measures ``f`` and updates ``s <- s * exp(gain * log(f / f_plan))``,
clipped to ``[1, 1.25]`` per update (up to 2 when more than 1.5x behind plan, so a poorly chosen
starting beta is corrected quickly): behind plan it pushes harder; ahead of plan it holds.
Captured units are permanent, so being ahead costs nothing, while a scale that was lowered early
must be rebuilt late, overshoots and disrupts training: on LeNet-5 / MNIST (8 epochs, 10x target)
a symmetric [0.5, 2] clip ended at 98.95 %, [0.9, 1.25] at 99.11 %; see BENCHMARKS.md.

When a capture would cross the target, only the weakest candidates up to it are captured, and the
crossing is made on cheap units where possible (a unit's cost varies a lot: a LeNet-5 conv1 filter
is 4 % of the MACs, an fc1 neuron 0.03 %), so that ``f`` lands within ``tolerance`` below the
target; if every crossing would land further below, the crossing waits for cheaper units (until
90 % of training, when cheap units exist), and after that ``f`` stays where it is if within
``tolerance`` above. Then the budget is met: the force is switched off and capture frozen, so
the remaining training spends the budget on accuracy (no units come back; captured units stay
zero). If training ends above target, :meth:`ForcePruner.prune` removes the weakest remaining
units (global competition by force-weighted norm) until the target holds, and reports the cost.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Mapping

from .errors import ForcePruneError

METRICS = ("macs", "params", "latency")
#: The target options every entry point accepts, and the metric each one sets.
TARGET_KEYS = ("target_macs", "target_params", "target_latency_ms")
TARGET_METRICS = dict(zip(TARGET_KEYS, METRICS))


@dataclass(frozen=True)
class Budget:
    """What to reach and when.

    Args:
        target: fraction of the dense model's cost to keep, in (0, 1) (e.g. 0.05 = 20x fewer
            MACs); for ``metric="latency"`` a time in milliseconds.
        metric: ``"macs"``, ``"params"`` or ``"latency"`` (milliseconds per forward pass of the
            example inputs, from a latency model fitted on this machine).
        total_steps: number of ``pruner.step()`` calls in the whole training run.
        warmup: fraction of training before the force starts to ramp.
        reach: fraction of training by which the target should be met.
        every: steps between controller updates (each costs one MACs/params preview); 0 =
            automatic: about 100 updates over training, at least every 10 steps, and at least 50
            updates on a short schedule.
        gain: how strongly the scale reacts to the gap (per update, in log units).
        min_width: floor on every unit set's kept width.
        round_to: kept widths are rounded up to a multiple of this (hardware alignment).
        tolerance: relative slack at removal (0.03): if training ended within 3 % above the
            target, removal does not cut non-zero units to close the gap. The controller itself
            aims at or below the target.
        uniform: keep one width per kind of unit set across layers (every attention block the
            same heads, every FFN the same width): removal takes from each set of a kind and
            size only as many zero units as every one of them has, and the controller counts
            the cost that way, so the pruned model saves as a plain Hugging Face folder
            (``save_pruned_pretrained(..., uniform=True)``).
    """

    target: float
    metric: str = "macs"
    total_steps: int = 0
    warmup: float = 0.05
    reach: float = 0.7
    every: int = 0
    gain: float = 1.0
    min_width: int = 1
    round_to: int = 1
    tolerance: float = 0.03
    uniform: bool = False

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ForcePruneError(f"budget metric {self.metric!r} is not supported; choose one of {METRICS}.")
        if self.metric == "latency":
            if not (math.isfinite(self.target) and self.target > 0):
                raise ForcePruneError(f"target_latency_ms must be > 0 ms, got {self.target!r}.")
        elif not (0 < self.target < 1):
            raise ForcePruneError(
                f"target_{self.metric}={self.target!r} must be a fraction of the dense model in (0, 1): "
                f"e.g. 0.05 keeps 5 % ({1 / 0.05:.0f}x fewer {self.metric}). A value >= 1 asks for no pruning."
            )
        if not isinstance(self.total_steps, int) or self.total_steps < 1:
            raise ForcePruneError(
                "a budget needs total_steps: the number of pruner.step() calls in training "
                "(epochs * batches per epoch), e.g. ForcePruner(..., target_macs=0.1, total_steps=epochs * len(loader))."
            )
        if not 0 <= self.warmup < self.reach <= 1:
            raise ForcePruneError(f"need 0 <= warmup < reach <= 1, got warmup={self.warmup}, reach={self.reach}.")
        if not isinstance(self.every, int) or self.every < 0:
            raise ForcePruneError(f"every must be an int >= 0 (0 = automatic), got {self.every!r}.")
        if self.every == 0:  # ~100 updates over training, at least every 10 steps, and >= 50 on short schedules
            object.__setattr__(self, "every", max(1, min(max(10, self.total_steps // 100), self.total_steps // 50)))
        if not (self.gain > 0 and math.isfinite(self.gain)):
            raise ForcePruneError(f"gain must be > 0, got {self.gain!r}.")
        for name in ("min_width", "round_to"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ForcePruneError(f"{name} must be an int >= 1, got {v!r}.")
        if not 0 <= self.tolerance < 0.5:
            raise ForcePruneError(f"tolerance must be in [0, 0.5), got {self.tolerance!r}.")
        if not isinstance(self.uniform, bool):
            raise ForcePruneError(f"uniform must be true or false, got {self.uniform!r}.")

    @property
    def warmup_steps(self) -> int:
        """Steps of the warm-up: the controller plans at step ``warmup_steps + 1``."""
        return int(self.warmup * self.total_steps)

    def short_schedule(self) -> str | None:
        """A warning when the schedule leaves the controller fewer than 3 updates before
        ``reach`` (the target would then be met by cutting non-zero units at removal)."""
        updates = int((self.reach - self.warmup) * self.total_steps / self.every)
        if updates >= 3:
            return None
        return (f"the schedule is too short for the budget controller: only {updates} budget update(s) between the "
                f"warm-up and reach={self.reach} of total_steps={self.total_steps} (every {self.every} steps); the "
                "target will likely be met by cutting non-zero units at removal. Train for more steps, or raise "
                "budget.reach / lower budget.warmup.")

    def may_wait(self, step: int, cheapest: float) -> bool:
        """Whether a capture that would overshoot the target far below may wait for cheaper
        units instead (:func:`~forceprune.budget_selection.capture_within_budget`): until
        :data:`CROSSING_WAIT` of training (the rest recovers after the crossing), and only when
        the ``cheapest`` unit (its fraction of the dense cost) can land within the tolerance --
        on a model whose every unit is coarse, waiting ends in cutting a non-zero unit."""
        return step < CROSSING_WAIT * self.total_steps and cheapest <= self.tolerance * self.target

    def update_due(self, step: int) -> bool:
        """Whether the controller updates after ``step``: every ``every`` steps, and right
        after the warm-up (when the plan sets the force's strength)."""
        return step % self.every == 0 or step == self.warmup_steps + 1

    def planned(self, progress: float) -> float:
        """Planned kept fraction (or latency ratio) at ``progress`` in [0, 1]."""
        target = self.target
        if progress <= self.warmup:
            return 1.0
        if progress >= self.reach:
            return target
        s = (progress - self.warmup) / (self.reach - self.warmup)
        return target**s


#: Fraction of training until which an overshooting crossing waits for cheaper units.
CROSSING_WAIT = 0.9

#: Element capture: the largest multiple of the planned scale the controller's feedback may build.
ELEMENT_CEILING = 4.0


@dataclass
class BudgetController:
    """Adjusts the force scale to follow :class:`Budget`'s plan. State is checkpointable."""

    budget: Budget
    scale: float = 1.0
    floor: float = 1.0  # smallest factor per update: 1.0 = the force never weakens before the target
    ceiling: float = math.inf  # largest multiple of the planned (``needed``) scale the feedback may build
    reached: bool = False
    last_fraction: float = 1.0
    updates: int = 0
    planned: bool = False  # the scale was calibrated from the plan (the first update after warm-up)

    def update(self, step: int, fraction: float, needed: float | None = None) -> float:
        """Feed the measured kept ``fraction`` at ``step``; returns the new force scale.

        ``needed`` (optional) is the scale that would zero, in the steps left before ``reach``,
        every unit that must go (:mod:`forceprune.budget_plan`): the first update after the
        warm-up *starts* from it -- so the starting ``beta`` does not matter -- and later ones
        never fall below it, so a short schedule is met with exact zeros, nor rise above
        ``ceiling`` times it (element capture: the unit fraction lags whatever the force, and
        feedback compounding without bound drives the loss to NaN)."""
        self.last_fraction = fraction
        self.updates += 1
        target = self.budget.target
        if fraction <= target:  # a budget is a ceiling: the controller stops at or below it
            self.reached = True
        if self.reached:
            self.scale = 0.0
            return self.scale
        progress = min(step / self.budget.total_steps, 1.0)
        if progress <= self.budget.warmup:
            return self.scale
        plan = self.budget.planned(progress)
        factor = math.exp(self.budget.gain * math.log(max(fraction, 1e-12) / plan))
        ceiling = 2.0 if fraction > 1.5 * plan else 1.25
        if needed is not None and not self.planned:
            self.scale, self.planned = needed, True
        self.scale = self.scale * min(max(factor, self.floor), ceiling)
        if needed is not None:
            self.scale = min(max(self.scale, needed), self.ceiling * needed)
        self.scale = min(max(self.scale, 1e-6), 1e6)
        return self.scale

    @classmethod
    def for_capture(cls, budget: Budget, capture: str) -> "BudgetController":
        """The controller for a capture mode. Element clipping zeroes single weights, so the
        unit fraction the controller measures lags whatever the force: its feedback is bounded
        at :data:`ELEMENT_CEILING` times the planned scale (unbounded, it compounded to 23x the
        planned scale on LeNet-5 / Fashion-MNIST and the loss went NaN; BENCHMARKS.md section 4)."""
        return cls(budget, ceiling=ELEMENT_CEILING if capture == "element" else math.inf)

    def state_dict(self) -> dict:
        return {"scale": self.scale, "reached": self.reached, "last_fraction": self.last_fraction, "updates": self.updates,
                "planned": self.planned}

    def load_state_dict(self, state: dict) -> None:
        self.scale = float(state["scale"])
        self.reached = bool(state["reached"])
        self.last_fraction = float(state["last_fraction"])
        self.updates = int(state["updates"])
        self.planned = bool(state.get("planned", False))

    def describe(self) -> dict:
        return {**asdict(self.budget), **self.state_dict()}


#: The options of :class:`Budget` a user sets (``budget={...}`` / a config's ``[budget]`` table).
BUDGET_OPTIONS = tuple(f.name for f in fields(Budget) if f.name not in ("target", "metric", "total_steps"))


def budget_errors(targets: Mapping[str, float | None], options: Mapping | None = None) -> list[str]:
    """Everything wrong with a set of targets (``{"target_macs": 0.1, ...}``, ``None`` = unset)
    and budget options, each message with its fix; ``[]`` when they are usable. The value rules
    are :class:`Budget`'s own (it is built once with a placeholder step count)."""
    options = dict(options or {})
    given = {k: v for k, v in targets.items() if v is not None}
    errors = []
    unknown = sorted(set(options) - set(BUDGET_OPTIONS))
    if unknown:
        errors.append(f"unknown budget options {unknown}; valid: {', '.join(BUDGET_OPTIONS)}")
    if not given:
        if options:
            errors.append("budget options were given without a target; add target_macs, target_params or "
                          "target_latency_ms")
        return errors
    if len(given) > 1:
        return errors + [f"two targets at once ({', '.join(given)}) without a priority: give one; the others can "
                         "be checked in the report"]
    (key, value), = given.items()
    if unknown:
        return errors
    try:
        Budget(target=value, metric=TARGET_METRICS[key], total_steps=1, **options)
    except (ForcePruneError, TypeError) as exc:
        errors.append(str(exc))
    return errors


def target_of(targets: Mapping[str, float | None], options: Mapping | None = None) -> tuple[str, float] | None:
    """``(metric, value)`` of the one target given (``None`` without one), after
    :func:`budget_errors`; raises :class:`ForcePruneError` naming every problem."""
    errors = budget_errors(targets, options)
    if errors:
        raise ForcePruneError("; ".join(errors) + ".")
    given = [(TARGET_METRICS[k], float(v)) for k, v in targets.items() if v is not None]
    return given[0] if given else None
