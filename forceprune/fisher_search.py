"""A post-training baseline that needs no retraining: Fisher-based mask search with mask
rearrangement, in the style of Kwon et al. 2022 ("A Fast Post-Training Pruning Framework for
Transformers"), on forceprune's unit sets (attention heads, FFN neurons, channels).

1. **Fisher importance.** Each unit ``u`` gets a mask ``m_u`` (1 = kept) multiplying its
   output; at ``m = 1`` the gradient of the loss with respect to it is
   ``g_u = sum over u's consumer columns of <W, dL/dW>`` (scaling a consumer's input column
   scales the unit's contribution), so no mask needs to be inserted in the model. Over
   calibration batches ``b`` the empirical Fisher information is ``F_uv = sum_b g_u g_v``;
   removing a set ``R`` of units costs about ``0.5 * 1_R^T F 1_R`` in loss.
2. **Mask search.** Keep, in every unit set, a prefix of its units sorted by ``F_uu``. With
   two kinds of units of (nearly) uniform MACs per kind -- heads and neurons, Kwon's case --
   the best split of the MACs budget between them is found exactly by trying every number of
   heads; otherwise units are taken greedily by importance per MACs.
3. **Mask rearrangement.** Within each unit set, swap a kept and a removed unit while that
   lowers ``1_R^T F 1_R`` (the block-diagonal Fisher: correlations inside the set), one swap
   at a time, until no swap helps.

What is left out of Kwon's pipeline: mask *tuning* (a least-squares rescaling of the kept
units' outputs); removal here is of whole units with their weights as they are.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn as nn

from ._torch import eval_mode
from .errors import ForcePruneError
from .units import CONSUMER, UnitSet


def unit_mask_gradients(unit_sets: list[UnitSet]) -> list[torch.Tensor]:
    """Per unit set, ``(G,)``: ``dL/dm_u`` at ``m = 1`` from the gradients in the parameters'
    ``.grad`` (after one ``backward()``)."""
    out = []
    for us in unit_sets:
        g = torch.zeros(us.size, dtype=torch.float64)
        for s in us.slices:
            if s.role != CONSUMER or s.param.grad is None:
                continue
            per_position = (s.elements().detach().double() * s.elements(s.param.grad).detach().double()).sum(1)
            g.index_add_(0, s.unit.cpu(), per_position.cpu())
        out.append(g)
    return out


def fisher_information(model: nn.Module, unit_sets: list[UnitSet], batches: Iterable, loss_of: Callable,
                       max_batches: int) -> list[torch.Tensor]:
    """Per unit set, the ``(G, G)`` empirical Fisher ``sum_b g g^T`` over up to ``max_batches``
    calibration batches (``loss_of(model, batch)`` -> scalar loss). The model's weights and
    ``.grad`` are left as they were; dropout is off (eval mode)."""
    saved = {p: (p.grad.clone() if p.grad is not None else None) for p in model.parameters()}
    fisher = [torch.zeros(us.size, us.size, dtype=torch.float64) for us in unit_sets]
    with eval_mode(model):
        for i, batch in enumerate(batches):
            if i >= max_batches:
                break
            model.zero_grad(set_to_none=True)
            loss_of(model, batch).backward()
            for f, g in zip(fisher, unit_mask_gradients(unit_sets)):
                f += torch.outer(g, g)
    for p, grad in saved.items():
        p.grad = grad
    return fisher


def removal_masks(model: nn.Module, unit_sets: list[UnitSet], example_inputs, target_macs: float, batches: Iterable,
                  loss_of: Callable, max_batches: int,
                  kept_width: Callable[[int, int], int] | None = None) -> list[torch.Tensor]:
    """Per unit set, the ``(G,)`` bool mask of the units to remove for the model to keep
    ``target_macs`` of its MACs (per sample of ``example_inputs``): Fisher information on up to
    ``max_batches`` calibration batches, the mask search, then the rearrangement. The search's
    unit costs leave out attention's matrix products, so its budget is bisected on the exact
    MACs of the pruned model (how many units each set keeps fixes them). ``kept_width(kept,
    size)`` (optional) turns the search's count into the width a set keeps (a budget's
    ``min_width`` and ``round_to``: :func:`forceprune.budget_selection.kept_width`), inside the
    bisection, so the rounded widths meet the target. The model is unchanged."""
    from .metrics import count_macs_params
    from .preview import counts_if_removed
    from .scoring import unit_costs

    fisher = fisher_information(model, unit_sets, batches, loss_of, max_batches)
    importance = [torch.diagonal(f) for f in fisher]
    costs = unit_costs(model, unit_sets, example_inputs)
    kinds = [us.kind for us in unit_sets]
    dense = count_macs_params(model, example_inputs)[0]

    def widths(kept: list[int]) -> list[int]:
        return kept if kept_width is None else [kept_width(k, us.size) for k, us in zip(kept, unit_sets)]

    def fits(budget: float) -> tuple[bool, list[int]]:
        kept = widths(search(importance, costs, kinds, budget))
        masks = [_prefix(imp, k) for imp, k in zip(importance, kept)]
        return counts_if_removed(model, unit_sets, example_inputs, masks)[0] <= target_macs * dense, kept

    lo, hi = 0.0, float(dense)
    floor, best = fits(0.0)
    if not floor:
        raise ForcePruneError(f"target_macs={target_macs} is out of reach of the Fisher search with these widths: "
                              "the smallest it may keep (min_width, round_to) costs more. Raise target_macs or "
                              "lower the budget's min_width / round_to.")
    for _ in range(20):
        mid = (lo + hi) / 2
        ok, kept = fits(mid)
        lo, hi, best = (mid, hi, kept) if ok else (lo, mid, best)
    return [rearrange(f, k) for f, k in zip(fisher, best)]


def _prefix(importance: torch.Tensor, keep: int) -> torch.Tensor:
    """``(G,)`` removal mask keeping the ``keep`` most important units."""
    removed = torch.ones(len(importance), dtype=torch.bool)
    removed[torch.argsort(importance, descending=True, stable=True)[:keep]] = False
    return removed


def search(importance: list[torch.Tensor], costs: list[float], kinds: list[str], budget: float) -> list[int]:
    """Units kept per set (a prefix by importance) maximising the kept importance with total
    cost ``<= budget``; ``costs[k]`` is the cost of one unit of set ``k`` (every set keeps one unit)."""
    order = [torch.argsort(imp, descending=True, stable=True) for imp in importance]
    floor = sum(costs)  # one unit per set
    if budget <= floor:
        return [1] * len(importance)
    types = sorted(set(kinds))
    by_kind = {k: [i for i, kind in enumerate(kinds) if kind == k] for k in types}
    uniform = len(types) == 2 and all(max(costs[i] for i in ids) <= 1.05 * min(costs[i] for i in ids) for ids in by_kind.values())
    if uniform:
        return _two_kinds(importance, order, costs, by_kind, budget)
    return _greedy(importance, order, costs, budget)


def _ranked(importance, order, ids) -> list[tuple[float, int, int]]:
    """(importance, set, rank) of every unit beyond each set's first, best first."""
    return sorted(((float(importance[k][order[k][r]]), k, r) for k in ids for r in range(1, len(order[k]))), reverse=True)


