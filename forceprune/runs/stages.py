"""The stages of a run: training (dense baseline, then the force) and removal (then
fine-tuning, measuring and the report). :mod:`forceprune.runs.pipeline` strings them together;
benchmarks call them directly.

Report schema (every task): accuracies in percent on the task's evaluation split
(``eval_split``): ``acc_dense``, ``acc_before_removal``, ``acc_after_removal``, ``acc_final``
(the last epoch's model: nothing is selected), ``acc_<split>`` for further held-out splits
(``extra_splits``), and for language models the same with ``ppl_`` (perplexity); ``macs_*`` /
``params_*`` per sample; ``latency_ms_before`` / ``_after`` per input label;
``max_output_error`` of the removal; ``layers`` (widths); ``history`` (one record per epoch).
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from torch import nn

from .._version import software_versions
from ..budget import TARGET_KEYS
from ..checkpoint import write_json
from ..distill import Distillation, distilled, frozen_copy
from ..metrics import count_macs_params, side_by_side_latency
from .config import RunConfig
from .loop import Trainer, evaluate, seed_everything
from .rundir import PRUNED_DIR, REPORT_FILE, Claim, RunLock, checkpoint_path, complete_checkpoint

ACC_BEST_NOTE = ("highest evaluation accuracy of any epoch (force training or fine-tuning); for reference only, "
                 "NOT used for model selection: the reported and saved model is the last epoch's")
MethodFactory = Callable[[Any, nn.Module, int], Any]


@dataclass
class Run:
    """Where a run writes and how it talks: ``checkpoints=False`` trains without writing any."""

    out_dir: Path
    progress: bool = True
    command: str = ""
    checkpoints: bool = True
    started: float = field(default_factory=time.perf_counter)
    lock: RunLock | None = None
    claim: Claim | None = None

    def checkpoint(self, phase: str) -> Path | None:
        return checkpoint_path(self.out_dir, phase) if self.checkpoints else None

    def checkpoint_written(self) -> None:
        """The run has a checkpoint: files an overwrite replaced are not needed any more."""
        if self.claim is not None:
            self.claim.commit()

    def log(self, message: str) -> None:
        if self.progress:
            import sys

            print(message, file=sys.stderr, flush=True)


@dataclass
class Trained:
    """The training stage's result: the force-trained model and its method, before removal,
    and the teacher (the dense model) when the run distils."""

    model: nn.Module
    method: Any
    history: list[dict[str, Any]]
    acc_dense: float | None
    teacher: nn.Module | None = None


def build_method(task, model: nn.Module, total_steps: int, calibrate: bool = True) -> Any:
    """The pruning method of the task's config: a :class:`~forceprune.ForcePruner` (with
    ``calibrate``, calibrated as :func:`calibrate_method` says), a baseline, or None
    (``force = "none"``: nothing is pruned)."""
    from ..baselines import FISHER, GROUP_NORM, WANDA, FisherSearch, GroupNormWidths, WandaSp
    from ..pruner import ForcePruner

    c, options = task.config, task.method_options(model)
    if c.force == "none":
        return None
    if c.force == GROUP_NORM:
        return GroupNormWidths(model, task.example_inputs, c.widths, **options)
    if c.force == WANDA:
        return WandaSp(model, task.example_inputs, c.widths, task.train_batches, lambda m, b: task.objective(m, b),
                       max_batches=_calibration_batches(c), **options)
    if c.force == FISHER:  # Kwon et al. use 2,048 calibration samples
        return FisherSearch(model, task.example_inputs, c.target_macs, task.train_batches, lambda m, b: task.objective(m, b)[0],
                            max_batches=_fisher_batches(c), **options)
    targets = task.targets(model) if hasattr(task, "targets") else {}
    targets = targets or {k: getattr(c, k) for k in TARGET_KEYS if getattr(c, k) is not None}
    budget = {"total_steps": total_steps, "budget": dict(c.budget)} if targets else {}
    pruner = ForcePruner(model, task.example_inputs, force=c.force, capture=c.capture, threshold=c.threshold,
                         capture_every=c.capture_every, snap=c.snap, cost_power=c.cost_power, spare_keepers=c.spare_keepers,
                         **options, **targets, **budget, **c.force_options)
    if calibrate:
        calibrate_method(task, pruner)
    return pruner


def calibrate_method(task, pruner) -> None:
    """With ``importance = "activation"``, measure the input norms that rank the pruner's units,
    on 128 training samples (as Wanda calibrates) of the model as it is now; with ``"fisher"``,
    fix the units the force pushes by the Fisher mask search to ``target_macs`` on 2,048 (the widths
    it keeps rounded as the budget's ``min_width`` and ``round_to`` say)."""
    from ..budget_selection import kept_width
    from ..fisher_search import removal_masks

    c = task.config
    if c.importance == "activation":
        pruner.calibrate(task.train_batches, lambda m, b: task.objective(m, b), max_batches=_calibration_batches(c))
    elif c.importance == "fisher":
        budget = pruner.controller.budget
        pruner.set_pushed_units(removal_masks(pruner.model, pruner.unit_sets, task.example_inputs, c.target_macs,
                                              task.train_batches, lambda m, b: task.objective(m, b)[0],
                                              _fisher_batches(c), lambda kept, size: kept_width(kept, size, budget)))


def _fisher_batches(c) -> int:
    """Training batches holding 2,048 samples, what Kwon et al. calibrate the Fisher search on."""
    return -(-2048 // c.batch_size)


def _calibration_batches(c) -> int:
    """Training batches holding 128 samples, what Wanda calibrates on."""
    return -(-128 // c.batch_size)


def _objective(task, teacher: nn.Module | None):
    """The task's objective, distilled from ``teacher`` when there is one."""
    if teacher is None:
        return task.objective
    return distilled(task.objective, teacher, Distillation(**task.config.distill))


def _fit(task, run: Run, phase_name: str, model: nn.Module, method: Any, resume: bool,
         teacher: nn.Module | None = None, evaluate_first: bool = False) -> list[dict[str, Any]]:
    c = task.config
    trainer = Trainer(model, task.phase(phase_name), task.train_batches, task.eval_batches, _objective(task, teacher),
                      device=task.device, method=method, force_mode=c.force_mode, amp=getattr(c, "amp", False),
                      checkpoint_path=run.checkpoint(phase_name), progress=run.progress, meta=c.to_dict(),
                      log_every=getattr(c, "log_every", 0), on_checkpoint=run.checkpoint_written,
                      evaluate_first=evaluate_first, eval_objective=task.objective)
    if resume and trainer.resume():
        run.log(f"resumed {phase_name} phase after epoch {trainer.epoch}/{trainer.epochs}")
    return trainer.fit()


def train_stage(task, run: Run, *, resume: bool = False, method_factory: MethodFactory | None = None) -> Trained:
    """Dense baseline (if ``dense_epochs``) and force training, each resumable from its checkpoint.
    ``method_factory(task, model, total_steps)`` replaces :func:`build_method` (benchmarks)."""
    c = task.config
    history: list[dict[str, Any]] = []
    acc_dense, dense = None, None
    if c.dense_epochs > 0:
        dense = task.build_model()
        history += _fit(task, run, "dense", dense, None, resume)
        acc_dense = history[-1]["eval_acc"]
    model, teacher = _start_of_force_phase(task, dense)
    total = task.phase("force").total_steps(max(len(task.train_batches), 1))
    method = (method_factory or build_method)(task, model, total)
    # a pretrained model with no dense phase is itself the dense baseline: evaluate it first
    start = dense is None and getattr(task, "perplexity", False)
    history += _fit(task, run, "force", model, method, resume, teacher, evaluate_first=start)
    if start:
        acc_dense = history[0]["eval_acc"]
    return Trained(model, method, history, acc_dense, teacher)


def _start_of_force_phase(task, dense: nn.Module | None) -> tuple[nn.Module, nn.Module | None]:
    """The model the force phase starts from (the dense phase's, with ``init_from_dense``) and
    the teacher (with ``distill``: a frozen copy of the dense model, or of the starting model
    when that is the dense baseline, a pretrained language model)."""
    c = task.config
    model = task.build_model()
    if c.init_from_dense:
        model.load_state_dict(dense.state_dict())
    if not c.distill:
        return model, None
    return model, frozen_copy(dense if dense is not None else model)


def load_trained(task, run: Run) -> Trained:
    """Rebuild the training stage's result from a run directory's complete checkpoints."""
    history: list[dict[str, Any]] = []
    acc_dense, dense = None, None
    if task.config.dense_epochs > 0:
        dense_state = complete_checkpoint(run.out_dir, "dense", _epochs(task, "dense"), task.device, task.config.to_dict())
        history += dense_state["history"]
        acc_dense = history[-1]["eval_acc"]
        dense = task.build_model()
        dense.load_state_dict(dense_state["model"])
    state = complete_checkpoint(run.out_dir, "force", _epochs(task, "force"), task.device, task.config.to_dict())
    if state["history"] and state["history"][0]["phase"] == "start":
        acc_dense = state["history"][0]["eval_acc"]
    model, teacher = _start_of_force_phase(task, dense)
    model.load_state_dict(state["model"])
    method = build_method(task, model, task.phase("force").total_steps(max(len(task.train_batches), 1)))
    if method is not None:
        method.load_state_dict(state["pruner"])
    return Trained(model, method, history + state["history"], acc_dense, teacher)


def _epochs(task, phase: str) -> int:
    """How many (possibly partial) epochs a phase has: its checkpoint is complete after that many."""
    steps_per_epoch = max(len(task.train_batches), 1)
    return -(-task.phase(phase).total_steps(steps_per_epoch) // steps_per_epoch)


def prune_stage(task, run: Run, trained: Trained, *, resume: bool = False, write: bool = True,
                before_removal: Callable[[nn.Module, Any], None] | None = None) -> dict[str, Any]:
    """Remove units, fine-tune, measure side by side and (with ``write``) save report, pictures
    and model. ``before_removal(model, method)`` runs first (benchmarks measure overheads there)."""
    c, model, method = task.config, trained.model, trained.method
    if before_removal is not None:
        before_removal(model, method)

    def scores(stage: str, batches=None) -> dict[str, float]:
        """``acc_<stage>`` (and ``ppl_<stage>`` for language models) of the model now."""
        result = evaluate(model, task.eval_batches if batches is None else batches, task.objective)
        return _scores(task, stage, result.accuracy, result.loss)

    described = {f"{k}_before": v for k, v in task.describe(model).items()}
    before = scores("before_removal")
    force_field = method.force_field() if method is not None else []
    unit_kinds = {us.name: us.kind for us in getattr(method, "unit_sets", [])}
    controller = getattr(method, "controller", None)
    dense_copy = copy.deepcopy(model)
    macs_dense, params_dense = count_macs_params(model, task.example_inputs)
    removal, after = None, _scores(task, "after_removal", None, None)
    if method is not None:
        removal = method.prune(widths=c.widths, calibration_inputs=task.calibration_inputs) if c.widths is not None \
            else method.prune(calibration_inputs=task.calibration_inputs)
        model = task.formatted(model)
        run.log(removal.table())
        after = scores("after_removal")
    history = trained.history
    if c.finetune_epochs > 0:
        seed_everything(c.seed, getattr(c, "deterministic", False))  # the same fine-tuning whether run or train + prune
        history = history + _fit(task, run, "finetune", model, None, resume, trained.teacher)
    settings = task.latency_settings()
    latency = {label: side_by_side_latency(dense_copy, model, inputs, **settings)
               for label, inputs in task.latency_inputs().items()}
    macs_after, params_after = count_macs_params(model, task.example_inputs)
    report = {
        "task": c.task_name, "model": c.model, "dataset": c.dataset, "dataset_note": task.dataset_note,
        "force": c.force, "force_options": c.force_options, "seed": c.seed, "epochs": c.epochs,
        "dense_epochs": c.dense_epochs, "finetune_epochs": c.finetune_epochs, "eval_split": task.eval_split,
        **_dense_scores(task, trained), **before, **after, **scores("final"), "extra_splits": list(task.extra_evals),
        **{k: v for name, b in task.extra_evals.items() for k, v in scores(name, b).items()},
        "acc_best": _best_accuracy(history), "acc_best_note": ACC_BEST_NOTE,
        "macs_before": macs_dense, "macs_after": macs_after, "macs_reduction": macs_dense / max(macs_after, 1),
        "params_before": params_dense, "params_after": params_after, "params_reduction": params_dense / max(params_after, 1),
        "latency_ms_before": {k: v[0] for k, v in latency.items()}, "latency_ms_after": {k: v[1] for k, v in latency.items()},
        "latency_note": f"median ms per forward pass on {task.device.type}, dense and pruned measured side by side",
        "max_output_error": removal.max_output_error if removal is not None else None,
        "layers": removal.layers if removal is not None else [],
        "removal_warnings": removal.warnings if removal is not None else [], "unit_kinds": unit_kinds,
        "budget": controller.describe() if controller is not None else None,
        **described, **{f"{k}_after": v for k, v in task.describe(model).items()},
        **(task.facts() if hasattr(task, "facts") else {}),
        **({"comparison": task.compare(dense_copy, model)} if hasattr(task, "compare") else {}),
        "history": history, "force_field": force_field,
        "train_wall_s": sum(r["wall_s"] for r in history), "wall_s": time.perf_counter() - run.started,
        "command": run.command, "config": c.to_dict(), "versions": software_versions(task.device),
        "pruned_model": None,
    }
    if write:
        if method is not None:
            task.save(model, method, run.out_dir / PRUNED_DIR, origin(c))
            report["pruned_model"] = PRUNED_DIR
        write_report(report, run.out_dir)
    return report


def _scores(task, stage: str, accuracy: float | None, loss: float | None) -> dict[str, float | None]:
    out = {f"acc_{stage}": accuracy}
    if getattr(task, "perplexity", False):
        out[f"ppl_{stage}"] = math.exp(min(loss, 50.0)) if loss is not None else None
    return out


def _dense_scores(task, trained: Trained) -> dict[str, float | None]:
    """The dense model's scores: the dense phase's last epoch, or the evaluation of the
    starting (pretrained) model when it is the dense baseline."""
    first = [r for r in trained.history if r["phase"] in ("dense", "start")]
    record = ([r for r in first if r["phase"] == "dense"] or first or [None])[-1]
    if record is None:
        return _scores(task, "dense", None, None)
    return _scores(task, "dense", record["eval_acc"], record.get("eval_loss"))


def _best_accuracy(history: list[dict[str, Any]]) -> float | None:
    accs = [r["eval_acc"] for r in history if r["phase"] in ("force", "finetune")]
    return max(accs) if accs else None


def write_report(report: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write report.json (atomically), the pictures and report.html."""
    from ..visual import render_report

    write_json(report, out_dir / REPORT_FILE)
    return render_report(report, out_dir)


def origin(config: RunConfig) -> dict:
    """What a run's pruned model was made from (task, model, dataset) with a checksum of it:
    recorded in its plan, checked by :func:`evaluate_run`."""
    entry = {"task": config.task_name, "model": config.model, "dataset": config.dataset}
    return {**entry, "sha256": hashlib.sha256(json.dumps(entry, sort_keys=True).encode("utf-8")).hexdigest()}


