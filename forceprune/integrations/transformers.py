"""forceprune inside ``transformers.Trainer``: three added lines in a user's script::

    from forceprune.integrations.transformers import ForcePruneCallback          # 1
    pruning = ForcePruneCallback(force="etp", beta=1e-3, pivot="ranked")          # 2
    trainer = Trainer(model=model, args=args, ..., callbacks=[pruning])           # 3 (callbacks=)
    trainer.train()      # penalty in the loss, capture every step, removal at the end
    print(pruning.report)                       # what was removed; trainer.save_model() saves it
    model = load_pruned_pretrained(saved_dir)   # rebuild the pruned model later

How the penalty enters the loss
-------------------------------
The callback wraps the model's ``forward`` for the duration of ``train()`` so that, in training
mode with gradients on, ``outputs.loss`` becomes ``task_loss + pruner.penalty()``. We chose
this over a ``compute_loss`` override because it needs no change of the user's Trainer class
(subclasses with their own ``training_step``/``compute_loss`` keep working, as long as they
use ``outputs.loss``), and because the penalty then goes through exactly what the task loss
goes through (gradient-accumulation scaling, AMP loss scaling, clipping): its weight
relative to the task loss is ``beta`` whatever the Trainer does. The wrapper is
``functools.wraps``-transparent (the Trainer's signature inspection sees the original forward)
and is removed at ``on_train_end``; evaluation (``model.eval()``) never sees the penalty.

With AdamW every element moves by about ``lr`` per step whatever the penalty's size, so a
*pretrained* unit needs ``max|w| / lr`` steps to reach zero (thousands at fine-tuning learning
rates). ``force_mode="prox"`` decouples the force from the optimizer instead (as AdamW
decouples weight decay): after every optimizer step, each unit is shrunk by the proximal
operator of its force term (:meth:`ForcePruner.proximal_step`), which
produces exact zeros within a fine-tuning budget; the loss is then left untouched.

When the Trainer computes the loss itself from the logits (``label_smoothing_factor > 0`` or a
``compute_loss_func``), ``outputs.loss`` does not exist: the callback then stops with an
error at the first step, and :class:`ForcePruneLossMixin` (``class MyTrainer(ForcePruneLossMixin,
Trainer)``) adds the penalty in ``compute_loss`` instead.

Capture runs at ``on_step_end`` (once per optimizer step, after ``optimizer.step()``: captured
units are re-zeroed with their Adam moments); removal at ``on_train_end``
(``prune_at_end=True``), after any best-model reload.

Saving and reloading
--------------------
``from_pretrained`` cannot rebuild a model pruned unevenly (its config holds one head count and
one FFN width for all layers), so :mod:`forceprune.integrations.hf_folder` keeps a small record
in the config, ``config.forceprune`` (kept heads, key/value heads, FFN widths, hidden size), and
the loader that uses it; its names are re-exported here:

* the callback records what it removed at ``on_train_end``, so ``trainer.save_model()``
  saves the record;
* after your own ``report = pruner.prune()``, call :func:`record_pruning` (``model,
  report``) before ``save_pretrained``, or save with :func:`save_pruned_pretrained`
  (``model, path, pruner.history``), which records and saves;
* :func:`load_pruned_pretrained` rebuilds the model from the saved folder;
* a model pruned with one width per kind (``budget={"uniform": True}``) saves as a plain
  folder, ``save_pruned_pretrained(model, path, uniform=True)``, which ``from_pretrained``
  loads without forceprune.

Heads kept over several ``prune()`` rounds compose: the record always holds indices of the
base model's heads.
"""
from __future__ import annotations

import functools
import os

import torch
import torch.nn as nn
from transformers import TrainerCallback

from .._torch import model_device, to_device
from ..checkpoint import write_json
from ..errors import ForcePruneError
from ..pruner import ForcePruner
from .hf_folder import CONFIG_KEY, load_pruned_pretrained, plain_config, record_pruning, save_pruned_pretrained

__all__ = [
    "ForcePruneCallback",
    "ForcePruneLossMixin",
    "CONFIG_KEY",
    "record_pruning",
    "save_pruned_pretrained",
    "load_pruned_pretrained",
    "plain_config",
    "example_inputs_from_loader",
]