def _two_kinds(importance, order, costs, by_kind, budget) -> list[int]:
    """Kwon's search: heads and neurons each of one cost; try every number of units of the
    first kind and fill the rest of the budget with the best units of the second."""
    (ka, ia), (kb, ib) = by_kind.items()
    ca, cb = sum(costs[i] for i in ia) / len(ia), sum(costs[i] for i in ib) / len(ib)
    ra, rb = _ranked(importance, order, ia), _ranked(importance, order, ib)
    base = sum(costs)
    prefix_a, prefix_b = _cumsum([r[0] for r in ra]), _cumsum([r[0] for r in rb])
    best, best_n = -1.0, (0, 0)
    for na in range(len(ra) + 1):
        left = budget - base - na * ca
        if left < 0:
            break
        nb = min(len(rb), int(left // cb))
        score = prefix_a[na] + prefix_b[nb]
        if score > best:
            best, best_n = score, (na, nb)
    kept = [1] * len(importance)
    for (_, k, _), _n in zip(ra[:best_n[0]], range(best_n[0])):
        kept[k] += 1
    for (_, k, _), _n in zip(rb[:best_n[1]], range(best_n[1])):
        kept[k] += 1
    return kept


def _greedy(importance, order, costs, budget) -> list[int]:
    kept, spent = [1] * len(importance), sum(costs)
    candidates = sorted(((float(importance[k][order[k][r]]) / max(costs[k], 1e-12), k, r)
                         for k in range(len(order)) for r in range(1, len(order[k]))), reverse=True)
    for _, k, _ in candidates:
        if spent + costs[k] <= budget:
            kept[k] += 1
            spent += costs[k]
    return kept


def _cumsum(values: list[float]) -> list[float]:
    out = [0.0]
    for v in values:
        out.append(out[-1] + v)
    return out


def rearrange(fisher: torch.Tensor, keep: int, max_swaps: int = 1000) -> torch.Tensor:
    """``(G,)`` bool removal mask keeping ``keep`` units, starting from the top ``keep`` by the
    diagonal and making the best swap of a kept and a removed unit while it lowers
    ``1_R^T F 1_R``. With ``r`` the removal indicator and ``v = F r``, moving unit ``i`` out and
    ``j`` in changes it by ``2 v_i - 2 v_j + F_ii + F_jj - 2 F_ij``."""
    size = fisher.shape[0]
    f = fisher.double()
    removed = torch.ones(size, dtype=torch.bool)
    removed[torch.argsort(torch.diagonal(f), descending=True, stable=True)[:keep]] = False
    diag = torch.diagonal(f)
    for _ in range(max_swaps):
        kept_idx, out_idx = torch.nonzero(~removed).flatten(), torch.nonzero(removed).flatten()
        if not len(kept_idx) or not len(out_idx):
            break
        v = f @ removed.double()
        delta = (2 * v[kept_idx, None] - 2 * v[None, out_idx] + diag[kept_idx, None] + diag[None, out_idx]
                 - 2 * f[kept_idx][:, out_idx])
        best = int(torch.argmin(delta))
        if float(delta.flatten()[best]) >= -1e-12 * max(float(v @ removed.double()), 1e-30):
            break
        i, j = kept_idx[best // len(out_idx)], out_idx[best % len(out_idx)]
        removed[i], removed[j] = True, False
    return removed
