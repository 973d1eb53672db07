"""Epoch loop for image classification, with an optional ForcePruner in the loop.

Each iteration computes ``loss = cross_entropy + pruner.penalty()``, then
``optimizer.step(); pruner.step()``; each epoch ends with ``pruner.capture()``, a test
evaluation, a history record and an atomic checkpoint. The training loader must have
``set_epoch(e)`` (``forceprune.data.BatchLoader``): data order and augmentation depend only on
``(seed, epoch)``, and every global RNG is checkpointed, so a resumed run reproduces an
uninterrupted one.
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import RunConfig

if TYPE_CHECKING:
    from .data import BatchLoader

PHASES = ("dense", "force", "finetune")


@dataclass(frozen=True)
class Phase:
    """One training phase of a run: its name, length (epochs) and learning-rate recipe."""

    name: str
    epochs: int
    lr: float
    warmup_epochs: int
    milestone_fractions: tuple[float, ...]

    @classmethod
    def from_config(cls, config: RunConfig, name: str) -> Phase:
        """The dense baseline and the force phase share the recipe; fine-tuning has no warm-up."""
        fractions = tuple(m / config.epochs for m in config.milestones)
        if name == "finetune":
            lr = config.finetune_lr if config.finetune_lr is not None else 0.1 * config.lr
            return cls(name, config.finetune_epochs, lr, 0, fractions)
        epochs = config.dense_epochs if name == "dense" else config.epochs
        return cls(name, epochs, config.lr, min(config.warmup_epochs, max(epochs - 1, 0)), fractions)


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


def use_channels_last(setting: bool | str, model: nn.Module, device: torch.device) -> bool:
    """``"auto"``: channels-last for models with 2-D convolutions on CPU."""
    if setting == "auto":
        return device.type == "cpu" and any(isinstance(m, nn.Conv2d) for m in model.modules())
    return bool(setting)


def build_optimizer(model: nn.Module, config: RunConfig, lr: float) -> torch.optim.Optimizer:
    """SGD (momentum) or AdamW; weight decay only on weights with >= 2 dims (not biases, not norm layers)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=config.momentum)
    return torch.optim.AdamW(groups, lr=lr)


def lr_factor(step: int, steps_per_epoch: int, phase: Phase, schedule: str, gamma: float) -> float:
    """Learning-rate multiplier at an iteration: linear warm-up, then cosine/step/constant."""
    epoch = step / steps_per_epoch
    if epoch < phase.warmup_epochs:
        return (step + 1) / (phase.warmup_epochs * steps_per_epoch)
    if schedule == "cosine":
        span = max(phase.epochs - phase.warmup_epochs, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min((epoch - phase.warmup_epochs) / span, 1.0)))
    if schedule == "step":
        return gamma ** sum(epoch >= f * phase.epochs for f in phase.milestone_fractions)
    return 1.0


def build_scheduler(optimizer: torch.optim.Optimizer, phase: Phase, config: RunConfig,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration schedule (stepped after every optimizer step)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, steps_per_epoch, phase, config.schedule, config.gamma))


def to_device(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.ndim == 4 else x


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: torch.device | None = None,
             channels_last: bool = False) -> float:
    """Top-1 accuracy of ``model`` on ``loader``, in percent (0-100)."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct = total = 0
    for x, y in loader:
        logits = model(to_device(x, device, channels_last))
        correct += (logits.argmax(1).cpu() == y).sum().item()
        total += y.numel()
    model.train(was_training)
    return 100.0 * correct / max(total, 1)


def format_macs(macs: float) -> str:
    """Human-readable multiply-accumulate count (K/M/G)."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if macs >= scale:
            return f"{macs / scale:.2f}{unit}"
    return f"{macs:.0f}"


def force_norms(pruner: Any) -> dict[str, list[float]]:
    """Unit norms per unit set (4 significant digits), for the force-field-over-epochs plot."""
    return {s["name"]: [float(f"{v:.4g}") for v in s["norms"]] for s in pruner.force_field()}


