"""Lossless removal: physically delete units that are exactly zero, and check that it was.

A unit can go without changing the model's function when (``UnitSet.removal`` says which
of these apply to a unit set)

* every consumer reads it with all-zero weights (nobody listens), or
* its producer weights are all zero, so the channel carries a constant ``c`` (``act(BN beta)``
  or ``act(bias)``, usually 0). The constant is measured on calibration inputs at each
  consumer's input and folded into the consumer's bias:
  ``linear: b += W[:, j] c``; ``conv: b += sum_{kh,kw} W[:, j] c`` (exact when the consumer
  has no zero padding or ``c == 0``; otherwise the border error is measured and reported), or
* (residual-stream channels) every write to it is zero, so it is zero everywhere.

Surgery is torch-pruning's for channel groups (one dependency group per unit set) and the
unit set's own ``on_removed`` for provider unit sets (attention heads, FFN neurons, the
residual stream). A removal of exact zeros is then checked: outputs before and after on the
calibration inputs must agree to ``1e-5`` (relative, float32). A larger change is re-measured
on float64 copies: rounding compounded through a deep model vanishes there (and is reported as a
warning), a wrong unit mapping does not; then the model is put back as it was and
:class:`LossyRemovalError` names the unit sets and layouts at fault (found by removing each set
alone from a copy). A removal that is lossy on purpose -- a budget that cut
non-zero units, a fold at a zero-padded conv border, ``tolerance > 0``, width mode -- is
reported in ``max_output_error`` and its warnings instead.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from ._torch import eval_mode, flatten_tensors, run_model, to_float64
from .attention.slicing import is_conv1d
from .budget import Budget
from .budget_selection import complete_budget, equalize, uniform_classes
from .capture import producers_zero
from .errors import ForcePruneError
from .forces import Force
from .metrics import count_macs_params, layer_macs
from .report import PruneReport
from .scoring import scores, weakest_tail
from .snapshot import check_ties, restore
from .tracing import no_kv_cache, shared_parameters
from .units import CONSUMER, OWN_SURGERY, UnitSet, model_graph


class LossyRemovalError(ForcePruneError):
    """A removal of exactly-zero units changed the model's outputs: the units were mapped
    wrongly (a layout that does not fit the module). ``unit_sets`` and ``layouts`` name the
    culprits, ``error`` is the relative output change; the model is left as it was."""

    def __init__(self, message: str, unit_sets: list[str], layouts: list[str], error: float):
        super().__init__(message)
        self.unit_sets, self.layouts, self.error = unit_sets, layouts, error


@dataclass
class RemovalPlan:
    """What to remove from one unit set: ``(G,)`` bool masks."""

    unit_set: UnitSet
    remove: torch.Tensor
    fold: torch.Tensor  # units whose constant output must be folded into consumers
    #: every removed unit met an exactness condition (False: cut on purpose, e.g. by a budget)
    exact: bool = True


def consumers_zero(us: UnitSet, tolerance: float = 0.0) -> torch.Tensor:
    """``(G,)`` bool: units read by at least one consumer, all with weights ``<= tolerance``."""
    if not us.has_role(CONSUMER):
        return torch.zeros(us.size, dtype=torch.bool)
    return us.max_abs(CONSUMER) <= tolerance


def writers_zero(us: UnitSet, tolerance: float = 0.0) -> torch.Tensor:
    """``(G,)`` bool: units whose producer weights and biases are all ``<= tolerance`` (the
    channel is exactly zero wherever it is read)."""
    out = producers_zero(us, tolerance)
    for s in us.slices:
        if s.role != CONSUMER and s.param_name == "bias":
            m = s.position_max_abs().float().cpu()
            out &= torch.zeros(us.size).scatter_reduce(0, s.unit.cpu(), m, "amax") <= tolerance
    return out


def removable_units(us: UnitSet, tolerance: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(remove, fold)`` masks: units that can go (by the set's ``removal`` rule), and those
    among them needing a bias fold."""
    none = torch.zeros(us.size, dtype=torch.bool)
    if us.removal == "writers":
        return writers_zero(us, tolerance), none
    silent = consumers_zero(us, tolerance)
    if us.removal == "consumers":
        return silent, none
    constant = producers_zero(us, tolerance) & ~silent
    if not us.has_role(CONSUMER):
        constant &= False
    return silent | constant, constant