_NON_INPUT_KEYS = {"labels", "label", "label_ids", "num_items_in_batch"}


def _unwrap_optimizer(optimizer):
    """accelerate's AcceleratedOptimizer -> the torch optimizer it wraps."""
    return getattr(optimizer, "optimizer", optimizer) if optimizer is not None else None


def example_inputs_from_loader(loader, model: nn.Module, max_length: int | None = None) -> dict:
    """A one-sample batch of model inputs (no labels) built from ``loader``'s dataset and
    collate function, without consuming the loader's random state."""
    dataset = getattr(loader, "dataset", None)
    collate = getattr(loader, "collate_fn", None)
    if dataset is None or collate is None or not hasattr(dataset, "__getitem__"):
        raise ForcePruneError(
            "could not build example inputs from the training dataloader; pass example_inputs=dict(input_ids=..., "
            "attention_mask=...) to ForcePruneCallback."
        )
    batch = collate([dataset[0]])
    out = {}
    for k, v in dict(batch).items():
        if k in _NON_INPUT_KEYS or not torch.is_tensor(v):
            continue
        out[k] = v[:, :max_length] if max_length is not None and v.dim() >= 2 else v
    if not out:
        raise ForcePruneError("the training batches hold no tensor inputs; pass example_inputs to ForcePruneCallback.")
    return to_device(out, model_device(model))


