"""The one training loop, with an optional pruning method in it, and the one ``evaluate``.

Each optimizer step computes ``loss = objective(model, batch)`` (plus ``method.penalty()``
with ``force_mode="loss"``), steps the optimizer (then ``method.proximal_step(lr)`` with
``force_mode="prox"``: the force decoupled from the optimizer, as AdamW decouples weight
decay) and calls ``method.step()``, which keeps captured units at exactly zero. Each epoch
ends with ``method.capture()``, an evaluation, a history record and an atomic checkpoint.

A phase may last a fractional number of epochs (``epochs=1.5``): its last epoch stops early.
Data order and augmentation depend only on ``(seed, epoch)`` (the batches must have
``set_epoch(e)``) and every RNG is checkpointed, so a run resumed at an epoch boundary
reproduces an uninterrupted one bit for bit.

An *objective* is ``objective(model, batch) -> (loss, logits, labels)`` with tensors on the
model's device (labels ``-100`` are ignored, as in Hugging Face's losses); the task adapters
(:mod:`forceprune.runs.vision`, :mod:`forceprune.runs.text`) provide theirs.
"""
from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .._torch import eval_mode
from ..checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from ..errors import NonFiniteError

Objective = Callable[[nn.Module, Any], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
SCHEDULES = ("cosine", "step", "constant", "linear")
IGNORE_INDEX = -100


@dataclass(frozen=True)
class Phase:
    """One training phase: its length, optimizer and learning-rate recipe.

    ``epochs`` may be fractional; ``max_steps`` (0 = none) caps the optimizer steps. After a
    linear warm-up of ``warmup_epochs`` (or ``warmup_ratio`` of the phase's steps) the learning
    rate follows ``schedule``: ``"cosine"`` to 0, ``"step"`` (x ``gamma`` at each of
    ``milestones``, fractions of the phase), ``"constant"``, or ``"linear"`` decay to 0."""

    name: str
    epochs: float
    lr: float
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    warmup_ratio: float = 0.0
    milestones: tuple[float, ...] = ()
    gamma: float = 0.1
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    max_grad_norm: float = 0.0
    max_steps: int = 0

    def total_steps(self, steps_per_epoch: int) -> int:
        """Optimizer steps of the phase (``epochs`` may be fractional), capped by ``max_steps``."""
        total = max(1, math.ceil(self.epochs * steps_per_epoch)) if self.epochs > 0 else 0
        return min(total, self.max_steps) if self.max_steps else total

    def warmup_steps(self, steps_per_epoch: int) -> int:
        if self.warmup_ratio:
            return int(self.warmup_ratio * self.total_steps(steps_per_epoch))
        return round(self.warmup_epochs * steps_per_epoch)


def lr_factor(step: int, steps_per_epoch: int, phase: Phase) -> float:
    """Learning-rate multiplier at an optimizer step of ``phase``."""
    warmup = phase.warmup_steps(steps_per_epoch)
    if step < warmup:
        return (step + 1) / warmup
    epoch = step / steps_per_epoch
    if phase.schedule == "cosine":
        span = max(phase.epochs - phase.warmup_epochs, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min((epoch - phase.warmup_epochs) / span, 1.0)))
    if phase.schedule == "step":
        return phase.gamma ** sum(epoch >= f * phase.epochs for f in phase.milestones)
    if phase.schedule == "linear":
        total = phase.total_steps(steps_per_epoch)
        return max(0.0, (total - step) / max(1, total - warmup))
    return 1.0


def build_optimizer(model: nn.Module, phase: Phase) -> torch.optim.Optimizer:
    """SGD (momentum) or AdamW; weight decay only on weights with >= 2 dims (not biases, not norms)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": phase.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    if phase.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=phase.lr, momentum=phase.momentum)
    return torch.optim.AdamW(groups, lr=phase.lr)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed torch (CPU and CUDA), numpy and random; optionally force deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass(frozen=True)
class Evaluation:
    """Top-1 accuracy in percent (0-100), mean loss per counted label, and the label count."""

    accuracy: float
    loss: float
    count: int


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable, objective: Objective) -> Evaluation:
    """Accuracy (percent) and mean loss of ``model`` on ``batches``, in eval mode (the model's
    training flag is restored after)."""
    correct = total = 0
    loss_sum = 0.0
    with eval_mode(model):
        for batch in batches:
            loss, logits, labels = objective(model, batch)
            keep = labels != IGNORE_INDEX
            n = int(keep.sum())
            correct += int((logits.argmax(-1)[keep] == labels[keep]).sum())
            loss_sum += float(loss) * n
            total += n
    return Evaluation(100.0 * correct / max(total, 1), loss_sum / max(total, 1), total)


def format_macs(macs: float) -> str:
    """Human-readable multiply-accumulate count (K/M/G)."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if macs >= scale:
            return f"{macs / scale:.2f}{unit}"
    return f"{macs:.0f}"


def unit_norms(method: Any) -> dict[str, list[float]]:
    """Unit norms per unit set (4 significant digits), for the force-field-over-epochs plot."""
    return {s["name"]: [float(f"{v:.4g}") for v in s["norms"]] for s in method.force_field()}


