"""PyTorch Lightning callback: force penalty, capture and removal inside ``Trainer.fit``.

    from forceprune.integrations.lightning import ForcePruneCallback
    cb = ForcePruneCallback(force="etp", beta=1e-3, remove_at="fit_end")   # or remove_at=<epoch>
    trainer = L.Trainer(max_epochs=30, callbacks=[cb])
    trainer.fit(module)            # module.example_input_array (or example_inputs=...) traces it
    cb.reports[-1].table()         # what removal did

What the callback does, hook by hook:

* ``setup``: resolves the module to prune (the LightningModule, or ``module="net"`` for a
  submodule) and arranges that resuming from a checkpoint taken *after* removal first prunes
  the freshly built module to the checkpoint's shapes (see "Checkpoints" below).
* ``on_fit_start``: builds the :class:`~forceprune.ForcePruner` on the (device-placed) module and
  attaches the optimizer, so captured units' momentum/Adam state is cleared too.
* ``on_after_backward``: adds the penalty's gradient. Lightning offers no hook to change the
  loss, but the gradient of ``loss + penalty`` is the gradient of ``loss`` plus that of
  ``penalty``, and ``on_after_backward`` runs right after ``loss.backward()`` and before
  gradient clipping and the optimizer step: adding ``d penalty / d w`` to ``.grad`` there is
  exactly equivalent. It is scaled like Lightning scales the loss (``1 / accumulate_grad_batches``
  and, for ``16-mixed``, the AMP loss scale). It uses ``torch.autograd.grad`` rather than a
  second ``backward()``: under DDP a second backward would fire the reducer's hooks again;
  the task gradients are already averaged there, and the penalty -- a function of the weights,
  identical on every rank -- gives every rank the same gradient, so ranks stay in sync.
* ``on_train_batch_end`` (after the optimizer step): ``pruner.step()`` re-zeroes captured units
  (and captures every ``capture_every`` steps, default 0: only at epoch end).
* ``on_train_epoch_end``: capture; under DDP the captured masks are made identical on all
  ranks (:func:`forceprune.distributed.broadcast_capture_state`). At the end of epoch
  ``remove_at`` (an int, 0-based like ``trainer.current_epoch``) units are removed and
  training continues on the smaller model without the penalty (fine-tuning).
* ``on_train_end``: removal when ``remove_at="fit_end"``.

Removal slices the optimizer state in place (:mod:`forceprune.optim_state`), so LR schedulers
and the optimizer object survive; under DDP it runs in lockstep and the DDP wrapper is rebuilt
around the new shapes. Automatic optimization only: with ``automatic_optimization=False`` add
``callback.pruner.penalty()`` to your loss yourself.

Checkpoints: the callback's ``state_dict`` (captured masks, step counter, the removal rounds)
is saved in Lightning checkpoints. A checkpoint taken after removal holds pruned shapes; when
``trainer.fit(ckpt_path=...)`` resumes from it, the callback prunes the new module to those
shapes (replaying the rounds, see :mod:`forceprune.plan`) before Lightning loads the weights.

DDP: use ``strategy="ddp"`` (one script per rank). With ``ddp_spawn`` the workers prune their
copies, but Lightning then loads rank 0's weights into the *unpruned* module of the launching
process, which fails on the shapes; save the pruned model from within the run
(``forceprune.plan.save_pruned`` in ``on_train_end``) or use ``strategy="ddp"``.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

try:
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover - the older package name
    try:
        import pytorch_lightning as pl
    except ImportError as exc:  # pragma: no cover
        raise ImportError(
            "forceprune.integrations.lightning needs PyTorch Lightning: pip install lightning"
        ) from exc

from ..distill import Distillation, frozen_copy, kl_loss
from ..distributed import broadcast_capture_state, is_distributed, prune_in_lockstep, rewrap_ddp
from ..errors import ForcePruneError
from ..plan.replay import ensure_biases, replay_plan
from ..plan.schema import identify_model, plan_from_rounds, rounds_from_history
from ..pruner import ForcePruner

__all__ = ["ForcePruneCallback"]

_STATE_VERSION = 1


class ForcePruneCallback(pl.Callback):
    """Train with a force penalty, capture exact zeros and remove them, within ``Trainer.fit``.

    Args:
        force: force law name, preset or :class:`~forceprune.forces.Force` (see ForcePruner).
        example_inputs: inputs the module accepts; default ``module.example_input_array``.
        remove_at: ``"fit_end"`` (when training ends) or an epoch index: remove at the end of
            that epoch and fine-tune the smaller model for the remaining epochs.
        module: attribute path of the submodule to prune (e.g. ``"net"``); default the whole
            LightningModule.
        ignored_layers: modules, or their names (relative to ``module``), never to prune.
        prune_kwargs: keyword args for :meth:`ForcePruner.prune` (``tolerance``, ...).
        teacher: the dense model to distil from (e.g. ``copy.deepcopy(module.net)`` before
            ``fit``), during the force phase and after removal; it is called on the pruned
            module's inputs. Needs ``distill``.
        distill: :class:`~forceprune.distill.Distillation` options (``temperature``, ``alpha``):
            ``alpha * T**2 * KL`` of the module's logits against the teacher's is added to
            the loss (as a gradient, like the penalty; the task loss keeps its weight 1 here,
            since Lightning's loss is the user's).
        **options: ForcePruner options (``beta``, ``capture``, ``threshold``, ``capture_every``
            (default 0 here: capture at epoch end), ``snap``, ``norm``, ``pivot``, ...).
    """

    def __init__(
        self,
        force: Any = "etp",
        example_inputs: Any = None,
        remove_at: str | int = "fit_end",
        *,
        module: str | None = None,
        ignored_layers: Sequence[nn.Module | str] | None = None,
        prune_kwargs: dict | None = None,
        teacher: nn.Module | None = None,
        distill: dict | Distillation | None = None,
        **options: Any,
    ) -> None:
        super().__init__()
        if (teacher is None) != (distill is None):
            raise ForcePruneError("teacher= and distill= go together: pass the dense model as teacher and the "
                                  "distillation options, e.g. distill={'temperature': 2.0, 'alpha': 0.5}.")
        if teacher is not None and not isinstance(teacher, nn.Module):
            raise ForcePruneError(f"teacher must be a torch.nn.Module (the dense model), got {type(teacher).__name__}.")
        self.distill = distill if isinstance(distill, Distillation) or distill is None else Distillation(**distill)
        self.teacher = frozen_copy(teacher) if teacher is not None else None
        self._student: tuple | None = None
        self._distill_grads: list | None = None
        self._hook = None
        self.last_distill: float | None = None
        if not (remove_at == "fit_end" or (isinstance(remove_at, int) and not isinstance(remove_at, bool) and remove_at >= 0)):
            raise ForcePruneError(f"remove_at must be 'fit_end' or an epoch index >= 0, got {remove_at!r}.")
        self.force = force
        self.example_inputs = example_inputs
        self.remove_at = remove_at
        self.module = module
        self.ignored_layers = list(ignored_layers or [])
        self.prune_kwargs = dict(prune_kwargs or {})
        self.options = {"capture_every": 0, **options}
        self.pruner: ForcePruner | None = None
        self.reports: list = []
        self.rounds: list[dict] = []
        self.removed = False
        self.last_penalty: float | None = None
        self._pending: dict | None = None

    # -- helpers ---------------------------------------------------------------------------------
    def _target(self, pl_module: nn.Module) -> nn.Module:
        if not self.module:
            return pl_module
        try:
            return pl_module.get_submodule(self.module)
        except AttributeError as exc:
            raise ForcePruneError(f"the LightningModule has no submodule {self.module!r}; check module=.") from exc

    def _inputs(self, pl_module: nn.Module):
        inputs = self.example_inputs
        if inputs is None:
            inputs = getattr(pl_module, "example_input_array", None)
        if inputs is None:
            raise ForcePruneError(
                "ForcePruneCallback needs example inputs: pass example_inputs=... or set "
                "self.example_input_array in your LightningModule."
            )
        return inputs

    def _ignored(self, target: nn.Module) -> tuple[list[nn.Module], list[str]]:
        names = {id(m): n for n, m in target.named_modules()}
        modules, out_names = [], []
        for item in self.ignored_layers:
            if isinstance(item, str):
                try:
                    m = target.get_submodule(item)
                except AttributeError as exc:
                    raise ForcePruneError(f"ignored layer {item!r} is not a submodule of the pruned module.") from exc
                modules.append(m)
                out_names.append(item)
            elif isinstance(item, nn.Module) and id(item) in names:
                modules.append(item)
                out_names.append(names[id(item)])
            else:
                raise ForcePruneError("ignored_layers must hold submodules of the pruned module or their names.")
        return modules, out_names

    def _active(self) -> bool:
        return self.pruner is not None and not self.removed

    # -- setup / resume --------------------------------------------------------------------------
    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        if stage != "fit":
            return
        if pl_module.__dict__.get("_forceprune_resume_hook") is not self:
            callback = self
            original = pl_module.on_load_checkpoint

            def on_load_checkpoint(checkpoint, _original=original):
                callback._prune_to_checkpoint(pl_module, checkpoint)
                return _original(checkpoint)

            pl_module.__dict__["on_load_checkpoint"] = on_load_checkpoint
            pl_module.__dict__["_forceprune_resume_hook"] = self

    def _remove_resume_hook(self, pl_module: nn.Module) -> None:
        if pl_module.__dict__.get("_forceprune_resume_hook") is self:
            pl_module.__dict__.pop("on_load_checkpoint", None)
            pl_module.__dict__.pop("_forceprune_resume_hook", None)

    def _prune_to_checkpoint(self, pl_module: nn.Module, checkpoint: dict) -> None:
        """Before Lightning loads a checkpoint taken after removal: replay its rounds."""
        state = (checkpoint.get("callbacks") or {}).get(self.state_key)
        if not isinstance(state, dict) or not state.get("rounds"):
            return
        target = self._target(pl_module)
        prefix = f"{self.module}." if self.module else ""
        shapes = {
            k[len(prefix):]: tuple(v.shape)
            for k, v in (checkpoint.get("state_dict") or {}).items()
            if k.startswith(prefix) and torch.is_tensor(v)
        }
        current = target.state_dict()
        if all(k in current and tuple(current[k].shape) == s for k, s in shapes.items()):
            return  # already at the checkpoint's shapes
        _, ignored_names = self._ignored(target)
        plan = plan_from_rounds(
            state["rounds"],
            model_identity=identify_model(target),
            ignored_layers=ignored_names,
            ignore_output_layers=self.options.get("ignore_output_layers", True),
        )
        replay_plan(target, plan, self._inputs(pl_module))
        ensure_biases(target, shapes)

    # -- training --------------------------------------------------------------------------------
    def on_fit_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self.pruner is None and not self.removed:  # resumed after removal: nothing left to do
            target = self._target(pl_module)
            ignored, _ = self._ignored(target)
            optimizers = list(trainer.optimizers)
            self.pruner = ForcePruner(
                target,
                self._inputs(pl_module),
                self.force,
                ignored_layers=ignored,
                optimizer=optimizers[0] if len(optimizers) == 1 else None,
                **self.options,
            )
        if self._pending is not None and self.pruner is not None:
            pending, self._pending = self._pending, None
            if pending.get("pruner") is not None:
                self.pruner.load_state_dict(pending["pruner"])

    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._remove_resume_hook(pl_module)  # every checkpoint restore is done by now
        if self.teacher is not None:
            self.teacher.to(pl_module.device)

    # -- distillation ------------------------------------------------------------------------------
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.teacher is None:
            return
        self._student = None

        def capture(module, args, kwargs, output):
            if self._student is None and module.training and torch.is_grad_enabled():
                self._student = (args, kwargs, output)

        if self._hook is None:
            self._hook = self._target(pl_module).register_forward_hook(capture, with_kwargs=True)

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        """Differentiate the distillation term now, while the student's graph is alive; its
        gradient is added after the main backward (as the penalty's is)."""
        self._distill_grads = None
        if self.teacher is None or self._student is None:
            return
        args, kwargs, output = self._student
        self._student = None
        with torch.no_grad():
            teacher_out = self.teacher(*args, **kwargs)
        term = self.distill.alpha * kl_loss(_logits(output), _logits(teacher_out), self.distill.temperature)
        params = [p for p in self._target(pl_module).parameters() if p.requires_grad]
        self._distill_grads = list(zip(params, torch.autograd.grad(term * self._loss_scale(trainer), params,
                                                                   retain_graph=True, allow_unused=True)))
        self.last_distill = float(term.detach())

    def _remove_distill_hook(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def penalty_gradient(self, scale: float = 1.0) -> float:
        """Add ``scale * d penalty / d w`` to every parameter's ``.grad``; returns the penalty."""
        pruner = self.pruner
        penalty = pruner.penalty()
        params = [p for p in pruner.model.parameters() if p.requires_grad]
        grads = torch.autograd.grad(penalty * scale, params, allow_unused=True)
        with torch.no_grad():
            for p, g in zip(params, grads):
                if g is None:
                    continue
                if p.grad is None:
                    p.grad = g.detach().clone()
                else:
                    p.grad.add_(g)
        return float(penalty.detach())

    @staticmethod
    def _loss_scale(trainer) -> float:
        """How Lightning scales the loss before backward: 1 / accumulate_grad_batches, and the
        AMP loss scale for ``16-mixed``."""
        scale = 1.0 / max(int(getattr(trainer, "accumulate_grad_batches", 1) or 1), 1)
        scaler = getattr(getattr(trainer, "precision_plugin", None), "scaler", None)
        if scaler is not None and hasattr(scaler, "get_scale"):
            scale *= float(scaler.get_scale())
        return scale

    def on_after_backward(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self._distill_grads:
            with torch.no_grad():
                for p, g in self._distill_grads:
                    if g is not None:
                        p.grad = g.detach().clone() if p.grad is None else p.grad.add_(g)
            self._distill_grads = None
        if not self._active():
            return
        self.last_penalty = self.penalty_gradient(self._loss_scale(trainer))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self._active():
            return
        self.pruner.step()
        if self.last_penalty is not None:
            pl_module.log("forceprune/penalty", self.last_penalty, on_step=True, on_epoch=False)

    def on_train_epoch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if not self._active():
            return
        self.pruner.capture()
        if is_distributed():
            broadcast_capture_state(self.pruner)
        zero = self.pruner.units_captured
        pl_module.log("forceprune/units_captured", float(zero), on_step=False, on_epoch=True)
        if self.remove_at != "fit_end" and trainer.current_epoch == self.remove_at:
            self._remove(trainer, pl_module)

    def on_train_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._remove_distill_hook()
        if self.remove_at == "fit_end" and self._active():
            self._remove(trainer, pl_module)

    def _remove(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        optimizers = list(trainer.optimizers)
        report = prune_in_lockstep(self.pruner, optimizers or None, **self.prune_kwargs)
        self.reports.append(report)
        self.rounds += rounds_from_history([report], self.pruner.unit_sets)
        self.removed = True
        wrapped = trainer.strategy.model
        if isinstance(wrapped, DistributedDataParallel):
            trainer.strategy.model = rewrap_ddp(wrapped)

    # -- checkpoint state ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        pruner_state = self.pruner.state_dict() if self.pruner is not None else (self._pending or {}).get("pruner")
        return {
            "version": _STATE_VERSION,
            "removed": self.removed,
            "rounds": self.rounds,
            "pruner": None if self.removed else pruner_state,
        }

    def load_state_dict(self, state_dict: dict) -> None:
        if not isinstance(state_dict, dict) or state_dict.get("version") != _STATE_VERSION:
            raise ForcePruneError(
                "this checkpoint's ForcePruneCallback state is from an incompatible forceprune version; resume "
                "with the forceprune that wrote it, or start a new fit from the weights only."
            )
        self.removed = bool(state_dict.get("removed", False))
        self.rounds = list(state_dict.get("rounds") or [])
        self._pending = {"pruner": state_dict.get("pruner")}
        if self.pruner is not None:
            pending, self._pending = self._pending, None
            if pending["pruner"] is not None:
                self.pruner.load_state_dict(pending["pruner"])


def _logits(output) -> torch.Tensor:
    """The logits in a module's output: the tensor itself, ``.logits``, or the first tensor."""
    if torch.is_tensor(output):
        return output
    if getattr(output, "logits", None) is not None:
        return output.logits
    if isinstance(output, (tuple, list)) and output and torch.is_tensor(output[0]):
        return output[0]
    raise ForcePruneError(f"cannot find the logits in the module's output ({type(output).__name__}); distil from a "
                          "module that returns a tensor, a tuple starting with one, or an object with .logits.")