def keep_one(remove: torch.Tensor) -> torch.Tensor:
    """Never remove every unit of a set: keep the first (the pivot side) if all would go."""
    if bool(remove.all()):
        remove = remove.clone()
        remove[0] = False
    return remove


def plan_removal(unit_sets: list[UnitSet], force: Force, widths: dict[str, int] | None, tolerance: float,
                 budget: Budget | None, fraction: Callable[[list[torch.Tensor]], float],
                 uniform: bool = False, unit_scores: list[torch.Tensor] | None = None
                 ) -> tuple[list[RemovalPlan], list[str]]:
    """What a removal takes from each unit set, and notes for its report.

    Zero mode (``widths=None``): the units that are exactly zero (or ``<= tolerance``); with
    ``uniform``, only as many from each set as every set of its kind and size has
    (:func:`~forceprune.budget_selection.equalize`); with a ``budget``, completed by
    :func:`~forceprune.budget_selection.complete_budget` (``fraction`` gives the kept cost
    fraction of a set of removal masks). Width mode: in each set named in ``widths``, every
    unit but the ``k`` with the largest force-weighted norm. A set always keeps one unit. A
    plan is ``exact`` when it removes only exactly-zero units (zero mode, ``tolerance == 0``).
    ``unit_scores`` (default: :func:`~forceprune.scoring.scores` of ``force``) rank the units
    that uniform widths and a budget's completion take first."""
    unit_scores = unit_scores if unit_scores is not None else [scores(force, us) for us in unit_sets]
    classes = uniform_classes([(us.kind, us.size) for us in unit_sets]) if uniform else []
    notes: list[str] = []
    if widths is None:
        pairs = [removable_units(us, tolerance) for us in unit_sets]
        zero, folds = [r for r, _ in pairs], [f for _, f in pairs]
        removes = equalize(zero, classes, unit_scores, "min") if classes else zero
        if sum(int(r.sum()) for r in removes) < sum(int(r.sum()) for r in zero):
            notes.append("uniform: kept some zero units so that every unit set of a kind keeps the same width")
    else:
        unknown = sorted(set(widths) - {us.name for us in unit_sets})
        if unknown:
            raise ForcePruneError(f"widths names unknown unit sets {unknown}; valid names: {[us.name for us in unit_sets]}.")
        removes = [weakest_tail(force, us, _width(us.name, widths.get(us.name, us.size))) for us in unit_sets]
        zero = folds = [torch.zeros(us.size, dtype=torch.bool) for us in unit_sets]
    if widths is None and budget is not None:
        removes, more = complete_budget(removes, unit_scores, fraction, budget, classes)
        notes += more
    plans = []
    for us, rem, fold, z in zip(unit_sets, removes, folds, zero):
        if bool(rem.all()):
            notes.append(f"{us.name}: every unit could be removed; kept one so the layer still exists")
            rem = keep_one(rem)
        exact = widths is None and tolerance == 0 and not bool((rem & ~z).any())
        plans.append(RemovalPlan(us, rem, fold & rem, exact))
    return plans, notes


def _width(name: str, k) -> int:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ForcePruneError(f"width for {name!r} must be an int >= 1, got {k!r} (a layer keeps at least one unit).")
    return k


def _channel_values(x: torch.Tensor, module: nn.Module, index: torch.Tensor) -> torch.Tensor:
    """Input values of ``module`` at channel positions ``index``: shape ``(n, samples)``."""
    if isinstance(module, nn.Linear) or is_conv1d(module):
        flat = x.reshape(-1, x.shape[-1])
        return flat[:, index].T
    return x.transpose(0, 1).reshape(x.shape[1], -1)[index]


