"""Pruning under ``torch.distributed`` / DistributedDataParallel.

Recipe (every rank runs the same code)::

    ddp = DDP(model)
    pruner = fp.ForcePruner(model, example_inputs, optimizer=opt)   # the *underlying* module
    for x, y in loader:                                             # rank-sharded data
        loss = F.cross_entropy(ddp(x), y) + pruner.penalty()
        opt.zero_grad(); loss.backward(); opt.step(); pruner.step()
    report = fp.distributed.prune_in_lockstep(pruner, opt)           # same plan on every rank
    ddp = fp.distributed.rewrap_ddp(ddp)                             # DDP over the new shapes

Why this is correct: DDP averages the task gradients, and the penalty is a function of the
weights alone, which are identical on every rank, so each rank adds the same penalty
gradient and the weights stay identical. Capture is then deterministic too, but a floating-
point difference between ranks (different reduction orders on some backends) could capture
a unit on one rank only; :func:`broadcast_capture_state` makes the captured masks agree
(union over ranks by default, or rank ``src``'s masks) before removal, and
:func:`check_same_plan` verifies that every rank removed the same units.

Plans travel between ranks as JSON bytes in tensors (no pickling).
"""
from __future__ import annotations

import inspect
import json

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from .optim_state import prune_with_optimizer

__all__ = [
    "is_distributed",
    "broadcast_capture_state",
    "broadcast_parameters",
    "gather_plans",
    "check_same_plan",
    "prune_in_lockstep",
    "rewrap_ddp",
]


def is_distributed() -> bool:
    """True when a default process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _comm_device(group=None) -> torch.device:
    backend = dist.get_backend(group)
    if backend == "nccl" and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast_capture_state(pruner, src: int | None = None, group=None) -> int:
    """Make every rank's captured ("dead") unit masks identical; returns units newly captured here.

    ``src=None`` (default): a unit captured on any rank is captured on all (an all-reduce with
    MAX over the masks; capture only ever adds zeros, so this is safe). ``src=k``: rank ``k``'s
    masks are authoritative and replace the others. Newly captured units are zeroed, with
    their optimizer state, exactly as :meth:`ForcePruner.capture` does.
    """
    if not is_distributed():
        return 0
    device = _comm_device(group)
    sizes = torch.tensor([sum(us.size for us in pruner.unit_sets)], device=device)
    lo, hi = sizes.clone(), sizes.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN, group=group)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX, group=group)
    if int(lo) != int(hi):
        raise RuntimeError(
            "ranks have different unit sets; build the same model (and ForcePruner options) on every rank."
        )
    masks = torch.cat([us.dead.to(torch.uint8) for us in pruner.unit_sets]).to(device)
    if src is None:
        dist.all_reduce(masks, op=dist.ReduceOp.MAX, group=group)
    else:
        dist.broadcast(masks, src=src, group=group)
    masks = masks.bool().cpu()
    state = pruner.state_dict()
    new, start = 0, 0
    for us in pruner.unit_sets:
        dead = masks[start : start + us.size]
        start += us.size
        new += int((dead & ~us.dead).sum())
        state["dead"][us.name] = dead
    pruner.load_state_dict(state)  # rebuilds the masks and zeroes params + optimizer state
    return new


def broadcast_parameters(module: torch.nn.Module, src: int = 0, group=None) -> None:
    """Copy rank ``src``'s parameters and buffers to every rank (in place)."""
    if not is_distributed():
        return
    device = _comm_device(group)
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            buf = t.detach().to(device)
            dist.broadcast(buf, src=src, group=group)
            if buf is not t:
                t.copy_(buf.to(t.device))


def _kept(report_or_kept) -> dict:
    kept = getattr(report_or_kept, "kept", report_or_kept)
    return {str(k): [int(i) for i in v] for k, v in kept.items()}


