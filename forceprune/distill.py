"""Distillation from the dense model: the unpruned (fine-tuned) model teaches the model being
pruned, during the force phase and any recovery phase.

The loss of a batch is

    (1 - alpha) * task_loss  +  alpha * T**2 * KL(softmax(z_t / T) || softmax(z_s / T))
                             +  hidden * mean_l MSE(h_s^l, h_t^l)

with ``z_s`` / ``z_t`` the student's / teacher's logits, ``T`` the temperature (the ``T**2``
keeps the gradient's scale independent of ``T``, Hinton et al. 2015) and ``h^l`` the hidden
states after each layer (optional; pruning heads and neurons keeps the layer count and the
hidden size, so layer ``l`` of the student matches layer ``l`` of the teacher). This is the
recipe of the strongest structured-pruning results on BERT (CoFi, Block Movement Pruning)
and of Minitron. Labels equal to -100 (padding, in language modelling) are left out of
every term.

    teacher = fp.distill.frozen_copy(model)                      # before pruning starts
    loss = fp.distill.distillation_loss(student_logits, teacher_logits, labels, task_loss,
                                        fp.distill.Distillation(temperature=2.0, alpha=0.5))
"""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import ForcePruneError

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Distillation:
    """How the teacher teaches.

    Args:
        temperature: softmax temperature ``T`` of the logits KL (> 0; 1 = plain softmax).
        alpha: weight of the KL term; the task loss gets ``1 - alpha`` (in [0, 1]).
        hidden: weight of the per-layer hidden-state MSE (>= 0; 0 = logits only).
    """

    temperature: float = 2.0
    alpha: float = 0.5
    hidden: float = 0.0

    def __post_init__(self) -> None:
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature) and self.temperature > 0):
            raise ForcePruneError(f"distill temperature must be a number > 0, got {self.temperature!r}; 2.0 is usual.")
        if not (isinstance(self.alpha, (int, float)) and 0 <= self.alpha <= 1):
            raise ForcePruneError(f"distill alpha must be in [0, 1] (the KL's share of the loss), got {self.alpha!r}.")
        if not (isinstance(self.hidden, (int, float)) and math.isfinite(self.hidden) and self.hidden >= 0):
            raise ForcePruneError(f"distill hidden must be a number >= 0 (0 = logits only), got {self.hidden!r}.")

    def to_dict(self) -> dict:
        return asdict(self)


def frozen_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` to teach with: eval mode, no gradients, its own weights."""
    teacher = copy.deepcopy(model)
    teacher.__dict__.pop("forward", None)  # an instance-level wrapper (the HF callback's) stays with the student
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def check_compatible(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
    """Refuse a teacher whose outputs are not the student's kind (another vocabulary or label count)."""
    if student_logits.shape != teacher_logits.shape:
        raise ForcePruneError(
            f"the teacher's logits have shape {tuple(teacher_logits.shape)} but the student's {tuple(student_logits.shape)}: "
            "the teacher must be the same model before pruning (same label count / vocabulary). Distil from the "
            "dense model the student was made from."
        )


def kl_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
            labels: torch.Tensor | None = None) -> torch.Tensor:
    """``T**2 * mean KL(softmax(z_t / T) || softmax(z_s / T))`` over the positions whose label is
    not -100 (all positions when ``labels`` is None). Logits: ``(..., classes)``."""
    check_compatible(student_logits, teacher_logits)
    s = student_logits.float().reshape(-1, student_logits.shape[-1]) / temperature
    t = teacher_logits.detach().float().reshape(-1, teacher_logits.shape[-1]) / temperature
    if labels is not None:
        keep = labels.reshape(-1) != IGNORE_INDEX
        if keep.numel() == s.shape[0]:
            s, t = s[keep], t[keep]
    per_position = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="none").sum(-1)
    return per_position.mean() * temperature**2 if per_position.numel() else s.sum() * 0.0


def hidden_loss(student_hidden: Sequence[torch.Tensor], teacher_hidden: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over layers of the MSE between the student's and the teacher's hidden states."""
    if len(student_hidden) != len(teacher_hidden):
        raise ForcePruneError(f"the student has {len(student_hidden)} hidden states but the teacher {len(teacher_hidden)}; "
                              "hidden-state matching needs the same layers (prune heads and neurons, not layers).")
    terms = [F.mse_loss(s.float(), t.detach().float()) for s, t in zip(student_hidden, teacher_hidden)]
    return torch.stack(terms).mean()


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None,
                      task_loss: torch.Tensor, options: Distillation, student_hidden: Sequence[torch.Tensor] = (),
                      teacher_hidden: Sequence[torch.Tensor] = ()) -> torch.Tensor:
    """The distilled loss of one batch (see the module doc)."""
    loss = (1 - options.alpha) * task_loss + options.alpha * kl_loss(student_logits, teacher_logits, options.temperature, labels)
    if options.hidden and student_hidden:
        loss = loss + options.hidden * hidden_loss(student_hidden, teacher_hidden)
    return loss


def distilled(objective, teacher: nn.Module, options: Distillation):
    """An objective ``(model, batch) -> (loss, logits, labels)`` whose loss is the distilled loss
    against ``teacher`` (run on the same batch, without gradients). ``objective`` must accept
    ``hidden=True`` (then returning the hidden states as a fourth element) when
    ``options.hidden`` is set."""
    want_hidden = bool(options.hidden)

    def step(model, batch):
        if want_hidden:
            loss, logits, labels, hidden = objective(model, batch, hidden=True)
            with torch.no_grad():
                _, t_logits, _, t_hidden = objective(teacher, batch, hidden=True)
        else:
            (loss, logits, labels), hidden, t_hidden = objective(model, batch), (), ()
            with torch.no_grad():
                t_logits = objective(teacher, batch)[1]
        return distillation_loss(logits, t_logits, labels, loss, options, hidden, t_hidden), logits, labels

    return step