def measure_constants(model: nn.Module, plans: list[RemovalPlan], calibration_inputs) -> dict:
    """Run the model once; for each (consumer slice, unit) to fold, the constant it reads.

    Returns ``{(id(slice), unit): (constant, spread)}`` where ``spread`` is the largest
    deviation from the constant seen on the calibration inputs.
    """
    wanted = {}
    for plan in plans:
        if not bool(plan.fold.any()):
            continue
        for s in plan.unit_set.slices:
            if s.role == CONSUMER:
                wanted.setdefault(s.module, []).append((s, plan.fold))
    seen: dict[nn.Module, torch.Tensor] = {}

    def record(mod, args, kwargs):
        first = (list(args) + list(kwargs.values()) or [None])[0]
        if torch.is_tensor(first):
            seen.setdefault(mod, first.detach())

    hooks = [m.register_forward_pre_hook(record, with_kwargs=True) for m in wanted]
    try:
        with eval_mode(model), no_kv_cache(model), torch.no_grad():
            run_model(model, calibration_inputs)
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for module, entries in wanted.items():
        if module not in seen:  # called functionally (e.g. nn.MultiheadAttention's out_proj): unmeasured
            continue
        x = seen[module].float()
        for s, fold in entries:
            sel = fold[s.unit]
            vals = _channel_values(x, module, s.index[sel])
            const = vals.mean(1)
            spread = (vals - const[:, None]).abs().amax(1)
            for pos, c, sp in zip(s.index[sel].tolist(), const.tolist(), spread.tolist()):
                out[(id(s), pos)] = (c, sp)
    return out


def drop_unmeasured(plans: list[RemovalPlan], constants: dict) -> list[str]:
    """Keep units whose constant could not be measured at some consumer (a consumer called
    functionally, whose inputs no hook sees): removing them could change the function."""
    notes = []
    for plan in plans:
        for s in plan.unit_set.slices:
            if s.role != CONSUMER:
                continue
            for pos, unit in zip(s.index.tolist(), s.unit.tolist()):
                if plan.fold[unit] and (id(s), pos) not in constants:
                    plan.fold[unit] = False
                    plan.remove[unit] = False
                    notes.append(f"{plan.unit_set.name}: kept unit {unit}: its constant output into {s.module_name} "
                                 "could not be measured (the layer is called functionally)")
    return sorted(set(notes))


def fold_constants(plans: list[RemovalPlan], constants: dict, model: nn.Module | None = None) -> list[str]:
    """Add each removed channel's constant contribution to its consumers' biases (consumers
    looked up by name in ``model`` when given: a copy of the model the plans were made on).

    Returns warnings for folds that are not exact (zero-padded conv consumers with c != 0);
    their plans are marked not ``exact``.
    """
    warnings = []
    with torch.no_grad():
        for plan in plans:
            for s in plan.unit_set.slices:
                if s.role != CONSUMER:
                    continue
                m = s.module if model is None else model.get_submodule(s.module_name)
                for pos in s.index[plan.fold[s.unit]].tolist():
                    c, _ = constants[(id(s), pos)]
                    if c != 0.0 and _fold_one(m, pos, c):
                        plan.exact = False
                        warnings.append(
                            f"{s.module_name}: folded constant {c:.3g} of a removed channel into a zero-padded conv;"
                            " exact inside the image, approximate at its border"
                        )
    return warnings


def _fold_one(m: nn.Module, pos: int, c: float) -> bool:
    """``bias += c * (weights reading input channel pos)``; True when only approximate (a
    zero-padded conv: the border pixels read padding, not ``c``)."""
    if is_conv1d(m):  # weight (in, out)
        m.bias += m.weight[pos] * c
        return False
    if m.bias is None:
        m.bias = nn.Parameter(torch.zeros(m.weight.shape[0], dtype=m.weight.dtype, device=m.weight.device))
    if isinstance(m, nn.Linear):
        m.bias += m.weight[:, pos] * c
        return False
    if getattr(m, "transposed", False):
        m.bias += m.weight[pos].sum(dim=tuple(range(1, m.weight.dim() - 1))) * c
        return False
    per_group = m.weight.shape[1]
    rows = slice(None)
    if m.groups > 1:
        g = pos // per_group
        step = m.out_channels // m.groups
        rows = slice(g * step, (g + 1) * step)
    m.bias[rows] += m.weight[rows, pos % per_group].flatten(1).sum(1) * c
    return any(p != 0 for p in _padding(m))