def gather_plans(report_or_kept, group=None) -> list[dict]:
    """Every rank's ``kept`` dict (from a report or a ``{unit set: kept units}`` dict), in rank
    order, on every rank."""
    data = json.dumps(_kept(report_or_kept), sort_keys=True).encode("utf-8")
    if not is_distributed():
        return [json.loads(data)]
    device = _comm_device(group)
    world = dist.get_world_size(group)
    size = torch.tensor([len(data)], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size, group=group)
    longest = max(int(s) for s in sizes)
    buf = torch.zeros(longest, dtype=torch.uint8, device=device)
    buf[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device) if data else buf[:0]
    bufs = [torch.zeros_like(buf) for _ in range(world)]
    dist.all_gather(bufs, buf, group=group)
    return [json.loads(bytes(b[: int(s)].cpu().tolist()).decode("utf-8")) for b, s in zip(bufs, sizes)]


def check_same_plan(report_or_kept, group=None) -> None:
    """Raise ``RuntimeError`` on every rank if any two ranks removed different units."""
    plans = gather_plans(report_or_kept, group)
    for rank, plan in enumerate(plans[1:], start=1):
        if plan != plans[0]:
            diff = sorted(k for k in set(plan) | set(plans[0]) if plan.get(k) != plans[0].get(k))
            raise RuntimeError(
                f"rank {rank} removed different units than rank 0 (unit sets {diff}); call "
                "broadcast_capture_state(pruner) before pruning so every rank has the same captured masks."
            )


def prune_in_lockstep(
    pruner, optimizer=None, group=None, src: int | None = None, sync_weights: bool = True, **prune_kwargs
):
    """Remove units on every rank together: barrier, agree on captured masks, copy rank 0's
    parameters and buffers to all ranks (``sync_weights``: DDP keeps parameters identical but
    BatchNorm running statistics are rank-local, and bias folding reads them), prune (slicing
    ``optimizer`` state if given, see :mod:`forceprune.optim_state`), check every rank removed
    the same units, barrier. Returns the report."""
    if is_distributed():
        dist.barrier(group=group)
        broadcast_capture_state(pruner, src=src, group=group)
        if sync_weights:  # BN running stats are rank-local between DDP forwards; folding reads them
            broadcast_parameters(pruner.model, src=0 if src is None else src, group=group)
    if optimizer is not None:
        report = prune_with_optimizer(pruner, optimizer, **prune_kwargs)
    else:
        report = pruner.prune(**prune_kwargs)
    if is_distributed():
        check_same_plan(report, group)
        dist.barrier(group=group)
    return report


def rewrap_ddp(ddp, **overrides):
    """A new ``DistributedDataParallel`` around ``ddp.module`` with the same settings (DDP's
    buckets are sized at construction, so it must be rebuilt after removal changed shapes)."""
    accepted = inspect.signature(DDP.__init__).parameters
    kwargs = {
        "device_ids": getattr(ddp, "device_ids", None) or None,
        "output_device": getattr(ddp, "output_device", None),
        "dim": getattr(ddp, "dim", 0),
        "process_group": getattr(ddp, "process_group", None),
        "find_unused_parameters": getattr(ddp, "find_unused_parameters", False),
        "gradient_as_bucket_view": getattr(ddp, "gradient_as_bucket_view", False),
    }
    if getattr(ddp, "static_graph", False):
        kwargs["static_graph"] = True
    cap = getattr(ddp, "bucket_bytes_cap", None)
    if cap:
        kwargs["bucket_cap_mb"] = cap / (1024 * 1024)
    sync = getattr(ddp, "forward_sync_buffers", getattr(ddp, "broadcast_buffers", True))
    if "forward_sync_buffers" in accepted:  # torch >= 2.13 (broadcast_buffers is deprecated)
        kwargs["forward_sync_buffers"] = bool(sync)
    elif not sync:
        kwargs["broadcast_buffers"] = False
    kwargs.update(overrides)
    return DDP(ddp.module, **kwargs)