class Trainer:
    """Trains one phase; holds model, optimizer, schedule, AMP scaler and optional pruner.

    ``device`` is where training runs; ``channels_last`` sets the memory format of
    inputs (the model must already be converted). ``checkpoint_path`` receives an atomic
    checkpoint after every epoch.
    """

    def __init__(self, model: nn.Module, phase: Phase, config: RunConfig, train_loader: BatchLoader,
                 test_loader: Iterable, *, device: torch.device, channels_last: bool = False,
                 pruner: Any = None, checkpoint_path: str | Path | None = None, progress: bool = True):
        self.model, self.phase, self.config, self.pruner = model, phase, config, pruner
        self.train_loader, self.test_loader = train_loader, test_loader
        self.device, self.channels_last, self.progress = device, channels_last, progress
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
        self.optimizer = build_optimizer(model, config, phase.lr)
        self.scheduler = build_scheduler(self.optimizer, phase, config, max(len(train_loader), 1))
        self.amp = config.amp and device.type == "cuda"
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp)
        if pruner is not None:
            pruner.attach_optimizer(self.optimizer)
        self.epoch = 0
        self.history: list[dict[str, Any]] = []

    def state_dict(self) -> dict[str, Any]:
        """Checkpoint contents: tensors and plain types only."""
        return {
            "format": 1, "phase": self.phase.name, "epoch": self.epoch, "epochs": self.phase.epochs,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "pruner": self.pruner.state_dict() if self.pruner is not None else None,
            "rng": rng_state(), "history": self.history, "config": self.config.to_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.pruner is not None:
            self.pruner.load_state_dict(state["pruner"])
        self.history = list(state["history"])
        self.epoch = int(state["epoch"])
        set_rng_state(state["rng"])

    def resume(self) -> bool:
        """Load this phase's checkpoint if there is one; True when something was loaded."""
        if self.checkpoint_path is None or not self.checkpoint_path.exists():
            return False
        self.load_state_dict(load_checkpoint(self.checkpoint_path, map_location=self.device))
        return True

    def fit(self) -> list[dict[str, Any]]:
        """Train the remaining epochs of the phase; return the per-epoch history."""
        while self.epoch < self.phase.epochs:
            record = self.train_epoch()
            self.epoch += 1
            self.history.append(record)
            if self.checkpoint_path is not None:
                save_checkpoint(self.state_dict(), self.checkpoint_path)
            if self.progress:
                tqdm.write(self.describe(record))
        return self.history

    def train_epoch(self) -> dict[str, Any]:
        """One pass over the training set, then capture, evaluation and a history record."""
        started = time.perf_counter()
        self.model.train()
        self.train_loader.set_epoch(self.epoch)
        loss_sum = penalty_sum = 0.0
        correct = seen = 0
        bar = tqdm(self.train_loader, desc=f"{self.phase.name} {self.epoch + 1}/{self.phase.epochs}",
                   leave=False, dynamic_ncols=True, disable=not self.progress)
        refresh = max(1, len(self.train_loader) // 20)
        first_lr = self.optimizer.param_groups[0]["lr"]
        for i, (x, y) in enumerate(bar):
            x, y = to_device(x, self.device, self.channels_last), y.to(self.device, non_blocking=True)
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
                logits = self.model(x)
                task_loss = F.cross_entropy(logits, y)
            penalty = self.pruner.penalty() if self.pruner is not None else torch.zeros((), device=self.device)
            loss = task_loss.float() + penalty
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if hasattr(self.pruner, "after_backward"):  # gradient-editing regularisers (torch-pruning's)
                self.scaler.unscale_(self.optimizer)
                self.pruner.after_backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.pruner is not None:
                self.pruner.step()
            self.scheduler.step()
            loss_sum += loss.item() * y.numel()
            penalty_sum += penalty.item() * y.numel()
            correct += (logits.argmax(1) == y).sum().item()
            seen += y.numel()
            if self.progress and (i % refresh == 0 or i == len(self.train_loader) - 1):
                postfix = {"loss": f"{loss_sum / seen:.4f}", "acc": f"{100 * correct / seen:.2f}%"}
                if self.pruner is not None:
                    postfix["MACs"] = format_macs(self.pruner.summary()["macs_if_pruned"])
                bar.set_postfix(postfix, refresh=False)
        bar.close()
        record: dict[str, Any] = {
            "phase": self.phase.name, "epoch": self.epoch + 1,
            "train_loss": loss_sum / max(seen, 1), "penalty": penalty_sum / max(seen, 1),
            "train_acc": 100.0 * correct / max(seen, 1), "lr": first_lr,
        }
        if self.pruner is not None:
            record["newly_captured"] = int(self.pruner.capture())
            summary = self.pruner.summary()
            record.update(macs_if_pruned=int(summary["macs_if_pruned"]), params_if_pruned=int(summary["params_if_pruned"]),
                          units_zero=int(summary["units_zero"]), units_total=int(summary["units_total"]),
                          norms=force_norms(self.pruner))
        record["test_acc"] = evaluate(self.model, self.test_loader, self.device, self.channels_last)
        record["wall_s"] = time.perf_counter() - started
        return record

    def describe(self, record: dict[str, Any]) -> str:
        """One summary line per epoch."""
        text = (f"{record['phase']:>8} epoch {record['epoch']:>3}/{self.phase.epochs}  loss {record['train_loss']:.4f}"
                f"  train {record['train_acc']:6.2f}%  test {record['test_acc']:6.2f}%  lr {record['lr']:.2e}")
        if "macs_if_pruned" in record:
            text += (f"  MACs if pruned {format_macs(record['macs_if_pruned'])}"
                     f"  zero units {record['units_zero']}/{record['units_total']}")
        return text + f"  {record['wall_s']:.1f}s"
