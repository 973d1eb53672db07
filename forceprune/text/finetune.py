"""A plain fine-tuning loop for sequence classification, with an optional ForcePruner.

AdamW (no decay on biases and LayerNorm), linear warm-up then linear decay, gradient
clipping, and one of two ways to apply the force:

* ``force_mode="loss"``: the loss is ``task + pruner.penalty()`` (what the Trainer callback
  does). Under Adam every element moves by about ``lr`` per step whatever the penalty's size,
  so a pretrained unit (largest weights ~0.1-0.5) needs ``max|w| / lr`` steps to reach zero:
  thousands at fine-tuning learning rates. On MiniLM/SST-2 (2,000 sentences, lr 1e-3,
  beta 1e-2) not a single unit was captured.
* ``force_mode="prox"`` (default here): the force is *decoupled* from Adam, as AdamW decouples
  weight decay: after each optimizer step ``pruner.proximal_step(lr)`` shrinks every unit by
  the proximal operator of its force term (:mod:`forceprune.proximal`). Units reach exact
  zeros, which ``pruner.step()`` captures.

``pruner.step()`` follows every optimizer step either way (captured units stay exactly zero
with their Adam moments).
"""
from __future__ import annotations

import math
import time
from typing import Callable

import torch
import torch.nn as nn

from ..errors import ForcePruneError, NonFiniteError


def make_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.01) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.dim() < 2 or "LayerNorm" in name or "norm" in name.lower() else decay).append(p)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr
    )


def linear_schedule(optimizer, warmup_steps: int, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def steps_for(epochs: float, steps_per_epoch: int, max_steps: int | None = None) -> int:
    """Optimizer steps of a phase of ``epochs`` (may be fractional), capped by ``max_steps``."""
    total = max(1, math.ceil(epochs * steps_per_epoch))
    return min(total, int(max_steps)) if max_steps else total


def train_classifier(
    model: nn.Module, batches, *, epochs: float = 1.0, lr: float = 5e-5, weight_decay: float = 0.01,
    warmup_ratio: float = 0.06, max_grad_norm: float = 1.0, pruner=None, max_steps: int | None = None,
    log_every: int = 50, log: Callable[[str], None] | None = print, device: torch.device | str = "cpu",
    force_mode: str = "prox",
) -> dict:
    """Fine-tune ``model`` (returns ``outputs.loss`` given ``labels``) on ``batches``
    (a :class:`~forceprune.text.batching.TextBatches`). ``epochs`` may be fractional.
    Returns a history dict (steps, seconds, samples/s, loss curve, penalty curve, units captured)."""
    if force_mode not in ("loss", "prox"):
        raise ForcePruneError(f"force_mode must be 'loss' or 'prox', got {force_mode!r}.")
    if not (isinstance(epochs, (int, float)) and epochs > 0):
        raise ForcePruneError(f"epochs must be > 0, got {epochs!r}.")
    total = steps_for(epochs, len(batches), max_steps)
    optimizer = make_optimizer(model, lr, weight_decay)
    scheduler = linear_schedule(optimizer, int(warmup_ratio * total), total)
    if pruner is not None:
        pruner.attach_optimizer(optimizer)
    model.to(device).train()
    history = {"steps": 0, "samples": 0, "loss": [], "penalty": [], "units_zero": []}
    t0 = time.perf_counter()
    step, epoch, run_loss, run_pen, run_n, run_pn = 0, 0, 0.0, 0.0, 0, 0
    while step < total:
        if hasattr(batches, "set_epoch"):
            batches.set_epoch(epoch)
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            out = model(**batch)
            loss = out.loss
            pen = pruner.penalty() if pruner is not None and force_mode == "loss" else None
            total_loss = loss + pen if pen is not None else loss
            if not torch.isfinite(total_loss):
                raise NonFiniteError(f"the loss is {float(total_loss)} at step {step}; lower the learning rate or beta.")
            optimizer.zero_grad(set_to_none=True)
            total_loss.backward()
            if max_grad_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
            if pruner is not None and force_mode == "prox":
                pruner.proximal_step(optimizer.param_groups[0]["lr"])
            scheduler.step()
            if pruner is not None:
                pruner.step()
            step += 1
            history["samples"] += len(batch["input_ids"])
            run_loss += float(loss.detach())
            run_pen += float(pen.detach()) if pen is not None else 0.0
            run_pn = run_pn + 1 if pen is not None else run_pn
            run_n += 1
            if step % max(1, log_every) == 0 or step == total:
                if pruner is not None and force_mode == "prox":  # the penalty's current value, for the log
                    with torch.no_grad():
                        run_pen, run_pn = float(pruner.penalty()), 1
                zero = int(sum(int(us.dead.sum()) for us in pruner.unit_sets)) if pruner is not None else 0
                history["loss"].append((step, run_loss / run_n))
                history["penalty"].append((step, run_pen / max(run_pn, 1)))
                history["units_zero"].append((step, zero))
                if log is not None:
                    rate = history["samples"] / max(time.perf_counter() - t0, 1e-9)
                    msg = f"step {step}/{total}  loss {run_loss / run_n:.4f}"
                    if pruner is not None:
                        msg += f"  penalty {run_pen / max(run_pn, 1):.4f}  units zero {zero}"
                    log(msg + f"  ({rate:.0f} samples/s)")
                run_loss = run_pen = 0.0
                run_n = run_pn = 0
            if step >= total:
                break
        epoch += 1
    seconds = time.perf_counter() - t0
    history.update(steps=step, seconds=seconds, samples_per_s=history["samples"] / max(seconds, 1e-9))
    model.eval()
    return history


@torch.no_grad()
def evaluate(model: nn.Module, batches, device: torch.device | str = "cpu") -> dict:
    """``{"accuracy", "loss", "n"}`` of ``model`` on ``batches``."""
    was = model.training
    model.eval()
    correct, n, loss_sum = 0, 0, 0.0
    try:
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            out = model(**batch)
            labels = batch["labels"]
            correct += int((out.logits.argmax(-1) == labels).sum())
            loss_sum += float(out.loss) * len(labels)
            n += len(labels)
    finally:
        model.train(was)
    return {"accuracy": correct / max(n, 1), "loss": loss_sum / max(n, 1), "n": n}
