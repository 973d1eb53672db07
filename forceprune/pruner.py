"""``ForcePruner``: the one object users touch.

    pruner = fp.ForcePruner(model, example_inputs, force="etp", beta=1e-4)
    loss = task_loss + pruner.penalty()     # the force, as a differentiable scalar
    optimizer.step(); pruner.step()         # keep captured units at exactly zero
    report = pruner.prune()                 # remove them, in place; outputs unchanged

It keeps the state of a pruning run -- the unit sets of the model (``units``), the force law
(``forces``), the captured masks (``capture``), the budget controller (``budget``) and the
optimizer -- and each verb delegates to the room that does the work: per-unit numbers to
``scoring``, previews to ``preview``, which units a budget takes to ``budget_selection``, the
surgery and its report to ``removal``.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import torch
import torch.nn as nn

from ._torch import model_device, to_device
from .budget import Budget, BudgetController, target_of
from .budget_plan import must_go, needed_scale
from .activations import InputNorms, activation_scores, input_norms, reads
from .budget_selection import as_removed, capture_within_budget, smallest, uniform_classes
from .capture import apply_captures, build_masks, clip_elements, enforce_zeros, find_captures
from .errors import ForcePruneError
from .forces import Force, resolve
from .latency import latency_budget
from .metrics import count_macs_params
from .preview import counts_if_removed, pruned_copy
from .penalty import force_penalty
from .proximal import proximal_force_step
from .pruner_checks import (check_finite, check_finite_penalty, check_materialised, check_modules, check_options,
                            check_pushed, check_reachable, checked_state, raise_no_units)
from .removal import keep_one, plan_removal, remove, removable_units
from .scoring import cost_weights, force_field, prox_bounds, rate_known, scores, step_shrink, unit_costs
from .report import PruneReport
from .units import build_unit_sets


class ForcePruner:
    """Apply a force law to a model's prunable units, capture exact zeros, remove them.

    Args:
        model: the model to prune; modified only by :meth:`step` (zeroing captured units)
            and :meth:`prune` (removal).
        example_inputs: inputs the model accepts (tensor, tuple of args or dict of kwargs);
            used to trace coupling, count MACs (pass a batch of one for MACs per sample) and
            check that removal leaves outputs unchanged.
        force: a registered name (``"etp"``, ``"torque"``, ``"electrostatic"``, ``"gravity"``,
            ``"group_lasso"``), a preset (``"etp-official"``, ``"etp-paper"``) or a
            :class:`~forceprune.forces.Force` instance.
        ignored_layers: modules whose units are never pruned (the output layers are added
            automatically unless ``ignore_output_layers=False``).
        capture: ``"unit"`` (zero a whole unit once all its elements are ``<= threshold``) or
            ``"element"`` (ETP's element-wise clipping of ``|w| < threshold``).
        threshold: capture threshold, in weight units.
        capture_every: capture every this many :meth:`step` calls (``0``: only when
            :meth:`capture` is called, e.g. at epoch end as ETP's code does).
        cost_power: weight each unit set's penalty by ``(c_S / mean c)**cost_power`` where
            ``c_S`` is the MACs one of its units costs (its producer rows and consumer
            columns). ``0`` (default) is the papers' uniform per-layer force; ``1`` pushes hardest
            where the compute is, which is what a MACs reduction rewards.
        snap: factor on the proximal capture bound (see :mod:`forceprune.capture`); ``0``
            turns it off, leaving the fixed ``threshold`` only.
        target_macs / target_params: keep this fraction of the dense model's MACs / parameters
            (e.g. ``0.05`` = 20x fewer); a controller scales the force to get there by
            ``budget["reach"]`` of training and then holds it (see :mod:`forceprune.budget`).
        target_latency_ms: the same for measured latency (ms per forward pass of the example
            inputs on this machine), through a fitted latency model.
        total_steps: number of :meth:`step` calls in training; required with a target.
        budget: further :class:`~forceprune.budget.Budget` options (``warmup``, ``reach``,
            ``every``, ``gain``, ``min_width``, ``round_to``, ``tolerance``, ``uniform``: one
            width per kind of unit set across layers).
        optimizer: the training optimizer (recommended): its step size sets the proximal
            capture bound, and its momentum/Adam state of captured units is cleared too.
        spare_keepers: with a budget, push only the units its target needs gone (the weakest by
            force-weighted score, re-chosen at every controller update); the units that will be
            kept feel no force, so training is not spent shrinking them.
        kinds: prune only unit sets of these kinds (:data:`~forceprune.units.UNIT_KINDS`:
            ``"channel"``, ``"head"``, ``"kv_group"``, ``"neuron"``, ``"hidden"``, ``"group"``),
            e.g. ``("head", "kv_group", "neuron")`` for a decoder's attention and FFN only.
        **force_options: options of the force law (``beta``, ``norm``, ``pivot``, ...).
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs,
        force: str | Force = "etp",
        ignored_layers: Sequence[nn.Module] | None = None,
        *,
        capture: str | None = None,
        threshold: float | None = None,
        capture_every: int = 10,
        snap: float = 1.0,
        cost_power: float = 0.0,
        target_macs: float | None = None,
        target_params: float | None = None,
        target_latency_ms: float | None = None,
        total_steps: int | None = None,
        budget: dict | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        ignore_output_layers: bool = True,
        kinds: Sequence[str] | None = None,
        spare_keepers: bool = False,
        **force_options,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ForcePruneError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
        check_materialised(model)
        self.force, defaults = resolve(force, force_options)
        self.capture_mode = capture if capture is not None else defaults["capture"]
        self.threshold = float(threshold if threshold is not None else defaults["threshold"])
        check_options(self.capture_mode, self.threshold, capture_every, snap, cost_power, kinds)
        self.capture_every, self.snap, self.cost_power = capture_every, float(snap), float(cost_power)
        targets = {"target_macs": target_macs, "target_params": target_params, "target_latency_ms": target_latency_ms}
        target = target_of(targets, budget)  # checked before the (slow) trace
        self.model = model
        self.example_inputs = example_inputs
        self.ignored_layers = list(ignored_layers or [])
        self.ignore_output_layers = ignore_output_layers
        self.kinds = tuple(kinds) if kinds is not None else None
        self.optimizer = optimizer
        self.steps = 0
        self.history: list[PruneReport] = []
        self.latency_model = None
        self._summary_cache: tuple | None = None
        self._counts_now: tuple[int, int] | None = None
        self._unit_costs: list[float] | None = None
        self._proximal = False
        self.spare_keepers = bool(spare_keepers)
        self._force_masks: list[torch.Tensor] | None = None  # with spare_keepers: 1 = pushed, 0 = spared
        self._pushed: list[torch.Tensor] | None = None  # set by set_pushed_units()
        self._input_norms: InputNorms | None = None  # set by calibrate(): activation-aware scores
        self._importance_at: tuple[int, list] | None = None  # (step, per-set importance) cache
        self._calls = 0
        self.uniform = bool((budget or {}).get("uniform", False))
        self._rebuild()
        self.macs_dense, self.params_dense = count_macs_params(self.model, self._inputs())
        self.controller = None if target is None else self._make_controller(*target, total_steps, budget)

    # -- construction ------------------------------------------------------------------------
    def _inputs(self, inputs=None):
        """Example (or the given) inputs on the model's device."""
        return to_device(self.example_inputs if inputs is None else inputs, model_device(self.model))

    def _rebuild(self, allow_empty: bool = False) -> None:
        """(Re)trace the model and collect its unit sets, keeping captured masks by name."""
        old = {us.name: us.dead for us in getattr(self, "unit_sets", [])}
        inputs = self._inputs()
        self.graph, unit_sets = build_unit_sets(self.model, inputs, self.ignored_layers,
                                                ignore_output_layers=self.ignore_output_layers)
        self.unit_sets = [us for us in unit_sets if self.kinds is None or us.kind in self.kinds]
        if not self.unit_sets and not allow_empty:
            raise_no_units(self.kinds)
        for us in self.unit_sets:
            if us.name in old and len(old[us.name]) == us.size:
                us.dead = old[us.name].clone()
        self._masks = build_masks(self.unit_sets, self.force.include)
        self._set_weights = cost_weights(self.model, self.unit_sets, inputs, self.cost_power)
        self._watched = list({id(m): (n, m) for us in self.unit_sets for n, m in us.modules().items()}.values())
        self._classes = uniform_classes([(us.kind, us.size) for us in self.unit_sets])

    def _check_modules(self, always: bool = False) -> None:
        """:func:`~forceprune.pruner_checks.check_modules` on every 10th training call, and
        always before capture and removal."""
        self._calls += 1
        if always or self._calls % 10 == 1:
            check_modules(self.model, self._watched)

    def _as_removed(self, removes: list[torch.Tensor]) -> list[torch.Tensor]:
        """What removal would take of ``removes`` (:func:`budget_selection.as_removed`)."""
        return as_removed(removes, getattr(self.controller, "budget", None), self._classes if self.uniform else ())

    def _make_controller(self, metric: str, target: float, total_steps, options) -> BudgetController:
        asked = target
        if metric == "latency":
            metric, target, self.latency_model = latency_budget(self.model, self.unit_sets, self._inputs(), target)
        budget = Budget(target=target, metric=metric, total_steps=total_steps or 0, **(options or {}))
        floor = self.kept_fraction(self._preview(smallest([us.size for us in self.unit_sets], budget)), budget.metric)
        check_reachable(floor, budget, metric, asked)
        if (message := budget.short_schedule()) is not None:
            warnings.warn(message, stacklevel=3)
        return BudgetController.for_capture(budget, self.capture_mode)

    def attach_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Clear the optimizer state (momentum, Adam moments) of captured units from now on."""
        self.optimizer = optimizer

    # -- training-time API -------------------------------------------------------------------
    @property
    def scale(self) -> float:
        """The budget controller's multiplier of the force (1 without a budget); 0 during the
        warm-up when the controller's plan then sets the strength (:func:`scoring.rate_known`)."""
        c = self.controller
        if c is None:
            return 1.0
        warming = self.steps <= c.budget.warmup_steps and c.budget.metric != "latency"
        return 0.0 if warming and rate_known(self.force, self.unit_sets, self.optimizer, self._proximal) else c.scale

    def penalty(self) -> torch.Tensor:
        """The force penalty: a differentiable scalar to add to the task loss."""
        self._check_modules()
        if self.scale == 0.0:
            return torch.zeros((), device=model_device(self.model))
        masks = self._force_masks or [None] * len(self.unit_sets)
        total = force_penalty(self.force, self.unit_sets, self._set_weights, masks, self._importance(), self.scale)
        check_finite_penalty(total)
        return total

    def proximal_step(self, lr: float | None = None) -> None:
        """The force as a proximal step instead of a loss term: call right after
        ``optimizer.step()`` (and before :meth:`step`); do not add :meth:`penalty` to the loss
        then. Shrinks every unit by the proximal operator of its force term for step size
        ``lr`` (default: the attached optimizer's first learning rate), scaled by the budget
        controller. Use it to prune pretrained models under Adam, where a loss-term force
        moves each weight by only ~``lr`` per step (:mod:`forceprune.proximal`)."""
        self._check_modules()
        if lr is None:
            if self.optimizer is None:
                raise ForcePruneError("proximal_step() needs lr= or an optimizer: "
                                      "call pruner.attach_optimizer(optimizer) first.")
            lr = float(self.optimizer.param_groups[0]["lr"])
        self._proximal = True
        if self.scale == 0.0:
            return
        proximal_force_step(self.force, self.unit_sets, self._set_weights, self.scale, float(lr), self._force_masks,
                            self._importance())

    def step(self) -> None:
        """Call after every ``optimizer.step()``: re-zero captured units; capture every ``capture_every``."""
        self.steps += 1
        self._check_modules()
        enforce_zeros(self._masks, self.optimizer)
        frozen = self.controller is not None and self.controller.reached
        update = self.controller is not None and self.controller.budget.update_due(self.steps)
        # capture before a controller update, so that it measures captured units only (a proximal
        # step zeroes units between captures; uncaptured zeros would grow back once the force stops)
        due = bool(self.capture_every) and self.steps % self.capture_every == 0
        if (due or update) and not frozen:
            self.capture()
        if update:
            self.controller.update(self.steps, self.kept_fraction(), self._needed_scale())

    def calibrate(self, batches, run_batch, max_batches: int = 32) -> None:
        """Rank units by what flows through them: measure once the input-channel norms of the
        layers that read each unit set (``run_batch(model, batch)`` on the first
        ``max_batches``); from then on pushing, capture and removal go by Wanda's ``|W| x ||X||``
        with the live weights (:mod:`forceprune.activations`), as a pretrained LM needs. Sets no
        measured layer reads keep weight norms; a removal ends it (the widths change)."""
        self._input_norms = input_norms(self.model, self.unit_sets, batches, run_batch, max_batches)
        self._importance_at = None

    def set_pushed_units(self, remove: list[torch.Tensor]) -> None:
        """Fix the units the force pushes (``spare_keepers``): per unit set a ``(G,)`` bool mask of
        the units to remove (e.g. :func:`forceprune.fisher_search.removal_masks`) instead of the
        weakest re-chosen at every controller update; the controller zeroes them by ``reach``."""
        check_pushed(remove, [us.size for us in self.unit_sets], self.spare_keepers and self.controller is not None
                     and self.controller.budget.metric != "latency")
        self._pushed = [r.detach().cpu().bool().clone() for r in remove]

    def unit_scores(self) -> list[torch.Tensor]:
        """``(G,)`` force-weighted importance per unit set (:func:`~forceprune.scoring.scores`),
        activation-aware after :meth:`calibrate`: low scores are pushed and removed first."""
        return [scores(self.force, us, imp) for us, imp in zip(self.unit_sets, self._importance())]

    def _importance(self) -> list[torch.Tensor | None]:
        """Per set, the activation-aware importance standing in for the weight norm (None: not
        calibrated, or no measured layer reads the set); computed once per training step."""
        norms = self._input_norms
        if not norms:
            return [None] * len(self.unit_sets)
        if self._importance_at is None or self._importance_at[0] != self.steps:
            self._importance_at = (self.steps, [activation_scores(us, norms) if reads(us, norms) else None
                                                for us in self.unit_sets])
        return self._importance_at[1]

    def _costs(self) -> tuple[list[float], float]:
        """Per unit set the cost of one unit (at dense widths), and the dense model's, in the
        budget's metric (MACs or params)."""
        if self._unit_costs is None:
            self._unit_costs = (unit_costs(self.model, self.unit_sets, self._inputs()) if self.controller.budget.metric
                                == "macs" else [float(us.numel("all").mean()) for us in self.unit_sets])
        return self._unit_costs, self.macs_dense if self.controller.budget.metric == "macs" else self.params_dense

    def _needed_scale(self) -> float | None:
        """The scale that zeroes, before the budget's ``reach``, the units its target needs gone
        (:func:`forceprune.budget_plan.needed_scale`); None when the rate is unknown. With
        ``spare_keepers`` the force is pointed at those units only."""
        budget = self.controller.budget
        if budget.metric == "latency":
            return None
        costs, dense = self._costs()
        dead = [us.dead for us in self.unit_sets]
        go = ([p | d for p, d in zip(self._pushed, dead)] if self._pushed is not None else
              must_go(self.unit_scores(), costs, dense, budget.target, dead, budget.min_width, budget.round_to))
        if self.spare_keepers:
            self._force_masks = [g.float() for g in go]
        rates = step_shrink(self.force, self.unit_sets, self._set_weights, self.optimizer, self._proximal,
                            self._importance())
        if rates is None:
            return None
        left = int(budget.reach * budget.total_steps) - self.steps
        return needed_scale(rates[0], rates[1], go, dead, left if left > 0 else budget.total_steps - self.steps)

    def capture(self) -> int:
        """Capture now: returns how many units became exactly zero (none once a budget is met)."""
        self._check_modules(always=True)
        if self.controller is not None and self.controller.reached:
            return 0
        if self.capture_mode == "element":
            new = clip_elements(self.unit_sets, self.force.include, self.threshold, self.optimizer)
        else:
            bounds = prox_bounds(self.force, self.unit_sets, self._set_weights, self.optimizer, self.snap, self.scale)
            found = find_captures(self.unit_sets, self.force.include, self.threshold, bounds)
            if self.controller is not None and any(bool(f.any()) for f in found):
                found = self._within_budget(found)
            new = apply_captures(self.unit_sets, found, self.force.include, self.optimizer)
        if new:
            self._masks = build_masks(self.unit_sets, self.force.include)
        return new

    def _within_budget(self, found: list[torch.Tensor]) -> list[torch.Tensor]:
        """Capture no more than the budget needs (:func:`budget_selection.capture_within_budget`)."""
        # removable already, candidates aside (a proximal step may zero many units at once: they
        # compete as candidates, they are not counted as removed)
        base = [removable_units(us)[0] & ~f for us, f in zip(self.unit_sets, found)]
        budget = self.controller.budget
        costs, dense = self._costs() if budget.metric != "latency" else ([float("inf")], 1.0)  # latency: no unit costs
        chosen, reached = capture_within_budget(found, base, self.unit_scores(), self._fraction_if_removed, budget,
                                                may_wait=budget.may_wait(self.steps, min(costs) / dense))
        if reached:
            self.controller.reached, self.controller.scale = True, 0.0
        return chosen

    # -- costs ---------------------------------------------------------------------------------
    def _preview(self, removable: list[torch.Tensor]) -> tuple[int, int, int, int]:
        """``(macs_now, params_now, macs_if_removed, params_if_removed)``."""
        inputs = self._inputs()
        if self._counts_now is None:
            self._counts_now = count_macs_params(self.model, inputs)
        return (*self._counts_now, *counts_if_removed(self.model, self.unit_sets, inputs, removable))

    def _fraction_if_removed(self, removes: list[torch.Tensor]) -> float:
        return self.kept_fraction(self._preview(self._as_removed(removes)))

    def kept_fraction(self, preview: tuple | None = None, metric: str | None = None) -> float:
        """Fraction of the dense cost the model would keep if removable units were removed."""
        metric = metric or (self.controller.budget.metric if self.controller else "macs")
        if preview is None:
            s = self.summary()
            macs, params, widths = s["macs_if_pruned"], s["params_if_pruned"], s["widths_if_pruned"]
        else:
            macs, params, widths = preview[2], preview[3], None
        if metric == "params":
            return params / self.params_dense
        if metric == "latency" and widths is not None:
            return self.latency_model.predict(widths) / self.latency_model.dense_ms
        return macs / self.macs_dense

    def pruned_copy(self, removable: list[torch.Tensor]) -> nn.Module:
        """A deep copy of the model with the given units ((G,) bool per unit set) removed;
        the model itself is untouched (:func:`forceprune.preview.pruned_copy`)."""
        return pruned_copy(self.model, self.unit_sets, self._inputs(), removable)

    # -- introspection -------------------------------------------------------------------------
    @property
    def units_captured(self) -> int:
        """Units held at exactly zero so far (over every unit set)."""
        return int(sum(int(us.dead.sum()) for us in self.unit_sets))

    def force_field(self) -> list[dict]:
        """Per unit set: unit norms, normalised distances, force weights and captured units."""
        return force_field(self.force, self.unit_sets)

    def summary(self) -> dict:
        """Units captured so far and the MACs/params the model would have if they were removed."""
        removable = self._as_removed([removable_units(us)[0] for us in self.unit_sets])
        key = tuple(tuple(torch.nonzero(r).flatten().tolist()) for r in removable)
        if self._summary_cache is None or self._summary_cache[0] != key:
            self._summary_cache = (key, self._preview(removable))
        macs_dense, params_dense, macs, params = self._summary_cache[1]
        return {
            "units_total": sum(us.size for us in self.unit_sets),
            "units_zero": int(sum(int(r.sum()) for r in removable)),
            "macs_dense": macs_dense, "params_dense": params_dense,
            "macs_if_pruned": macs, "params_if_pruned": params,
            "widths_if_pruned": {us.name: us.size - int(keep_one(r).sum()) for us, r in zip(self.unit_sets, removable)},
            "budget": self.controller.describe() if self.controller is not None else None,
        }

    # -- removal ---------------------------------------------------------------------------------
    def prune(self, widths: dict[str, int] | None = None, tolerance: float = 0.0, calibration_inputs=None,
              uniform: bool | None = None, check: bool = True) -> PruneReport:
        """Physically remove units, in place, and report what changed.

        Default mode (``widths=None``): remove only units that are exactly zero (or
        ``<= tolerance``), folding any constant they emit into consumers' biases; outputs
        are unchanged, and checked: if they change by more than rounding (``1e-5`` relative in
        float32) the model is restored and :class:`~forceprune.removal.LossyRemovalError`
        names the unit sets and layouts at fault (``check=False`` skips the check and the copy
        of the model it keeps meanwhile). ``uniform`` (default: the budget's ``uniform``) keeps
        one width per kind of unit set. Width mode: ``widths={unit_set_name: k}`` keeps the
        ``k`` units with the largest force-weighted norm ``||w_i|| / phi_i`` in each named set
        (others untouched) and reports the output error this causes.
        """
        check_finite(self.model)
        self._check_modules(always=True)
        inputs = self._inputs()
        calib = inputs if calibration_inputs is None else self._inputs(calibration_inputs)
        budget = self.controller.budget if self.controller is not None else None
        uniform = self.uniform if uniform is None else bool(uniform)
        plans, notes = plan_removal(self.unit_sets, self.force, widths, tolerance, budget, self._fraction_if_removed,
                                    uniform=uniform, unit_scores=self.unit_scores())
        report = remove(self.model, self.graph, plans, inputs, calib, mode="zero" if widths is None else "width",
                        notes=notes, check=check)
        self.history.append(report)
        for us in self.unit_sets:
            us.dead = torch.zeros(0, dtype=torch.bool)  # stale after surgery; _rebuild() resets
        self._rebuild(allow_empty=True)
        self._summary_cache = self._counts_now = self._unit_costs = None  # costs of the old widths
        self._force_masks = self._input_norms = self._importance_at = self._pushed = None  # state of the old widths
        return report

    # -- state -------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Captured masks and the step counter (tensors and plain types: safe for weights_only)."""
        state = {"steps": self.steps, "dead": {us.name: us.dead.clone() for us in self.unit_sets}}
        if self._pushed is not None:
            state["pushed"] = {us.name: p.clone() for us, p in zip(self.unit_sets, self._pushed)}
        if self.controller is not None:
            state["controller"] = self.controller.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.steps, self._importance_at = int(state["steps"]), None
        if self.controller is not None and "controller" in state:
            self.controller.load_state_dict(state["controller"])
        for us in self.unit_sets:
            if us.name in state["dead"]:
                us.dead = checked_state(us.name, state["dead"][us.name], us.size).clone().bool()
        if "pushed" in state:
            self.set_pushed_units([state["pushed"][us.name] for us in self.unit_sets])
        self._masks = build_masks(self.unit_sets, self.force.include)
        enforce_zeros(self._masks, self.optimizer)
