"""``ForcePruner``: the one object users touch.

    pruner = fp.ForcePruner(model, example_inputs, force="etp", beta=1e-4)
    loss = task_loss + pruner.penalty()     # the force, as a differentiable scalar
    optimizer.step(); pruner.step()         # keep captured units at exactly zero
    report = pruner.prune()                 # remove them, in place; outputs unchanged

It wires together the graph (``units``), the force law (``forces``), the capture policy
(``capture``) and the surgery (``removal``); it holds no logic of its own beyond that.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import warnings
from typing import Sequence

import torch
import torch.nn as nn
import torch_pruning as tp

from . import capture as cap
from . import forces as forces_mod
from .budget import Budget, BudgetController
from .budget_selection import capture_within_budget, complete_budget
from .errors import ForcePruneError, NonFiniteError
from .forces import PRESETS, Force
from .metrics import count_macs_params, layer_macs, measure_latency
from .removal import (
    RemovalPlan,
    apply_removal,
    drop_unmeasured,
    fold_constants,
    measure_constants,
    output_error,
    removable_units,
)
from .report import PruneReport
from .units import PRODUCER_OTHER, PRODUCER_WEIGHT, UnitSet, build_unit_sets, run_model

_DEFAULT_CAPTURE = {"capture": "unit", "threshold": 1e-3}


def _to_device(inputs, device):
    if torch.is_tensor(inputs):
        return inputs.to(device)
    if isinstance(inputs, dict):
        return {k: _to_device(v, device) for k, v in inputs.items()}
    if isinstance(inputs, (list, tuple)):
        return type(inputs)(_to_device(v, device) for v in inputs)
    return inputs


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
            ``every``, ``gain``, ``min_width``, ``round_to``, ``tolerance``).
        optimizer: the training optimizer (recommended): its step size sets the proximal
            capture bound, and its momentum/Adam state of captured units is cleared too.
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
        **force_options,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ForcePruneError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
        self.force, defaults = self._resolve_force(force, force_options)
        self.capture_mode = capture if capture is not None else defaults["capture"]
        self.threshold = float(threshold if threshold is not None else defaults["threshold"])
        if self.capture_mode not in cap.CAPTURE_MODES:
            raise ForcePruneError(f"capture={self.capture_mode!r} is not supported; choose 'unit' or 'element'.")
        if not (math.isfinite(self.threshold) and self.threshold >= 0):
            raise ForcePruneError(f"threshold must be a finite number >= 0, got {self.threshold!r}; try 1e-3.")
        if not isinstance(capture_every, int) or capture_every < 0:
            raise ForcePruneError(f"capture_every must be an int >= 0, got {capture_every!r}.")
        self.capture_every = capture_every
        if not (isinstance(snap, (int, float)) and math.isfinite(snap) and snap >= 0):
            raise ForcePruneError(f"snap must be a finite number >= 0, got {snap!r}; 1.0 is the proximal bound.")
        self.snap = float(snap)
        if not (isinstance(cost_power, (int, float)) and 0 <= cost_power <= 4):
            raise ForcePruneError(f"cost_power must be in [0, 4], got {cost_power!r}; 0 = uniform, 1 = MACs-proportional.")
        self.cost_power = float(cost_power)
        self.model = model
        self.example_inputs = example_inputs
        self.ignored_layers = list(ignored_layers or [])
        self.ignore_output_layers = ignore_output_layers
        self.optimizer = optimizer
        self.steps = 0
        self._summary_cache: tuple | None = None
        self._counts_now: tuple[int, int] | None = None
        self._rebuild()
        inputs = _to_device(self.example_inputs, self._device())
        self.macs_dense, self.params_dense = count_macs_params(self.model, inputs)
        self.controller = self._make_controller(target_macs, target_params, target_latency_ms, total_steps, budget)

    # -- construction ------------------------------------------------------------------------
    @staticmethod
    def _resolve_force(force, options: dict) -> tuple[Force, dict]:
        if isinstance(force, Force):
            if options:
                raise ForcePruneError(
                    f"options {sorted(options)} were given with a Force object; set them on the object instead, "
                    f"e.g. dataclasses.replace(force, {next(iter(options))}=...)."
                )
            return force, dict(_DEFAULT_CAPTURE)
        if not isinstance(force, str):
            raise ForcePruneError(f"force must be a name or a Force object, got {type(force).__name__}.")
        if force in PRESETS:
            preset = PRESETS[force]
            return forces_mod.create(preset["force"], **{**preset["force_options"], **options}), preset
        return forces_mod.create(force, **options), dict(_DEFAULT_CAPTURE)

    def _rebuild(self, allow_empty: bool = False) -> None:
        """(Re)trace the model and collect its unit sets, keeping captured masks by name."""
        old = {us.name: us.dead for us in getattr(self, "unit_sets", [])}
        inputs = _to_device(self.example_inputs, self._device())
        self.graph, self.unit_sets = build_unit_sets(
            self.model, inputs, self.ignored_layers, ignore_output_layers=self.ignore_output_layers
        )
        if not self.unit_sets and not allow_empty:
            raise ForcePruneError(
                "the model has no prunable unit: every conv/linear layer is ignored, is an output layer, or is "
                "coupled to a LayerNorm/embedding. Check ignored_layers, or pass ignore_output_layers=False."
            )
        for us in self.unit_sets:
            if us.name in old and len(old[us.name]) == us.size:
                us.dead = old[us.name].clone()
        self._masks = cap.build_masks(self.unit_sets, self.force.include)
        self._set_weights = self._cost_weights(inputs)

    def _cost_weights(self, inputs) -> list[float]:
        """Per unit set, the multiplier ``(c_S / mean c)**cost_power`` of its penalty, where
        ``c_S`` is the MACs per sample that one unit costs (producer rows + consumer columns)."""
        if self.cost_power == 0:
            return [1.0] * len(self.unit_sets)
        per_layer = layer_macs(self.model, inputs)
        names = {m: n for n, m in self.model.named_modules()}
        costs = []
        for us in self.unit_sets:
            cost = 0.0
            for s in us.slices:
                if s.param_name == "weight" and s.role != PRODUCER_OTHER:
                    macs = per_layer.get(names.get(s.module, ""), 0)
                    cost += macs * len(s.index) / max(s.param.shape[s.dim], 1) / us.size
            costs.append(max(cost, 1e-12))
        mean = sum(costs) / len(costs)
        return [(c / mean) ** self.cost_power for c in costs]

    def _make_controller(self, target_macs, target_params, target_latency_ms, total_steps, options):
        targets = {"macs": target_macs, "params": target_params, "latency": target_latency_ms}
        given = {k: v for k, v in targets.items() if v is not None}
        if not given:
            if options:
                raise ForcePruneError("budget options were given without a target; add target_macs=..., target_params=... or target_latency_ms=...")
            return None
        if len(given) > 1:
            raise ForcePruneError(
                f"two targets at once ({', '.join('target_' + k for k in given)}) without a priority: give one; "
                "the others can be checked in the report."
            )
        (metric, target), = given.items()
        options = dict(options or {})
        unknown = set(options) - {f.name for f in dataclasses.fields(Budget)} | ({"metric", "target", "total_steps"} & set(options))
        if unknown:
            raise ForcePruneError(f"unknown budget options {sorted(unknown)}; valid: warmup, reach, every, gain, min_width, round_to, tolerance.")
        if metric == "latency":
            from .latency import LatencyModel

            self.latency_model = LatencyModel.fit(self)
            if self.latency_model is None:
                dense_ms = measure_latency(self.model, _to_device(self.example_inputs, self._device()), copy_model=True)
                warnings.warn(
                    "timing on this machine is too noisy to fit a latency model (repeated timings of the dense "
                    "model differ by more than 15%); falling back to a MACs target with the same ratio "
                    f"(target_latency_ms / {dense_ms:.3f} ms). Run on a quiet machine for a latency target.",
                    stacklevel=3,
                )
                metric, target = "macs", min(max(target / dense_ms, 1e-3), 0.999)
            else:
                target = target / self.latency_model.dense_ms
                if not 0 < target < 1:
                    raise ForcePruneError(
                        f"target_latency_ms={given['latency']} is not below the dense model's "
                        f"{self.latency_model.dense_ms:.3f} ms on this machine: nothing to prune for it."
                    )
        budget = Budget(target=target, metric=metric if metric != "latency" else "latency", total_steps=total_steps or 0, **options)
        floor = self._floor_fraction(budget)
        if floor > budget.target:
            raise ForcePruneError(
                f"target_{metric}={given[metric]} cannot be met: the smallest model that keeps "
                f"min_width={budget.min_width} unit(s) per unit set has {floor:.3f} of the dense {metric}. "
                "Raise the target, lower min_width, or prune more layers (check ignored_layers)."
            )
        return BudgetController(budget)

    def _floor_fraction(self, budget: Budget) -> float:
        keep = [torch.ones(us.size, dtype=torch.bool) for us in self.unit_sets]
        for k in keep:
            k[min(budget.min_width, len(k)):] = False
        return self.kept_fraction(self._preview([~k for k in keep]), budget.metric)

    def kept_fraction(self, preview: tuple | None = None, metric: str | None = None) -> float:
        """Fraction of the dense cost the model would keep if removable units were removed."""
        metric = metric or (self.controller.budget.metric if self.controller else "macs")
        if preview is None:
            s = self.summary()
            macs, params = s["macs_if_pruned"], s["params_if_pruned"]
            widths = s["widths_if_pruned"]
        else:
            _, _, macs, params = preview
            widths = None
        if metric == "params":
            return params / self.params_dense
        if metric == "latency":
            if widths is None:
                return macs / self.macs_dense
            return self.latency_model.predict(widths) / self.latency_model.dense_ms
        return macs / self.macs_dense

    def _device(self) -> torch.device:
        p = next(self.model.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def attach_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Clear the optimizer state (momentum, Adam moments) of captured units from now on."""
        self.optimizer = optimizer

    # -- training-time API -------------------------------------------------------------------
    def _signs(self, us: UnitSet) -> torch.Tensor | None:
        if getattr(self.force, "charge", None) != "signed_mean":
            return None
        with torch.no_grad():
            total = torch.zeros(us.size)
            for s in us.slices:
                if s.role == PRODUCER_WEIGHT:
                    total.index_add_(0, s.unit.cpu(), s.elements().detach().float().sum(1).cpu())
            return torch.sign(total)

    def penalty(self) -> torch.Tensor:
        """The force penalty: a differentiable scalar to add to the task loss."""
        scale = self.controller.scale if self.controller is not None else 1.0
        if scale == 0.0:
            return torch.zeros((), device=self._device())
        total = None
        for us, weight in zip(self.unit_sets, self._set_weights):
            term = weight * self.force.penalty(us.unit_sums(self.force.include, self.force.power), self._signs(us))
            total = term if total is None else total + term
        if not torch.isfinite(total):
            raise NonFiniteError(
                "the force penalty is NaN/Inf: the weights have diverged. Lower the learning rate or beta, "
                "or check the inputs for NaN."
            )
        return total * scale if scale != 1.0 else total

    def proximal_step(self, lr: float | None = None) -> None:
        """The force as a proximal step instead of a loss term: call right after
        ``optimizer.step()`` (and before :meth:`step`); do not add :meth:`penalty` to the loss
        then. Shrinks every unit by the proximal operator of its force term for step size
        ``lr`` (default: the attached optimizer's first learning rate), scaled by the budget
        controller. Use it to prune pretrained models under Adam, where a loss-term force
        moves each weight by only ~``lr`` per step (:mod:`forceprune.proximal`)."""
        from .proximal import proximal_force_step

        if lr is None:
            if self.optimizer is None:
                raise ForcePruneError("proximal_step() needs lr= or an optimizer: call pruner.attach_optimizer(optimizer) first.")
            lr = float(self.optimizer.param_groups[0]["lr"])
        proximal_force_step(self, float(lr))

    def step(self) -> None:
        """Call after every ``optimizer.step()``: re-zero captured units; capture new ones
        every ``capture_every`` calls."""
        self.steps += 1
        cap.enforce_zeros(self._masks, self.optimizer)
        frozen = self.controller is not None and self.controller.reached
        update = self.controller is not None and self.steps % self.controller.budget.every == 0
        # capture before a controller update, so that it measures captured units only (a proximal
        # step zeroes units between captures; uncaptured zeros would grow back once the force stops)
        due = bool(self.capture_every) and self.steps % self.capture_every == 0
        if (due or update) and not frozen:
            self.capture()
        if update:
            self.controller.update(self.steps, self.kept_fraction())

    def capture(self) -> int:
        """Capture now: returns how many units became exactly zero (none once a budget is met)."""
        if self.controller is not None and self.controller.reached:
            return 0
        if self.capture_mode == "element":
            new = cap.clip_elements(self.unit_sets, self.force.include, self.threshold, self.optimizer)
        else:
            found = cap.find_captures(self.unit_sets, self.force.include, self.threshold, self._prox_bounds())
            if self.controller is not None and any(bool(f.any()) for f in found):
                found = self._within_budget(found)
            new = cap.apply_captures(self.unit_sets, found, self.force.include, self.optimizer)
        if new:
            self._masks = cap.build_masks(self.unit_sets, self.force.include)
        return new

    def _within_budget(self, found: list[torch.Tensor]) -> list[torch.Tensor]:
        """Capture no more than the budget needs (:func:`budget_selection.capture_within_budget`)."""
        # removable already, candidates aside (a proximal step may zero many units at once: they
        # compete as candidates, they are not counted as removed)
        base = [removable_units(us)[0] & ~f for us, f in zip(self.unit_sets, found)]
        scores = [self._scores(us) for us in self.unit_sets]
        chosen, reached = capture_within_budget(found, base, scores, self._fraction_if_removed, self.controller.budget)
        if reached:
            self.controller.reached = True
            self.controller.scale = 0.0
        return chosen

    def _fraction_if_removed(self, removes: list[torch.Tensor]) -> float:
        return self.kept_fraction(self._preview(removes))

    def _prox_bounds(self) -> list | None:
        """Per unit set, the proximal capture bound for the optimizer's current step size."""
        if self.optimizer is None or self.snap == 0 or self.force.beta == 0 or self.force.norm == "l2sq":
            return None
        bounds = []
        for us in self.unit_sets:
            group = _param_group(self.optimizer, us.select(self.force.include)[0].param)
            if group is None:
                bounds.append(None)
                continue
            lr = float(group["lr"])
            if "betas" in group:  # Adam family: ~lr per element per step
                bounds.append(("max", torch.full((us.size,), self.snap * lr)))
                continue
            eta = lr / (1.0 - float(group.get("momentum", 0.0) or 0.0))
            with torch.no_grad():
                norms = self.force.unit_norms(us.unit_sums(self.force.include, self.force.power)).float().cpu()
                phi = self.force.profile(us.size, norms, self._signs(us)).clamp_min(0)
            weight = self._set_weights[self.unit_sets.index(us)]
            scale = self.controller.scale if self.controller is not None else 1.0
            per_unit = self.snap * eta * scale * weight * self.force.beta * phi / (us.size if self.force.reduction == "mean" else 1)
            bounds.append(("l2" if self.force.norm == "l2" else "max", per_unit))
        return bounds

    # -- introspection -------------------------------------------------------------------------
    def force_field(self) -> list[dict]:
        """Per unit set: unit norms, normalised distances, force weights and captured units."""
        out = []
        with torch.no_grad():
            for us in self.unit_sets:
                norms = self.force.unit_norms(us.unit_sums(self.force.include, self.force.power)).float().cpu()
                d, anchor = self.force.distances(us.size, norms)
                x = self.force.normalised(d, us.size)
                phi = self.force.weights(x, norms, anchor, self._signs(us))
                out.append(
                    {
                        "name": us.name,
                        "size": us.size,
                        "pivot": anchor,
                        "norms": norms.tolist(),
                        "distances": x.tolist(),
                        "weights": phi.tolist(),
                        "zero": us.dead.tolist(),
                    }
                )
        return out

    def summary(self) -> dict:
        """Units captured so far and the MACs/params the model would have if they were removed."""
        removable = [removable_units(us)[0] for us in self.unit_sets]
        key = tuple(tuple(torch.nonzero(r).flatten().tolist()) for r in removable)
        if self._summary_cache is None or self._summary_cache[0] != key:
            self._summary_cache = (key, self._preview(removable))
        macs_dense, params_dense, macs, params = self._summary_cache[1]
        return {
            "units_total": sum(us.size for us in self.unit_sets),
            "units_zero": int(sum(int(r.sum()) for r in removable)),
            "macs_dense": macs_dense,
            "params_dense": params_dense,
            "macs_if_pruned": macs,
            "params_if_pruned": params,
            "widths_if_pruned": {us.name: us.size - int(_keep_one(r, us).sum()) for us, r in zip(self.unit_sets, removable)},
            "budget": self.controller.describe() if self.controller is not None else None,
        }

    def pruned_copy(self, removable: list[torch.Tensor]) -> nn.Module:
        """A deep copy of the model with the given units ((G,) bool per unit set) removed;
        the model itself is untouched. Used for previews and latency fitting."""
        inputs = _to_device(self.example_inputs, self._device())
        clone = copy.deepcopy(self.model)
        # an instance-level forward wrapper (e.g. the HF callback's penalty hook) is bound to the
        # original model: the copy must run its own class forward
        clone.__dict__.pop("forward", None)
        was = clone.training
        clone.eval()
        graph = tp.DependencyGraph().build_dependency(clone, example_inputs=inputs, verbose=False)
        clone.train(was)
        modules = dict(clone.named_modules())
        for us, rem in zip(self.unit_sets, removable):
            idxs = torch.nonzero(_keep_one(rem, us)).flatten().tolist()
            if idxs:
                graph.get_pruning_group(modules[us.root_name], us.root_fn, us.root_channels(idxs)).prune()
                if us.on_removed is not None:
                    us.on_removed(clone, [i for i in range(us.size) if i not in set(idxs)])
        return clone

    def _preview(self, removable: list[torch.Tensor]) -> tuple[int, int, int, int]:
        """``(macs_now, params_now, macs_if_removed, params_if_removed)``."""
        inputs = _to_device(self.example_inputs, self._device())
        if self._counts_now is None:
            self._counts_now = count_macs_params(self.model, inputs)
        macs, params = count_macs_params(self.pruned_copy(removable), inputs)
        return (*self._counts_now, macs, params)

    # -- removal ---------------------------------------------------------------------------------
    def prune(
        self,
        widths: dict[str, int] | None = None,
        tolerance: float = 0.0,
        calibration_inputs=None,
    ) -> PruneReport:
        """Physically remove units, in place, and report what changed.

        Default mode (``widths=None``): remove only units that are exactly zero (or
        ``<= tolerance``), folding any constant they emit into consumers' biases; outputs
        are unchanged. Width mode: ``widths={unit_set_name: k}`` keeps the ``k`` units with the
        largest force-weighted norm ``||w_i|| / phi_i`` in each named set (others untouched)
        and reports the output error this causes.
        """
        self._check_finite()
        inputs = _to_device(self.example_inputs, self._device())
        calib = inputs if calibration_inputs is None else _to_device(calibration_inputs, self._device())
        mode = "zero" if widths is None else "width"
        plans, warnings = self._plans(widths, tolerance)
        was = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                y_before = run_model(self.model, calib)
            macs_before, params_before = count_macs_params(self.model, inputs)
            per_layer_before = layer_macs(self.model, inputs)
            constants = measure_constants(self.model, plans, calib)
            warnings += drop_unmeasured(plans, constants)
            warnings += fold_constants(plans, constants)
            grad_flags = {n: p.requires_grad for n, p in self.model.named_parameters()}
            kept = apply_removal(self.graph, plans, self.model)
            for n, p in self.model.named_parameters():  # torch-pruning resets requires_grad to True
                p.requires_grad_(grad_flags.get(n, p.requires_grad))
            with torch.no_grad():
                y_after = run_model(self.model, calib)
            macs_after, params_after = count_macs_params(self.model, inputs)
            per_layer_after = layer_macs(self.model, inputs)
        finally:
            self.model.train(was)
        layers = [
            {
                "name": p.unit_set.name,
                "root": p.unit_set.root_name,
                "kind": p.unit_set.kind,
                "channels_per_unit": p.unit_set.channels_per_unit,
                "width_before": p.unit_set.size,
                "width_after": len(kept[p.unit_set.name]),
            }
            for p in plans
        ]
        report = PruneReport(
            mode=mode,
            macs_before=macs_before,
            macs_after=macs_after,
            params_before=params_before,
            params_after=params_after,
            max_output_error=output_error(y_before, y_after),
            layers=layers,
            layer_macs=[
                {"layer": n, "macs_before": v, "macs_after": per_layer_after.get(n, 0)} for n, v in per_layer_before.items()
            ],
            kept=kept,
            warnings=warnings,
        )
        self.history = getattr(self, "history", []) + [report]
        for us in self.unit_sets:
            us.dead = torch.zeros(0, dtype=torch.bool)  # stale after surgery; _rebuild() resets
        self._rebuild(allow_empty=True)
        self._summary_cache = None
        self._counts_now = None
        return report

    def _plans(self, widths: dict[str, int] | None, tolerance: float) -> tuple[list[RemovalPlan], list[str]]:
        warnings: list[str] = []
        plans = []
        if widths is not None:
            unknown = sorted(set(widths) - {us.name for us in self.unit_sets})
            if unknown:
                raise ForcePruneError(
                    f"widths names unknown unit sets {unknown}; valid names: {[us.name for us in self.unit_sets]}."
                )
        removes, folds = [], []
        for us in self.unit_sets:
            if widths is None:
                remove, fold = removable_units(us, tolerance)
            else:
                remove = self._weakest_tail(us, widths.get(us.name, us.size))
                fold = torch.zeros(us.size, dtype=torch.bool)
            removes.append(remove)
            folds.append(fold)
        if widths is None and self.controller is not None:
            scores = [self._scores(us) for us in self.unit_sets]
            removes, note = complete_budget(removes, scores, self._fraction_if_removed, self.controller.budget)
            warnings += note
        for us, remove, fold in zip(self.unit_sets, removes, folds):
            if bool(remove.all()):
                warnings.append(f"{us.name}: every unit could be removed; kept one so the layer still exists")
                remove = _keep_one(remove, us)
            plans.append(RemovalPlan(us, remove, fold & remove))
        return plans, warnings

    def _scores(self, us: UnitSet) -> torch.Tensor:
        """Scale-free force-weighted importance ``(||w_i|| / phi_i) / mean ||w||`` (``(G,)``)."""
        with torch.no_grad():
            norms = self.force.unit_norms(us.unit_sums(self.force.include, self.force.power)).float().cpu()
            phi = self.force.profile(us.size, norms, self._signs(us)).clamp_min(1e-12)
        return norms / phi / norms.mean().clamp_min(1e-12)

    def _weakest_tail(self, us: UnitSet, k: int) -> torch.Tensor:
        if not isinstance(k, int) or k < 1:
            raise ForcePruneError(f"width for {us.name!r} must be an int >= 1, got {k!r} (a layer keeps at least one unit).")
        with torch.no_grad():
            norms = self.force.unit_norms(us.unit_sums(self.force.include, self.force.power)).float().cpu()
            phi = self.force.profile(us.size, norms, self._signs(us)).clamp_min(1e-12)
        order = torch.argsort(norms / phi, descending=True, stable=True)
        remove = torch.ones(us.size, dtype=torch.bool)
        remove[order[: min(k, us.size)]] = False
        return remove

    def _check_finite(self) -> None:
        for name, p in self.model.named_parameters():
            if not torch.isfinite(p).all():
                raise NonFiniteError(
                    f"parameter {name!r} contains NaN/Inf; removal would not be meaningful. "
                    "Restore a finite checkpoint (lower the learning rate or beta) and try again."
                )

    # -- state -------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Captured masks and the step counter (tensors and plain types: safe for weights_only)."""
        state = {"steps": self.steps, "dead": {us.name: us.dead.clone() for us in self.unit_sets}}
        if self.controller is not None:
            state["controller"] = self.controller.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state["steps"])
        if self.controller is not None and "controller" in state:
            self.controller.load_state_dict(state["controller"])
        for us in self.unit_sets:
            if us.name in state["dead"]:
                dead = state["dead"][us.name]
                if len(dead) != us.size:
                    raise ForcePruneError(
                        f"state for unit set {us.name!r} has {len(dead)} units but the model has {us.size}; "
                        "load it into the same (unpruned) model it was saved from."
                    )
                us.dead = dead.clone().bool()
        self._masks = cap.build_masks(self.unit_sets, self.force.include)
        cap.enforce_zeros(self._masks, self.optimizer)


def _param_group(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> dict | None:
    for group in optimizer.param_groups:
        if any(p is param for p in group["params"]):
            return group
    return None


def _keep_one(remove: torch.Tensor, us: UnitSet) -> torch.Tensor:
    """Never remove every unit of a set: keep the first (the pivot side) if all would go."""
    if bool(remove.all()):
        remove = remove.clone()
        remove[0] = False
    return remove
