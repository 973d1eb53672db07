"""Lossless removal: physically delete units that are exactly zero.

A unit can go without changing the model's function when either

* every consumer reads it with all-zero weights (nobody listens), or
* its producer weights are all zero, so the channel carries a constant ``c`` (``act(BN beta)``
  or ``act(bias)``, usually 0). The constant is measured on calibration inputs at each
  consumer's input and folded into the consumer's bias:
  ``linear: b += W[:, j] c``; ``conv: b += sum_{kh,kw} W[:, j] c`` (exact when the consumer
  has no zero padding or ``c == 0``; otherwise the border error is measured and reported).

Surgery itself is torch-pruning's: one dependency group per unit set.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from typing import Callable

from ._torch import eval_mode, flatten_tensors, run_model
from .budget import Budget
from .budget_selection import complete_budget
from .capture import producers_zero
from .errors import ForcePruneError
from .forces import Force
from .metrics import count_macs_params, layer_macs
from .report import PruneReport
from .scoring import scores, weakest_tail
from .units import CONSUMER, UnitSet


@dataclass
class RemovalPlan:
    """What to remove from one unit set: ``(G,)`` bool masks."""

    unit_set: UnitSet
    remove: torch.Tensor
    fold: torch.Tensor  # units whose constant output must be folded into consumers


def consumers_zero(us: UnitSet, tolerance: float = 0.0) -> torch.Tensor:
    """``(G,)`` bool: units read by at least one consumer, all with weights ``<= tolerance``."""
    if not us.has_role(CONSUMER):
        return torch.zeros(us.size, dtype=torch.bool)
    return us.max_abs(CONSUMER) <= tolerance


def removable_units(us: UnitSet, tolerance: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(remove, fold)`` masks: units that can go, and those among them needing a bias fold."""
    silent = consumers_zero(us, tolerance)
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
                 budget: Budget | None, fraction: Callable[[list[torch.Tensor]], float]) -> tuple[list[RemovalPlan], list[str]]:
    """What a removal takes from each unit set, and notes for its report.

    Zero mode (``widths=None``): the units that are exactly zero (or ``<= tolerance``); with a
    ``budget``, completed by :func:`~forceprune.budget_selection.complete_budget` (``fraction``
    gives the kept cost fraction of a set of removal masks). Width mode: in each set named in
    ``widths``, every unit but the ``k`` with the largest force-weighted norm. A set always keeps
    one unit."""
    if widths is None:
        pairs = [removable_units(us, tolerance) for us in unit_sets]
        removes, folds = [r for r, _ in pairs], [f for _, f in pairs]
    else:
        unknown = sorted(set(widths) - {us.name for us in unit_sets})
        if unknown:
            raise ForcePruneError(f"widths names unknown unit sets {unknown}; valid names: {[us.name for us in unit_sets]}.")
        removes = [weakest_tail(force, us, _width(us.name, widths.get(us.name, us.size))) for us in unit_sets]
        folds = [torch.zeros(us.size, dtype=torch.bool) for us in unit_sets]
    notes: list[str] = []
    if widths is None and budget is not None:
        removes, notes = complete_budget(removes, [scores(force, us) for us in unit_sets], fraction, budget)
    plans = []
    for us, rem, fold in zip(unit_sets, removes, folds):
        if bool(rem.all()):
            notes.append(f"{us.name}: every unit could be removed; kept one so the layer still exists")
            rem = keep_one(rem)
        plans.append(RemovalPlan(us, rem, fold & rem))
    return plans, notes


def _width(name: str, k) -> int:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ForcePruneError(f"width for {name!r} must be an int >= 1, got {k!r} (a layer keeps at least one unit).")
    return k


def _channel_values(x: torch.Tensor, module: nn.Module, index: torch.Tensor) -> torch.Tensor:
    """Input values of ``module`` at channel positions ``index``: shape ``(n, samples)``."""
    if isinstance(module, nn.Linear):
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
    hooks = [m.register_forward_pre_hook(lambda mod, args: seen.setdefault(mod, args[0].detach())) for m in wanted]
    try:
        with eval_mode(model), torch.no_grad():
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


