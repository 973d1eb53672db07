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
import math
from typing import Sequence

import torch
import torch.nn as nn
import torch_pruning as tp

from . import capture as cap
from . import forces as forces_mod
from .errors import ForcePruneError, NonFiniteError
from .forces import PRESETS, Force
from .metrics import count_macs_params, layer_macs
from .removal import RemovalPlan, apply_removal, fold_constants, measure_constants, output_error, removable_units
from .report import PruneReport
from .units import PRODUCER_WEIGHT, UnitSet, build_unit_sets, run_model

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
        snap: factor on the proximal capture bound (see :mod:`forceprune.capture`); ``0``
            turns it off, leaving the fixed ``threshold`` only.
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
        capture_every: int = 1,
        snap: float = 1.0,
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
        self.model = model
        self.example_inputs = example_inputs
        self.ignored_layers = list(ignored_layers or [])
        self.ignore_output_layers = ignore_output_layers
        self.optimizer = optimizer
        self.steps = 0
        self._rebuild()
        self._summary_cache: tuple | None = None

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

    def _rebuild(self) -> None:
        """(Re)trace the model and collect its unit sets, keeping captured masks by name."""
        old = {us.name: us.dead for us in getattr(self, "unit_sets", [])}
        inputs = _to_device(self.example_inputs, self._device())
        self.graph, self.unit_sets = build_unit_sets(
            self.model, inputs, self.ignored_layers, ignore_output_layers=self.ignore_output_layers
        )
        if not self.unit_sets:
            raise ForcePruneError(
                "the model has no prunable unit: every conv/linear layer is ignored, is an output layer, or is "
                "coupled to a LayerNorm/embedding. Check ignored_layers, or pass ignore_output_layers=False."
            )
        for us in self.unit_sets:
            if us.name in old and len(old[us.name]) == us.size:
                us.dead = old[us.name].clone()
        self._masks = cap.build_masks(self.unit_sets, self.force.include)

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
        total = None
        for us in self.unit_sets:
            term = self.force.penalty(us.unit_sums(self.force.include, self.force.power), self._signs(us))
            total = term if total is None else total + term
        if not torch.isfinite(total):
            raise NonFiniteError(
                "the force penalty is NaN/Inf: the weights have diverged. Lower the learning rate or beta, "
                "or check the inputs for NaN."
            )
        return total

    def step(self) -> None:
        """Call after every ``optimizer.step()``: re-zero captured units; capture new ones
        every ``capture_every`` calls."""
        self.steps += 1
        cap.enforce_zeros(self._masks, self.optimizer)
        if self.capture_every and self.steps % self.capture_every == 0:
            self.capture()

    def capture(self) -> int:
        """Capture now: returns how many units became exactly zero."""
        if self.capture_mode == "element":
            new = cap.clip_elements(self.unit_sets, self.force.include, self.threshold, self.optimizer)
        else:
            new = cap.capture_units(
                self.unit_sets, self.force.include, self.threshold, self.optimizer, self._prox_bounds()
            )
        if new:
            self._masks = cap.build_masks(self.unit_sets, self.force.include)
        return new

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
            per_unit = self.snap * eta * self.force.beta * phi / (us.size if self.force.reduction == "mean" else 1)
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
        }

    def _preview(self, removable: list[torch.Tensor]) -> tuple[int, int, int, int]:
        inputs = _to_device(self.example_inputs, self._device())
        macs_dense, params_dense = count_macs_params(self.model, inputs)
        clone = copy.deepcopy(self.model)
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
        macs, params = count_macs_params(clone, inputs)
        return macs_dense, params_dense, macs, params

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
            warnings += fold_constants(plans, constants)
            kept = apply_removal(self.graph, plans, self.model)
            with torch.no_grad():
                y_after = run_model(self.model, calib)
            macs_after, params_after = count_macs_params(self.model, inputs)
            per_layer_after = layer_macs(self.model, inputs)
        finally:
            self.model.train(was)
        layers = [{"name": p.unit_set.name, "width_before": p.unit_set.size, "width_after": len(kept[p.unit_set.name])} for p in plans]
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
        self._rebuild()
        self._summary_cache = None
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
        for us in self.unit_sets:
            if widths is None:
                remove, fold = removable_units(us, tolerance)
            else:
                remove = self._weakest_tail(us, widths.get(us.name, us.size))
                fold = torch.zeros(us.size, dtype=torch.bool)
            if bool(remove.all()):
                warnings.append(f"{us.name}: every unit could be removed; kept one so the layer still exists")
                remove = _keep_one(remove, us)
            plans.append(RemovalPlan(us, remove, fold & remove))
        return plans, warnings

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
        return {"steps": self.steps, "dead": {us.name: us.dead.clone() for us in self.unit_sets}}

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state["steps"])
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