class ForcePruneCallback(TrainerCallback):
    """Train with a force penalty, capture exact zeros, remove them at the end of training.

    Args:
        force: force name or :class:`~forceprune.forces.Force` (as :class:`~forceprune.ForcePruner`).
        example_inputs: model inputs (dict) for tracing and MACs; default: one training sample.
        pruner: an existing :class:`~forceprune.ForcePruner` to use instead of building one.
        force_mode: ``"loss"`` (penalty added to ``outputs.loss``) or ``"prox"`` (proximal force
            step after each optimizer step, decoupled from AdamW; see the module doc).
        prune_at_end: physically remove captured units at ``on_train_end``.
        verbose: print the removal table at the end.
        **pruner_options: passed to ``ForcePruner`` (``beta``, ``pivot``, ``capture``,
            ``threshold``, ``capture_every``, ``ignored_layers``, ...).

    After training: ``callback.pruner`` (the pruner), ``callback.report``
    (:class:`~forceprune.PruneReport` or ``None``).
    """

    def __init__(self, force="etp", example_inputs=None, *, pruner: ForcePruner | None = None,
                 force_mode: str = "loss", prune_at_end: bool = True, verbose: bool = True, **pruner_options) -> None:
        if force_mode not in ("loss", "prox"):
            raise ForcePruneError(f"force_mode must be 'loss' or 'prox', got {force_mode!r}.")
        self.force_mode = force_mode
        self.force = force
        self.example_inputs = example_inputs
        self.pruner = pruner
        self.prune_at_end = prune_at_end
        self.verbose = verbose
        self.pruner_options = pruner_options
        self.report = None
        self.via_compute_loss = False  # set by ForcePruneLossMixin
        self._model = None
        self._had_forward = False
        self._old_forward = None
        self._added = 0
        self._missed = 0
        self.last_penalty: float | None = None

    # -- the penalty ---------------------------------------------------------------------------
    def add_penalty(self, loss: torch.Tensor) -> torch.Tensor:
        """``loss + penalty`` (used by the forward wrapper and by :class:`ForcePruneLossMixin`)."""
        pen = self.pruner.penalty()
        self.last_penalty = float(pen.detach())
        self._added += 1
        return loss + pen.to(loss.dtype)

    def _install(self, model: nn.Module) -> None:
        self._model = model
        self._had_forward = "forward" in model.__dict__
        self._old_forward = model.__dict__.get("forward")
        original = model.forward
        cb = self

        @functools.wraps(original)
        def forward(*args, **kwargs):
            out = original(*args, **kwargs)
            if cb.via_compute_loss or cb.force_mode != "loss" or not (model.training and torch.is_grad_enabled()):
                return out
            loss = out.get("loss") if isinstance(out, dict) else None
            if loss is None:
                cb._missed += 1
                return out
            out["loss"] = cb.add_penalty(loss)
            return out

        model.forward = forward

    def _uninstall(self) -> None:
        if self._model is None:
            return
        if self._had_forward:
            self._model.forward = self._old_forward
        else:
            self._model.__dict__.pop("forward", None)
        self._model = None

    # -- Trainer events ------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, optimizer=None, train_dataloader=None, **kwargs):
        if model is None:
            raise ForcePruneError("ForcePruneCallback got no model from the Trainer.")
        if self.pruner is None:
            inputs = self.example_inputs
            if inputs is None:
                inputs = example_inputs_from_loader(train_dataloader, model)
            options = dict(self.pruner_options)
            targets = ("target_macs", "target_params", "target_latency_ms")
            if any(options.get(t) is not None for t in targets) and "total_steps" not in options:
                options["total_steps"] = int(state.max_steps)  # the budget is met over the Trainer's steps
            self.pruner = ForcePruner(model, inputs, self.force, **options)
        elif self.pruner.model is not model:
            raise ForcePruneError("the ForcePruner given to ForcePruneCallback was built on another model than the Trainer's.")
        if optimizer is not None:
            self.pruner.attach_optimizer(_unwrap_optimizer(optimizer))
        self._added = self._missed = 0
        self._install(model)

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        if self.pruner is None or self.force_mode != "prox" or optimizer is None:
            return
        self.pruner.proximal_step(float(_unwrap_optimizer(optimizer).param_groups[0]["lr"]))

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        if self.pruner is None:
            return
        if self._added == 0 and self._missed > 0:
            self._uninstall()
            raise ForcePruneError(
                "the model returned no loss during training, so the force penalty could not enter it: the Trainer "
                "computes the loss itself (label_smoothing_factor > 0 or compute_loss_func). Use "
                "`class MyTrainer(ForcePruneLossMixin, Trainer)` from forceprune.integrations.transformers."
            )
        if optimizer is not None and self.pruner.optimizer is None:
            self.pruner.attach_optimizer(_unwrap_optimizer(optimizer))
        self.pruner.step()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or self.pruner is None:
            return
        if self.force_mode == "prox":
            with torch.no_grad():
                self.last_penalty = float(self.pruner.penalty())
        if self.last_penalty is None:
            return
        extra = {
            "forceprune_penalty": self.last_penalty,
            "forceprune_units_zero": self.pruner.units_captured,
        }
        logs.update(extra)
        # the Trainer appended a copy of ``logs`` to its history just before calling us
        last = state.log_history[-1] if state.log_history else None
        if last is not None and all(last.get(k) == v for k, v in logs.items() if k in last and k not in extra):
            last.update(extra)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._uninstall()
        if self.pruner is None or not self.prune_at_end:
            return
        self.pruner.capture()
        self.report = self.pruner.prune()
        record_pruning(self.pruner.model, self.report)  # so that trainer.save_model() saves the record
        if self.verbose:
            print(self.report.table())
        if getattr(args, "output_dir", None) and getattr(args, "should_save", True):
            write_json(self.report.to_dict(), os.path.join(args.output_dir, "forceprune_report.json"))


class ForcePruneLossMixin:
    """``class MyTrainer(ForcePruneLossMixin, Trainer)``: adds the penalty in ``compute_loss``,
    for Trainers that compute the loss from the logits (label smoothing, ``compute_loss_func``).
    Needs a :class:`ForcePruneCallback` among the Trainer's callbacks."""

    def _forceprune_callback(self) -> ForcePruneCallback:
        for cb in self.callback_handler.callbacks:
            if isinstance(cb, ForcePruneCallback):
                return cb
        raise ForcePruneError("ForcePruneLossMixin needs a ForcePruneCallback in the Trainer's callbacks=[...].")

    def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
        cb = self._forceprune_callback()
        cb.via_compute_loss = True
        result = super().compute_loss(model, inputs, return_outputs=return_outputs, **kwargs)
        if not (model.training and torch.is_grad_enabled()) or cb.pruner is None:
            return result
        if return_outputs:
            loss, outputs = result
            return cb.add_penalty(loss), outputs
        return cb.add_penalty(result)