def _padding(conv: nn.Module) -> tuple:
    p = conv.padding
    if isinstance(p, str):
        return (0,) if p == "valid" else (1,)
    return tuple(p)


def apply_removal(graph, plans: list[RemovalPlan], model: nn.Module) -> dict[str, list[int]]:
    """Remove the planned units; return kept unit indices per unit set.

    Channel groups go through torch-pruning (``graph``: a dependency graph of ``model``; None
    when no plan needs one), provider unit sets (``root_fn is OWN_SURGERY``) through their
    ``on_removed`` alone. Roots and modules are looked up in ``model`` by name, so plans made
    on one model apply to a copy of it (previews, plan replay) as well."""
    kept = {}
    for plan in plans:
        us = plan.unit_set
        idxs = torch.nonzero(plan.remove).flatten().tolist()
        kept[us.name] = [i for i in range(us.size) if i not in set(idxs)]
        if not idxs:
            continue
        if us.root_fn is not OWN_SURGERY:
            if graph is None:
                raise ForcePruneError(f"{us.name}: removing torch-pruning channels needs the model's dependency graph.")
            root = model.get_submodule(us.root_name)
            graph.get_pruning_group(root, us.root_fn, us.root_channels(idxs)).prune()
        if us.on_removed is not None:
            us.on_removed(model, kept[us.name])
    return kept


def needs_graph(plans: list[RemovalPlan]) -> bool:
    """Whether some plan removes torch-pruning channels (provider unit sets need no graph)."""
    return any(bool(p.remove.any()) and p.unit_set.root_fn is not OWN_SURGERY for p in plans)


def exactness_tolerance(model: nn.Module) -> float:
    """Largest relative output change a removal of exact zeros may cause: ``1e-5`` in float32
    (rounding of sums over fewer terms is ~1e-7), ``16 * eps`` of a 16-bit dtype."""
    p = next((p for p in model.parameters() if p.is_floating_point()), None)
    if p is None or p.dtype in (torch.float32, torch.float64):
        return 1e-5
    return 16 * float(torch.finfo(p.dtype).eps)


def remove(model: nn.Module, graph, plans: list[RemovalPlan], inputs, calibration_inputs, *, mode: str = "zero",
           notes: list[str] | None = None, check: bool = True) -> PruneReport:
    """Carry out ``plans`` on ``model`` in place and report what changed.

    ``inputs`` (a batch of one) count MACs per sample; ``calibration_inputs`` measure the
    constants to fold and the output error (``max|y_after - y_before| / max|y_before|``).
    The model runs in eval mode throughout; ``requires_grad`` flags, which torch-pruning
    resets to True on the parameters it rebuilds, are restored. With ``check`` (zero mode), a
    copy of the model is kept while its outputs are compared: if removing exact zeros changed
    them by more than :func:`exactness_tolerance` (and by more than :data:`FLOAT64_TOLERANCE`
    when re-measured in float64), the model is restored and :class:`LossyRemovalError` raised."""
    warnings = list(notes or [])
    with eval_mode(model), no_kv_cache(model):
        with torch.no_grad():
            y_before = run_model(model, calibration_inputs)
        macs_before, params_before = count_macs_params(model, inputs)
        per_layer_before = layer_macs(model, inputs)
        constants = measure_constants(model, plans, calibration_inputs)
        warnings += drop_unmeasured(plans, constants)
        checked = check and mode == "zero" and any(p.exact and bool(p.remove.any()) for p in plans)
        backup = copy.deepcopy(model) if checked else None
        ties = shared_parameters(model)
        warnings += fold_constants(plans, constants)
        grad_flags = {n: p.requires_grad for n, p in model.named_parameters()}
        try:
            kept = apply_removal(graph, plans, model)
            for n, p in model.named_parameters():
                p.requires_grad_(grad_flags.get(n, p.requires_grad))
            with torch.no_grad():
                y_after = run_model(model, calibration_inputs)
        except Exception:  # a surgery that broke the model: give it back as it was
            if backup is not None:
                restore(model, backup)
            raise
        error = output_error(y_before, y_after)
        if backup is not None:
            warnings += _check_lossless(model, backup, plans, constants, calibration_inputs, y_before, error)
        check_ties(model, ties, backup)
        macs_after, params_after = count_macs_params(model, inputs)
        per_layer_after = layer_macs(model, inputs)
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
    return PruneReport(
        mode=mode,
        macs_before=macs_before,
        macs_after=macs_after,
        params_before=params_before,
        params_after=params_after,
        max_output_error=error,
        layers=layers,
        layer_macs=[
            {"layer": n, "macs_before": v, "macs_after": per_layer_after.get(n, 0)} for n, v in per_layer_before.items()
        ],
        kept=kept,
        warnings=warnings,
    )