class Trainer:
    """Trains one phase of a run: model, optimizer, schedule, AMP scaler and optional method.

    Args:
        model: on ``device`` already (and in its memory format).
        phase: length and recipe (:class:`Phase`).
        batches: training batches with ``len()`` and ``set_epoch(e)``.
        eval_batches: evaluated after every epoch (``eval_acc`` of the history record).
        objective: ``(model, batch) -> (loss, logits, labels)``.
        method: a :class:`~forceprune.ForcePruner` (or a baseline with the same verbs), or None.
        force_mode: ``"loss"`` (penalty added to the loss) or ``"prox"`` (proximal step).
        amp: float16 autocast and loss scaling (CUDA only).
        checkpoint_path: receives an atomic checkpoint after every epoch.
        meta: plain data stored in every checkpoint (the run's config).
        log_every: also record ``(step, loss, penalty, units captured)`` every this many steps.
        on_checkpoint: called after every checkpoint written (the run's overwrite commit).
        evaluate_first: evaluate the model before training, as a ``phase="start"`` record (a
            pretrained model that is its own dense baseline).
        eval_objective: the objective of every evaluation (default ``objective``): the task's own
            loss when training distils, so held-out losses and perplexities are the task's.
    """

    def __init__(self, model: nn.Module, phase: Phase, batches: Any, eval_batches: Iterable, objective: Objective, *,
                 device: torch.device, method: Any = None, force_mode: str = "loss", amp: bool = False,
                 checkpoint_path: str | Path | None = None, progress: bool = True, meta: dict | None = None,
                 log_every: int = 0, on_checkpoint: Callable[[], None] | None = None, evaluate_first: bool = False,
                 eval_objective: Objective | None = None):
        self.model, self.phase, self.method, self.objective = model, phase, method, objective
        self.eval_objective = eval_objective or objective
        self.batches, self.eval_batches, self.device = batches, eval_batches, device
        self.force_mode, self.progress, self.meta, self.log_every = force_mode, progress, meta or {}, log_every
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
        self.on_checkpoint = on_checkpoint
        self.evaluate_first = evaluate_first
        self.steps_per_epoch = max(len(batches), 1)
        self.total_steps = phase.total_steps(self.steps_per_epoch)
        self.optimizer = build_optimizer(model, phase)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, self.steps_per_epoch, phase))
        self.amp = amp and device.type == "cuda"
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp)
        if method is not None:
            method.attach_optimizer(self.optimizer)
        self.epoch = 0
        self.step = 0
        self.history: list[dict[str, Any]] = []

    @property
    def epochs(self) -> int:
        """Number of (possibly partial) epochs of the phase."""
        return math.ceil(self.total_steps / self.steps_per_epoch)

    def state_dict(self) -> dict[str, Any]:
        """Checkpoint contents: tensors and plain types only (loads with ``weights_only=True``)."""
        return {
            "format": 2, "phase": self.phase.name, "epoch": self.epoch, "epochs": self.epochs, "step": self.step,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "pruner": self.method.state_dict() if self.method is not None else None,
            "rng": rng_state(), "history": self.history, "config": self.meta,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.method is not None:
            self.method.load_state_dict(state["pruner"])
        self.history = list(state["history"])
        self.epoch = int(state["epoch"])
        self.step = int(state.get("step", self.epoch * self.steps_per_epoch))
        set_rng_state(state["rng"])

    def resume(self) -> bool:
        """Load this phase's checkpoint if there is one; True when something was loaded."""
        if self.checkpoint_path is None or not self.checkpoint_path.exists():
            return False
        self.load_state_dict(load_checkpoint(self.checkpoint_path, map_location=self.device))
        return True

    def fit(self) -> list[dict[str, Any]]:
        """Train the remaining epochs of the phase; return the per-epoch history."""
        if self.evaluate_first and not self.history:
            result = evaluate(self.model, self.eval_batches, self.eval_objective)
            self.history.append({"phase": "start", "epoch": 0, "steps": 0, "eval_acc": result.accuracy,
                                 "eval_loss": result.loss, "wall_s": 0.0})
        if self.total_steps == 0:  # complete at once (a one-shot method): record the start evaluation
            self._checkpoint()
        while self.step < self.total_steps:
            record = self.train_epoch()
            self.epoch += 1
            self.history.append(record)
            self._checkpoint()
            if self.progress:
                tqdm.write(self.describe(record))
        return self.history

    def _checkpoint(self) -> None:
        if self.checkpoint_path is not None:
            save_checkpoint(self.state_dict(), self.checkpoint_path)
            if self.on_checkpoint is not None:
                self.on_checkpoint()

    def _penalty(self) -> torch.Tensor:
        if self.method is None or self.force_mode != "loss":
            return torch.zeros((), device=self.device)
        return self.method.penalty()

    def train_epoch(self) -> dict[str, Any]:
        """One pass over the batches (stopping at the phase's last step), then capture,
        evaluation and a history record."""
        started = time.perf_counter()
        self.model.train()
        self.batches.set_epoch(self.epoch)
        steps = min(self.steps_per_epoch, self.total_steps - self.step)
        loss_sum = penalty_sum = 0.0
        correct = seen = samples = tokens = 0
        curve: list[list[float]] = []
        bar = tqdm(total=steps, desc=f"{self.phase.name} {self.epoch + 1}/{self.epochs}", leave=False,
                   dynamic_ncols=True, disable=not self.progress)
        refresh = max(1, steps // 20)
        first_lr = self.optimizer.param_groups[0]["lr"]
        for i, batch in enumerate(self.batches):
            if i >= steps:
                break
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
                task_loss, logits, labels = self.objective(self.model, batch)
            penalty = self._penalty()
            loss = task_loss.float() + penalty
            if not torch.isfinite(loss):
                raise NonFiniteError(f"the loss is {float(loss)} at step {self.step + 1} of the {self.phase.name} phase; "
                                     "lower the learning rate or beta.")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if hasattr(self.method, "after_backward") or self.phase.max_grad_norm:
                self.scaler.unscale_(self.optimizer)
            if hasattr(self.method, "after_backward"):  # gradient-editing regularisers (torch-pruning's)
                self.method.after_backward()
            if self.phase.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.phase.max_grad_norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.method is not None:  # with the step size just used: it sets the capture bound
                if self.force_mode == "prox":
                    self.method.proximal_step(self.optimizer.param_groups[0]["lr"])
                self.method.step()
            self.scheduler.step()
            self.step += 1
            keep = labels != IGNORE_INDEX
            n = int(keep.sum())
            loss_sum += float(loss.detach()) * n
            penalty_sum += float(penalty.detach()) * n
            correct += int((logits.argmax(-1)[keep] == labels[keep]).sum())
            seen += n
            samples += len(labels)
            tokens += n if labels.dim() > 1 else 0
            if self.log_every and (self.step % self.log_every == 0 or i == steps - 1):
                curve.append([self.step, float(task_loss.detach()), float(self._current_penalty(penalty)), self._units_zero()])
            bar.update(1)
            if self.progress and (i % refresh == 0 or i == steps - 1):
                bar.set_postfix(self._postfix(loss_sum, correct, seen, samples, tokens, started), refresh=False)
        bar.close()
        record: dict[str, Any] = {
            "phase": self.phase.name, "epoch": self.epoch + 1, "steps": self.step,
            "train_loss": loss_sum / max(seen, 1), "penalty": penalty_sum / max(seen, 1),
            "train_acc": 100.0 * correct / max(seen, 1), "lr": first_lr,
            "samples_per_s": samples / max(time.perf_counter() - started, 1e-9),
            **({"tokens_per_s": tokens / max(time.perf_counter() - started, 1e-9)} if tokens else {}),
        }
        if curve:
            record["curve"] = curve
        if self.method is not None:
            record["newly_captured"] = int(self.method.capture())
            summary = self.method.summary()
            record.update(macs_if_pruned=int(summary["macs_if_pruned"]), params_if_pruned=int(summary["params_if_pruned"]),
                          units_zero=int(summary["units_zero"]), units_total=int(summary["units_total"]),
                          norms=unit_norms(self.method))
        result = evaluate(self.model, self.eval_batches, self.eval_objective)
        record.update(eval_acc=result.accuracy, eval_loss=result.loss, wall_s=time.perf_counter() - started)
        return record

    def _current_penalty(self, penalty: torch.Tensor) -> torch.Tensor:
        """The penalty's value for the logs (in prox mode it is not part of the loss)."""
        if self.method is None or self.force_mode == "loss":
            return penalty.detach()
        with torch.no_grad():
            return self.method.penalty()

    def _units_zero(self) -> int:
        return int(getattr(self.method, "units_captured", 0))

    def _postfix(self, loss_sum: float, correct: int, seen: int, samples: int, tokens: int, started: float) -> dict:
        elapsed = max(time.perf_counter() - started, 1e-9)
        postfix = {"loss": f"{loss_sum / max(seen, 1):.4f}", "acc": f"{100 * correct / max(seen, 1):.2f}%",
                   "samples/s": f"{samples / elapsed:.1f}"}
        if tokens:
            postfix["tokens/s"] = f"{tokens / elapsed:.0f}"
        if self.method is not None:
            postfix["MACs"] = format_macs(self.method.summary()["macs_if_pruned"])
        return postfix

    def describe(self, record: dict[str, Any]) -> str:
        """One summary line per epoch."""
        text = (f"{record['phase']:>8} epoch {record['epoch']:>3}/{self.epochs}  loss {record['train_loss']:.4f}"
                f"  train {record['train_acc']:6.2f}%  eval {record['eval_acc']:6.2f}%  lr {record['lr']:.2e}")
        if "macs_if_pruned" in record:
            text += (f"  MACs if pruned {format_macs(record['macs_if_pruned'])}"
                     f"  zero units {record['units_zero']}/{record['units_total']}")
        return text + f"  {record['wall_s']:.1f}s"