def fold_constants(plans: list[RemovalPlan], constants: dict) -> list[str]:
    """Add each removed channel's constant contribution to its consumers' biases.

    Returns warnings for folds that are not exact (zero-padded conv consumers with c != 0).
    """
    warnings = []
    with torch.no_grad():
        for plan in plans:
            for s in plan.unit_set.slices:
                if s.role != CONSUMER:
                    continue
                m = s.module
                for pos in s.index[plan.fold[s.unit]].tolist():
                    c, _ = constants[(id(s), pos)]
                    if c == 0.0:
                        continue
                    if m.bias is None:
                        m.bias = nn.Parameter(torch.zeros(m.weight.shape[0], dtype=m.weight.dtype, device=m.weight.device))
                    if isinstance(m, nn.Linear):
                        m.bias += m.weight[:, pos] * c
                        continue
                    if getattr(m, "transposed", False):
                        m.bias += m.weight[pos].sum(dim=tuple(range(1, m.weight.dim() - 1))) * c
                        continue
                    per_group = m.weight.shape[1]
                    rows = slice(None)
                    if m.groups > 1:
                        g = pos // per_group
                        step = m.out_channels // m.groups
                        rows = slice(g * step, (g + 1) * step)
                    m.bias[rows] += m.weight[rows, pos % per_group].flatten(1).sum(1) * c
                    if any(p != 0 for p in _padding(m)):
                        warnings.append(
                            f"{s.module_name}: folded constant {c:.3g} of a removed channel into a zero-padded conv;"
                            " exact inside the image, approximate at its border"
                        )
    return warnings


def _padding(conv: nn.Module) -> tuple:
    p = conv.padding
    if isinstance(p, str):
        return (0,) if p == "valid" else (1,)
    return tuple(p)


def apply_removal(graph, plans: list[RemovalPlan], model: nn.Module) -> dict[str, list[int]]:
    """Remove the planned units with torch-pruning; return kept root indices per unit set.

    ``graph`` is a dependency graph of ``model``; roots are looked up in ``model`` by name, so
    plans made on one model apply to a copy of it (previews) as well."""
    kept = {}
    for plan in plans:
        us = plan.unit_set
        idxs = torch.nonzero(plan.remove).flatten().tolist()
        kept[us.name] = [i for i in range(us.size) if i not in set(idxs)]
        if idxs:
            root = model.get_submodule(us.root_name)
            graph.get_pruning_group(root, us.root_fn, us.root_channels(idxs)).prune()
            if us.on_removed is not None:
                us.on_removed(model, kept[us.name])
    return kept


def remove(model: nn.Module, graph, plans: list[RemovalPlan], inputs, calibration_inputs, *, mode: str = "zero",
           notes: list[str] | None = None) -> PruneReport:
    """Carry out ``plans`` on ``model`` in place and report what changed.

    ``inputs`` (a batch of one) count MACs per sample; ``calibration_inputs`` measure the
    constants to fold and the output error (``max|y_after - y_before| / max|y_before|``).
    The model runs in eval mode throughout; ``requires_grad`` flags, which torch-pruning
    resets to True on the parameters it rebuilds, are restored."""
    warnings = list(notes or [])
    with eval_mode(model):
        with torch.no_grad():
            y_before = run_model(model, calibration_inputs)
        macs_before, params_before = count_macs_params(model, inputs)
        per_layer_before = layer_macs(model, inputs)
        constants = measure_constants(model, plans, calibration_inputs)
        warnings += drop_unmeasured(plans, constants)
        warnings += fold_constants(plans, constants)
        grad_flags = {n: p.requires_grad for n, p in model.named_parameters()}
        kept = apply_removal(graph, plans, model)
        for n, p in model.named_parameters():
            p.requires_grad_(grad_flags.get(n, p.requires_grad))
        with torch.no_grad():
            y_after = run_model(model, calibration_inputs)
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
        max_output_error=output_error(y_before, y_after),
        layers=layers,
        layer_macs=[
            {"layer": n, "macs_before": v, "macs_after": per_layer_after.get(n, 0)} for n, v in per_layer_before.items()
        ],
        kept=kept,
        warnings=warnings,
    )


def output_error(before, after) -> float:
    """Largest absolute difference relative to the largest absolute output (both flattened)."""
    a = torch.cat([t.detach().float().flatten() for t in flatten_tensors(before)])
    b = torch.cat([t.detach().float().flatten() for t in flatten_tensors(after)])
    if a.shape != b.shape:
        return float("inf")
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-12))
