"""Torch-Pruning's methods in forceprune's method slot, for side-by-side comparisons.

A *method* is what the training loop (:class:`forceprune.runs.loop.Trainer`) and the run
pipeline drive: ``penalty()``, ``step()``, ``capture()`` (epoch end), ``attach_optimizer()``,
``summary()``, ``force_field()``, ``state_dict()`` and, after training, ``prune()`` returning a
:class:`~forceprune.PruneReport`. :class:`~forceprune.ForcePruner` is one; these are the others.

* :class:`TorchPruningMethod` (``"tp_l1"``, ``"tp_group_norm"``): magnitude pruning (L1 norm
  of each channel group, ``tp.importance.MagnitudeImportance(p=1)``, no regularisation) or
  DepGraph's group sparse learning (``tp.pruner.GroupNormPruner``, whose ``regularize(model)``
  edits gradients after ``backward()`` and whose regulariser is updated once per epoch, as in
  Torch-Pruning's ``reproduce/main.py``); removal with Torch-Pruning's own progressive loop:
  global pruning in many small steps until the MACs target is met.
* :class:`GroupNormWidths` (``force = "tp-group-norm"`` in a run config): no regularisation;
  after training, keep in each unit set the units with the largest Torch-Pruning
  ``GroupMagnitudeImportance`` (group L2 norm over every coupled layer, summed over a head's
  channels) down to given widths -- forceprune's unit sets, so heads and FFN neurons of
  transformers too, and the same surgery as the force methods. With one width for every layer
  it is Torch-Pruning's LLM recipe (magnitude, uniform widths).
* :class:`WandaSp` (``force = "wanda-sp"``): one-shot structured Wanda: units ranked by
  ``|W| x ||X||`` of the weights that read them, from calibration activations, down to given
  widths -- the activation-aware thing a user would try first on a language model.

* :class:`FisherSearch` (``force = "fisher-search"``): no training-time force; after training,
  Kwon et al. 2022's post-training mask search from the Fisher information of unit masks on
  calibration batches, with its mask rearrangement (:mod:`forceprune.fisher_search`), down to
  a MACs target -- the cheap thing a user would try first.

The Torch-Pruning methods themselves are Torch-Pruning's, unchanged; this module adapts their
calling conventions.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import torch
import torch.nn as nn
import torch_pruning as tp

from ._torch import eval_mode, model_device
from .activations import activation_scores, input_norms
from .errors import ForcePruneError
from .metrics import count_macs_params
from .removal import RemovalPlan, remove
from .report import PruneReport
from .units import build_unit_sets

METHODS = ("tp_l1", "tp_group_norm")
GROUP_NORM = "tp-group-norm"
FISHER = "fisher-search"
WANDA = "wanda-sp"


class _NoForce:
    """The training-loop verbs of a method that adds no force and captures nothing."""

    model: nn.Module

    def penalty(self) -> torch.Tensor:
        return torch.zeros((), device=model_device(self.model))

    def proximal_step(self, lr: float | None = None) -> None:
        pass

    def step(self) -> None:
        pass

    def capture(self) -> int:
        return 0

    def attach_optimizer(self, optimizer) -> None:
        pass

    def force_field(self) -> list:
        return []

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class TorchPruningMethod(_NoForce):
    """A Torch-Pruning pruner with the interface our training loop calls.

    Args:
        model, example_inputs: as for ``ForcePruner`` (a batch of one for MACs per sample).
        method: ``"tp_l1"`` or ``"tp_group_norm"``.
        target_macs: the fraction of the dense MACs :meth:`prune` removes down to.
        ignored_layers: layers never pruned (the classifier).
        reg: group-norm regularisation strength (Torch-Pruning's reproduce default, 5e-4).
        iterative_steps: granularity of the progressive removal loop.
    """

    def __init__(self, model: nn.Module, example_inputs, method: str = "tp_group_norm", target_macs: float = 0.5,
                 ignored_layers: Sequence[nn.Module] = (), reg: float = 5e-4, iterative_steps: int = 400,
                 regularize: bool = True):
        if method not in METHODS:
            raise ForcePruneError(f"unknown torch-pruning method {method!r}; choose one of {METHODS}.")
        if not 0 < target_macs < 1:
            raise ForcePruneError(f"target_macs must be in (0, 1), got {target_macs!r}.")
        self.model, self.example_inputs, self.method, self.target_macs = model, example_inputs, method, target_macs
        self.regularize = regularize and method == "tp_group_norm"
        importance = tp.importance.GroupMagnitudeImportance(p=2) if method == "tp_group_norm" \
            else tp.importance.MagnitudeImportance(p=1)
        cls = tp.pruner.GroupNormPruner if method == "tp_group_norm" else tp.pruner.BasePruner
        kwargs = {"reg": reg} if method == "tp_group_norm" else {}
        self.tp_pruner = cls(model, example_inputs, importance=importance, global_pruning=True, pruning_ratio=1.0,
                             max_pruning_ratio=1.0, iterative_steps=iterative_steps,
                             ignored_layers=list(ignored_layers), **kwargs)
        self.macs_dense, self.params_dense = count_macs_params(model, example_inputs)

    def after_backward(self) -> None:
        if self.regularize:
            self.tp_pruner.regularize(self.model)

    def capture(self) -> int:
        """Called at each epoch end: update the regulariser (Torch-Pruning's per-epoch call)."""
        if self.regularize:
            self.tp_pruner.update_regularizer()
        return 0

    def summary(self) -> dict:
        macs, params = count_macs_params(self.model, self.example_inputs)
        return {"units_total": 0, "units_zero": 0, "macs_dense": self.macs_dense, "params_dense": self.params_dense,
                "macs_if_pruned": macs, "params_if_pruned": params}

    def prune(self, widths=None, tolerance: float = 0.0, calibration_inputs=None) -> PruneReport:
        """Remove channels progressively (global ranking) until MACs <= ``target_macs`` x dense."""
        if widths is not None:
            raise ForcePruneError(f"{self.method} prunes to target_macs with Torch-Pruning's own loop; it takes no widths.")
        macs, steps = self.macs_dense, 0
        with eval_mode(self.model):
            while macs > self.target_macs * self.macs_dense and steps < self.tp_pruner.iterative_steps:
                self.tp_pruner.step()
                steps += 1
                macs, _ = count_macs_params(self.model, self.example_inputs)
        macs, params = count_macs_params(self.model, self.example_inputs)
        return PruneReport(mode=self.method, macs_before=self.macs_dense, macs_after=macs, params_before=self.params_dense,
                           params_after=params, max_output_error=None,
                           warnings=[f"{self.method}: {steps} progressive Torch-Pruning steps (not lossless)"])


class _RankedWidths(_NoForce, ABC):
    """No regularisation; after training, keep in each unit set the ``widths`` highest-scoring
    units (``scores(us)``, one number per unit) and remove the rest with forceprune's surgery.

    Args:
        model, example_inputs: as for ``ForcePruner``.
        widths: ``{unit set name: units kept}`` (sets not named keep every unit).
        ignored_layers, ignore_output_layers: as for ``ForcePruner``.
        kinds: keep only unit sets of these kinds (``"head"``, ``"neuron"``, ``"channel"``, ...).
    """

    mode = ""

    def __init__(self, model: nn.Module, example_inputs, widths: dict[str, int], ignored_layers: Sequence[nn.Module] = (),
                 ignore_output_layers: bool = True, kinds: Sequence[str] | None = None):
        self.model, self.example_inputs, self.widths = model, example_inputs, dict(widths or {})
        self.ignored_layers, self.ignore_output_layers = list(ignored_layers), ignore_output_layers
        self.graph, unit_sets = build_unit_sets(model, example_inputs, self.ignored_layers,
                                                ignore_output_layers=ignore_output_layers)
        self.unit_sets = [us for us in unit_sets if kinds is None or us.kind in kinds]
        unknown = sorted(set(self.widths) - {us.name for us in self.unit_sets})
        if unknown:
            raise ForcePruneError(f"widths names unknown unit sets {unknown}; valid: {[us.name for us in self.unit_sets]}.")
        self.force = None
        self.history: list[PruneReport] = []
        self.macs_dense, self.params_dense = count_macs_params(model, example_inputs)

    def summary(self) -> dict:
        return {"units_total": sum(us.size for us in self.unit_sets), "units_zero": 0, "macs_dense": self.macs_dense,
                "params_dense": self.params_dense, "macs_if_pruned": self.macs_dense, "params_if_pruned": self.params_dense}

    @abstractmethod
    def scores(self, us) -> torch.Tensor:
        """``(G,)`` importance of each unit of ``us`` (higher = kept first)."""

    def prune(self, widths=None, tolerance: float = 0.0, calibration_inputs=None) -> PruneReport:
        """Keep the ``widths`` strongest units of each named set; report the change (not lossless)."""
        widths = self.widths if widths is None else widths
        plans = []
        for us in self.unit_sets:
            k = int(widths.get(us.name, us.size))
            if k >= us.size:
                continue
            rem = torch.ones(us.size, dtype=torch.bool)
            rem[torch.argsort(self.scores(us), descending=True, stable=True)[: max(1, k)]] = False
            plans.append(RemovalPlan(us, rem, torch.zeros(us.size, dtype=torch.bool)))
        calib = self.example_inputs if calibration_inputs is None else calibration_inputs
        report = remove(self.model, self.graph, plans, self.example_inputs, calib, mode=self.mode)
        self.history.append(report)
        return report


class GroupNormWidths(_RankedWidths):
    """Torch-Pruning's group-magnitude ranking down to given widths, on forceprune's unit sets:
    a unit's score is Torch-Pruning's ``GroupMagnitudeImportance(p=2)`` (group L2 norm over
    every coupled layer) summed over its channels. With the same width in every layer this is
    Torch-Pruning's LLM recipe (magnitude, uniform widths). Arguments as :class:`_RankedWidths`."""

    mode = GROUP_NORM

    def scores(self, us) -> torch.Tensor:
        importance = tp.importance.GroupMagnitudeImportance(p=2)
        group = self.graph.get_pruning_group(us.root, us.root_fn, list(range(us.size * us.channels_per_unit)))
        with torch.no_grad(), eval_mode(self.model):
            return importance(group).float().cpu().view(us.size, us.channels_per_unit).sum(1)


class WandaSp(_RankedWidths):
    """Structured Wanda ("Wanda-sp", An et al. 2024, FLAP's baseline): one-shot, no training.
    A unit's score is ``sum |W_ij| * ||X_j||_2`` over the weights that *read* its channels (the
    columns of the next layer: ``o_proj`` for a head, ``down_proj`` for an FFN neuron), with
    ``||X_j||_2`` the L2 norm of input channel ``j`` over every calibration token.

    Args:
        calibration: batches to measure the input norms on (e.g. training batches).
        run_batch: ``run_batch(model, batch)`` runs the model forward on a batch.
        max_batches: calibration batches used (Wanda uses 128 sequences).
        the rest: as :class:`_RankedWidths`.
    """

    mode = WANDA

    def __init__(self, model: nn.Module, example_inputs, widths: dict[str, int], calibration, run_batch,
                 max_batches: int = 32, **options):
        super().__init__(model, example_inputs, widths, **options)
        self.calibration, self.run_batch, self.max_batches = calibration, run_batch, int(max_batches)
        self._norms: dict[int, torch.Tensor] | None = None

    def scores(self, us) -> torch.Tensor:
        if self._norms is None:
            self._norms = input_norms(self.model, self.unit_sets, self.calibration, self.run_batch, self.max_batches)
        return activation_scores(us, self._norms)


class FisherSearch(_NoForce):
    """Post-training pruning to a MACs target by Fisher-based mask search and rearrangement
    (:mod:`forceprune.fisher_search`), on forceprune's unit sets.

    Args:
        model, example_inputs: as for ``ForcePruner`` (a batch of one: MACs per sample).
        target_macs: the fraction of the dense model's MACs to keep, in (0, 1).
        calibration: batches to estimate the Fisher information on (e.g. training batches).
        loss_of: ``loss_of(model, batch)`` -> the scalar task loss of a batch.
        max_batches: calibration batches used (Kwon et al. use 2,048 samples).
        ignored_layers, ignore_output_layers, kinds: as for ``ForcePruner``.
    """

    def __init__(self, model: nn.Module, example_inputs, target_macs: float, calibration, loss_of,
                 max_batches: int = 64, ignored_layers: Sequence[nn.Module] = (), ignore_output_layers: bool = True,
                 kinds: Sequence[str] | None = None):
        if not (isinstance(target_macs, (int, float)) and 0 < target_macs < 1):
            raise ForcePruneError(f"{FISHER} needs target_macs in (0, 1), got {target_macs!r}.")
        self.model, self.example_inputs, self.target_macs = model, example_inputs, float(target_macs)
        self.calibration, self.loss_of, self.max_batches = calibration, loss_of, int(max_batches)
        self.ignored_layers, self.ignore_output_layers = list(ignored_layers), ignore_output_layers
        self.kinds = kinds
        self.force = None
        self.history: list[PruneReport] = []
        self.graph, self.unit_sets = self._unit_sets()
        self.macs_dense, self.params_dense = count_macs_params(model, example_inputs)

    def _unit_sets(self):
        graph, unit_sets = build_unit_sets(self.model, self.example_inputs, self.ignored_layers,
                                           ignore_output_layers=self.ignore_output_layers)
        return graph, [us for us in unit_sets if self.kinds is None or us.kind in self.kinds]

    def summary(self) -> dict:
        return {"units_total": sum(us.size for us in self.unit_sets), "units_zero": 0, "macs_dense": self.macs_dense,
                "params_dense": self.params_dense, "macs_if_pruned": self.macs_dense, "params_if_pruned": self.params_dense}

    def removal_masks(self) -> list[torch.Tensor]:
        """Per unit set, the ``(G,)`` removal mask of the search (the model is not changed)."""
        from .fisher_search import removal_masks

        self.graph, self.unit_sets = self._unit_sets()  # training replaced no parameter, but be safe
        return removal_masks(self.model, self.unit_sets, self.example_inputs, self.target_macs, self.calibration,
                             self.loss_of, self.max_batches)

    def prune(self, widths=None, tolerance: float = 0.0, calibration_inputs=None) -> PruneReport:
        """Search, rearrange and remove; the report measures the output change (not lossless)."""
        if widths is not None:
            raise ForcePruneError(f"{FISHER} prunes to target_macs by its own search; it takes no widths.")
        plans = [RemovalPlan(us, rem, torch.zeros(us.size, dtype=torch.bool)) for us, rem in zip(self.unit_sets, self.removal_masks())]
        calib = self.example_inputs if calibration_inputs is None else calibration_inputs
        report = remove(self.model, self.graph, plans, self.example_inputs, calib, mode=FISHER)
        self.history.append(report)
        return report
