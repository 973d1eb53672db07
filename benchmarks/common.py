"""What every suite shares: the machine line, table cells and the result files."""
from __future__ import annotations

import copy
import os
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from forceprune.checkpoint import atomic_write, write_json


def fmt_cell(v, spec="{:.2f}", none="–") -> str:
    """A table cell: ``v`` formatted with ``spec``, or ``none`` when it is missing."""
    return none if v is None else spec.format(v)


def machine(threads: int | None = None) -> str:
    """The machine a suite ran on, for its table header."""
    import platform

    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
            f"{threads or torch.get_num_threads()} thread(s)")


def write_result(result: dict, out: Path, name: str, markdown: Callable[[dict], str],
                 plot: Callable[[dict, Path], None] | None = None) -> str:
    """``<name>.json`` (atomic), ``<name>.md`` and (with ``plot``) ``<name>.png`` under ``out``;
    returns the markdown."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(result, out / f"{name}.json")
    text = markdown(result)
    atomic_write(out / f"{name}.md", lambda handle: handle.write(text.encode("utf-8")))
    if plot is not None:
        plot(result, out / f"{name}.png")
    return text


def step_overhead(model, pruner, task, steps: int = 20, prox: bool = False) -> float:
    """Extra time of ``penalty()`` (with ``prox``: ``proximal_step()``) + ``pruner.step()``
    relative to a plain training step (median over interleaved rounds, same batch, SGD at lr 0),
    with the force *active*: a met budget switches the force off and freezes capture, which
    would hide their cost, so the controller is set back to unmet before every forced step (a
    controller update inside the rounds would otherwise find the budget met and switch the
    force off for the rest of them). The model's weights and the pruner's state are restored
    afterwards."""
    saved = copy.deepcopy(model.state_dict()), pruner.state_dict(), pruner.optimizer
    batch = next(iter(task.train_batches))
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    pruner.attach_optimizer(opt)

    def one(with_force: bool) -> float:
        if with_force and pruner.controller is not None:
            pruner.controller.reached, pruner.controller.scale = False, 1.0
        t0 = time.perf_counter()
        loss = task.objective(model, batch)[0]
        if with_force and not prox:
            loss = loss + pruner.penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if with_force:
            if prox:
                pruner.proximal_step(1e-5)
            pruner.step()
        return time.perf_counter() - t0

    plain, forced = [], []
    for _ in range(steps):
        plain.append(one(False))
        forced.append(one(True))
    model.load_state_dict(saved[0])
    pruner.attach_optimizer(saved[2])
    pruner.load_state_dict(saved[1])
    return statistics.median(forced) / statistics.median(plain) - 1.0
