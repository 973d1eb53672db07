"""Keep training after removal without rebuilding the optimizer.

Removal replaces pruned ``nn.Parameter`` objects (torch-pruning builds new, smaller ones), so
an optimizer built before removal holds stale parameters and state (SGD momentum, Adam
``exp_avg``/``exp_avg_sq``) of the old shapes. :func:`prune_with_optimizer` wraps
:meth:`ForcePruner.prune` and repairs the optimizer in place:

1. **Before** removal it snapshots every parameter by ``(module name, parameter name)`` (stable
   across surgery: torch-pruning swaps parameters, never modules), its ``requires_grad``
   flag, and the unit sets' slices: for each parameter and dimension, which positions belong
   to which unit of which unit set.
2. **After** removal the report's ``kept`` units give, per unit set, the removed units; their
   slices give the removed positions along each dimension of each parameter, in the
   original coordinates (unit sets are disjoint channel spaces, so positions removed by
   different sets combine by union). Every state tensor shaped like its parameter is sliced
   with ``index_select`` along each such dimension; scalar state (Adam's ``step``) is kept.
3. The new parameter objects replace the old ones in ``param_groups`` and ``optimizer.state``;
   ``requires_grad`` flags are restored (torch-pruning resets them to ``True``). Parameters
   that removal *created* -- a bias made by constant folding on a layer that had none, the
   projections of a replaced module (``nn.MultiheadAttention`` becomes
   ``PrunedMultiheadAttention``) -- join the group that held their module's (or nearest
   ancestor module's) parameters, with fresh state; the replaced parameters leave.

Each sliced state is checked against the new parameter's shape; should they ever disagree (a
coupling the unit sets do not describe), that parameter's state is reset, with a warning,
rather than guessed. Parameters the optimizer does not hold are never added to it.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Iterable

import torch
import torch.nn as nn

__all__ = ["prune_with_optimizer", "OptimizerSnapshot", "snapshot", "restore"]


@dataclass
class OptimizerSnapshot:
    """What :func:`restore` needs; taken by :func:`snapshot` before removal."""

    keys: dict[int, tuple[str, str]]  # id(param) -> (module name, param name)
    params: dict[tuple[str, str], torch.Tensor]  # key -> the old parameter object
    requires_grad: dict[tuple[str, str], bool]
    #: unit-set name -> (size, [(key, dim, index, unit, group_rows)])
    slices: dict[str, tuple[int, list]] = field(default_factory=dict)


def _param_keys(model: nn.Module) -> dict[tuple[str, str], torch.Tensor]:
    out = {}
    for mname, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            out.setdefault((mname, pname), p)
    return out


def snapshot(pruner) -> OptimizerSnapshot:
    """Record parameter identities, flags and unit-set slices of ``pruner.model`` now."""
    params = _param_keys(pruner.model)
    keys = {id(p): k for k, p in params.items()}
    slices = {}
    for us in pruner.unit_sets:
        rows = []
        for s in us.slices:
            key = keys.get(id(s.param))
            if key is not None:
                rows.append((key, s.dim, s.index.clone().cpu(), s.unit.clone().cpu(), s.group_rows))
        slices[us.name] = (us.size, rows)
    return OptimizerSnapshot(keys, params, {k: p.requires_grad for k, p in params.items()}, slices)


def _kept_positions(snap: OptimizerSnapshot, kept: dict[str, list[int]]) -> tuple[dict, set]:
    """``{key: {dim: removed positions}}`` and the keys whose slicing is not index-exact."""
    removed: dict[tuple[str, str], dict[int, set]] = {}
    inexact: set = set()
    for name, (size, rows) in snap.slices.items():
        if name not in kept:
            continue
        gone = torch.ones(size, dtype=torch.bool)
        gone[torch.as_tensor(list(kept[name]), dtype=torch.long)] = False
        if not bool(gone.any()):
            continue
        for key, dim, index, unit, group_rows in rows:
            if group_rows:
                inexact.add(key)
                continue
            pos = index[gone[unit]].tolist()
            if pos:
                removed.setdefault(key, {}).setdefault(dim, set()).update(pos)
    return removed, inexact


def _slice(t: torch.Tensor, removed: dict[int, set]) -> torch.Tensor:
    for dim, gone in sorted(removed.items()):
        keep = [i for i in range(t.shape[dim]) if i not in gone]
        t = t.index_select(dim, torch.as_tensor(keep, dtype=torch.long, device=t.device))
    return t.contiguous()


def restore(snap: OptimizerSnapshot, model: nn.Module, kept: dict[str, list[int]], optimizers: Iterable[torch.optim.Optimizer]) -> None:
    """Swap new parameters into ``optimizers`` with sliced state; restore ``requires_grad``."""
    new_params = _param_keys(model)
    removed, inexact = _kept_positions(snap, kept)
    for key, flag in snap.requires_grad.items():
        p = new_params.get(key)
        if p is not None and p.requires_grad != flag:
            p.requires_grad_(flag)
    for opt in optimizers:
        if opt is None:
            continue
        owners: dict[str, dict] = {}  # module name -> the group that held its parameters
        dropped: list[str] = []
        for group in opt.param_groups:
            params = []
            for old in group["params"]:
                key = snap.keys.get(id(old))
                if key is None or snap.params.get(key) is not old:
                    params.append(old)  # not a parameter of the pruned model: untouched
                    continue
                owners.setdefault(key[0], group)
                new = new_params.get(key)
                if new is None:  # its module was replaced (e.g. attention): new params adopted below
                    if opt.state.pop(old, None):
                        dropped.append(".".join(filter(None, key)))
                    continue
                params.append(new)
                if new is old:
                    continue
                state = opt.state.pop(old, None)
                if not state:
                    continue
                fresh, ok = {}, key not in inexact
                for name, value in state.items():
                    if torch.is_tensor(value) and value.shape == old.shape and value.dim() > 0:
                        value = _slice(value, removed.get(key, {}))
                        ok &= value.shape == new.shape
                    fresh[name] = value
                if ok:
                    opt.state[new] = fresh
                else:
                    dropped.append(".".join(filter(None, key)))
            group["params"] = params
        _adopt_new_params(opt, snap, new_params, owners)
        if dropped:
            warnings.warn(
                f"optimizer state of {', '.join(dropped)} could not be carried over to the pruned shapes (a module "
                "was replaced, or a coupling the unit sets do not describe); it was reset, as for new parameters.",
                stacklevel=3,
            )


def _adopt_new_params(opt: torch.optim.Optimizer, snap: OptimizerSnapshot, new_params: dict, owners: dict) -> None:
    """Add parameters that removal created (a bias made by folding, the projections of a
    replaced attention module) to the group that held the parameters of the same module or
    of its nearest ancestor module; parameters with no such owner are left out."""
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    for key, p in new_params.items():
        if key in snap.params or id(p) in in_opt:
            continue
        parts = key[0].split(".") if key[0] else []
        group = None
        for n in range(len(parts), -1, -1):
            group = owners.get(".".join(parts[:n]))
            if group is not None:
                break
        if group is not None and (n > 0 or not parts):
            group["params"].append(p)
            in_opt.add(id(p))


def prune_with_optimizer(pruner, optimizer, **prune_kwargs):
    """``pruner.prune(**prune_kwargs)``, then repair ``optimizer`` (one or a list) in place:
    new parameters swapped in, momentum/Adam state sliced to the new shapes, ``requires_grad``
    flags restored. Returns the :class:`~forceprune.PruneReport`."""
    optimizers = list(optimizer) if isinstance(optimizer, (list, tuple)) else [optimizer]
    snap = snapshot(pruner)
    report = pruner.prune(**prune_kwargs)
    restore(snap, pruner.model, report.kept, optimizers)
    return report