def output_error(before, after) -> float:
    """Largest absolute difference relative to the largest absolute output (both flattened)."""
    a = torch.cat([t.detach().double().flatten() for t in flatten_tensors(before)])
    b = torch.cat([t.detach().double().flatten() for t in flatten_tensors(after)])
    if a.shape != b.shape:
        return float("inf")
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-12))


# ---------------------------------------------------------------------------------------------
# the lossless check
# ---------------------------------------------------------------------------------------------
#: Largest relative change of a removal of exact zeros re-measured in float64: rounding there is
#: ~1e-15, float32-folded constants ~1e-7; a wrong mapping changes float64 outputs as much (>= 1e-5).
FLOAT64_TOLERANCE = 1e-6


def _check_lossless(model: nn.Module, backup: nn.Module, plans: list[RemovalPlan], constants: dict, inputs,
                    y_before, error: float) -> list[str]:
    """Raise :class:`LossyRemovalError` (after restoring ``model`` from ``backup``) when the
    exact plans changed the outputs; return warnings for a change that was rounding. Above the
    float32 :func:`exactness_tolerance` the exact plans are redone on a float64 copy of
    ``backup``: within :data:`FLOAT64_TOLERANCE` the units were silent and float32 rounding grew
    with depth (a warning); otherwise each exact plan alone (float64) finds the ones at fault."""
    tol = exactness_tolerance(model)
    if error <= tol:
        return []
    exact = [p for p in plans if p.exact and bool(p.remove.any())]
    if len(exact) < sum(bool(p.remove.any()) for p in plans) and _error_of(backup, exact, constants, inputs, y_before) <= tol:
        return []  # the change comes from units cut on purpose (a budget, an approximate fold)
    reference = copy.deepcopy(backup).double()
    inputs64 = to_float64(inputs)
    with eval_mode(reference), no_kv_cache(reference), torch.no_grad():
        y64 = run_model(reference, inputs64)
    error64 = _error_of(reference, exact, constants, inputs64, y64)
    if error64 <= FLOAT64_TOLERANCE:
        return [
            f"removing exactly-zero units changed the float32 outputs by {error:.2e} (relative; above the {tol:.0e} "
            f"bound) but float64 outputs by only {error64:.1e}: float32 rounding through the model's depth, not a "
            "lossy removal."
        ]
    culprits = [p for p in exact if _error_of(reference, [p], constants, inputs64, y64) > FLOAT64_TOLERANCE] or exact
    restore(model, backup)
    sets = [p.unit_set.name for p in culprits]
    layouts = sorted({p.unit_set.layout for p in culprits})
    raise LossyRemovalError(
        f"removing exactly-zero units changed the outputs by {error:.2e} (relative; at most {tol:.0e} is rounding, "
        f"and {error64:.1e} in float64): unit set(s) {sets} (layout {', '.join(repr(x) for x in layouts)}) map units "
        "onto weights that are not what the module computes with, so zero units were not silent. The model is "
        "unchanged. Fix or unregister the layout (forceprune.attention.unregister_attention_layout), or exclude the "
        "module with ignored_layers.",
        sets, layouts, error,
    )


def _error_of(backup: nn.Module, plans: list[RemovalPlan], constants: dict, inputs, y_before) -> float:
    """Relative output change of carrying out ``plans`` (with their folds) on a copy of ``backup``."""
    trial = copy.deepcopy(backup)
    graph = model_graph(trial, inputs) if needs_graph(plans) else None
    fold_constants(plans, constants, trial)
    with eval_mode(trial), no_kv_cache(trial), torch.no_grad():
        apply_removal(graph, plans, trial)
        return output_error(y_before, run_model(trial, inputs))
