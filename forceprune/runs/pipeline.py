"""The one run pipeline, for every task.

``run(config)``: (optional dense baseline) -> training with the force -> capture -> removal of
the captured units -> (optional fine-tuning) -> the dense and pruned models measured side by
side -> ``report.json``, pictures, ``report.html`` and the pruned model in ``config.output_dir``.

It is two stages that can also be called alone (``forceprune train`` / ``forceprune prune``):
:func:`train` runs the training phases, checkpointing every epoch to
``<run>/checkpoints/{dense,force,finetune}.pt``; :func:`prune` loads a trained run directory,
removes units and writes the report. Every phase resumes from its checkpoint. The task adapter
(:mod:`forceprune.runs.tasks`) supplies data, model, objective and recipes; the pruning method
is a :class:`~forceprune.ForcePruner` or a baseline (:mod:`forceprune.baselines`).

Report schema (every task): accuracies in percent on the task's evaluation split
(``eval_split``): ``acc_dense``, ``acc_before_removal``, ``acc_after_removal``, ``acc_final``
(the last epoch's model: nothing is selected), ``acc_<split>`` for further held-out splits;
``macs_*`` / ``params_*`` per sample; ``latency_ms_before`` / ``_after`` per batch label;
``max_output_error`` of the removal; ``layers`` (widths); ``history`` (one record per epoch).
"""
from __future__ import annotations

import copy
import hashlib
import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from torch import nn

from .._version import software_versions
from ..budget import TARGET_KEYS
from ..checkpoint import write_json
from ..distill import Distillation, distilled, frozen_copy
from ..metrics import count_macs_params, side_by_side_latency
from .config import ConfigError, RunConfig
from .loop import Trainer, evaluate, seed_everything
from .rundir import (
    CONFIG_FILE, PRUNED_DIR, REPORT_FILE, Claim, RunDirError, RunLock, check_output_dir, check_resumable,
    check_writable, checkpoint_path, complete_checkpoint, report_artifacts, saved_config,
)
from .tasks import config_from_dict, open_task

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


def build_method(task, model: nn.Module, total_steps: int) -> Any:
    """The pruning method of the task's config: a :class:`~forceprune.ForcePruner`, a baseline,
    or None (``force = "none"``: nothing is pruned)."""
    from ..baselines import FISHER, GROUP_NORM, FisherSearch, GroupNormWidths
    from ..pruner import ForcePruner

    c, options = task.config, task.method_options(model)
    if c.force == "none":
        return None
    if c.force == GROUP_NORM:
        return GroupNormWidths(model, task.example_inputs, c.widths, **options)
    if c.force == FISHER:  # Kwon et al. use 2,048 calibration samples
        return FisherSearch(model, task.example_inputs, c.target_macs, task.train_batches, lambda m, b: task.objective(m, b)[0],
                            max_batches=-(-2048 // c.batch_size), **options)
    targets = {k: getattr(c, k) for k in TARGET_KEYS if getattr(c, k) is not None}
    budget = {"total_steps": total_steps, "budget": dict(c.budget)} if targets else {}
    return ForcePruner(model, task.example_inputs, force=c.force, capture=c.capture, threshold=c.threshold,
                       capture_every=c.capture_every, snap=c.snap, cost_power=c.cost_power, **options, **targets,
                       **budget, **c.force_options)


def _objective(task, teacher: nn.Module | None):
    """The task's objective, distilled from ``teacher`` when there is one."""
    if teacher is None:
        return task.objective
    return distilled(task.objective, teacher, Distillation(**task.config.distill))


def _fit(task, run: Run, phase_name: str, model: nn.Module, method: Any, resume: bool,
         teacher: nn.Module | None = None) -> list[dict[str, Any]]:
    c = task.config
    trainer = Trainer(model, task.phase(phase_name), task.train_batches, task.eval_batches, _objective(task, teacher),
                      device=task.device, method=method, force_mode=c.force_mode, amp=getattr(c, "amp", False),
                      checkpoint_path=run.checkpoint(phase_name), progress=run.progress, meta=c.to_dict(),
                      log_every=getattr(c, "log_every", 0), on_checkpoint=run.checkpoint_written)
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
    history += _fit(task, run, "force", model, method, resume, teacher)
    return Trained(model, method, history, acc_dense, teacher)


def _start_of_force_phase(task, dense: nn.Module | None) -> tuple[nn.Module, nn.Module | None]:
    """The model the force phase starts from (the dense phase's, with ``init_from_dense``) and
    the teacher (a frozen copy of the dense model, with ``distill``)."""
    c = task.config
    model = task.build_model()
    if c.init_from_dense:
        model.load_state_dict(dense.state_dict())
    return model, (frozen_copy(dense) if c.distill else None)


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

    def accuracy(batches=None) -> float:
        return evaluate(model, task.eval_batches if batches is None else batches, task.objective).accuracy

    described = {f"{k}_before": v for k, v in task.describe(model).items()}
    acc_before = accuracy()
    force_field = method.force_field() if method is not None else []
    unit_kinds = {us.name: us.kind for us in getattr(method, "unit_sets", [])}
    controller = getattr(method, "controller", None)
    dense_copy = copy.deepcopy(model)
    macs_dense, params_dense = count_macs_params(model, task.example_inputs)
    removal, acc_after = None, None
    if method is not None:
        removal = method.prune(widths=c.widths, calibration_inputs=task.calibration_inputs) if c.widths is not None \
            else method.prune(calibration_inputs=task.calibration_inputs)
        model = task.formatted(model)
        run.log(removal.table())
        acc_after = accuracy()
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
        "acc_dense": trained.acc_dense, "acc_before_removal": acc_before, "acc_after_removal": acc_after,
        "acc_final": accuracy(), "extra_splits": list(task.extra_evals),
        **{f"acc_{name}": accuracy(b) for name, b in task.extra_evals.items()},
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


# -- entry points ------------------------------------------------------------------------------
def _open_run(out: Path, stale_check: Callable[[], list[Path]], progress: bool, command: str) -> Run:
    """Take the directory's lock, check it again (another run may have written meanwhile),
    move what an overwrite replaces aside and return the run; on any failure the directory
    is left as it was."""
    existed = out.exists()
    run = Run(out, progress=progress, command=command, lock=RunLock(out))
    run.lock.acquire()
    try:
        run.claim = Claim(out, stale_check())
    except BaseException:
        run.lock.release()
        if not existed:
            try:
                out.rmdir()
            except OSError:
                pass
        raise
    return run


@contextmanager
def _writing(run: Run) -> Iterator[None]:
    """While a stage writes into the run directory: on failure before the first checkpoint the
    claim is rolled back (nothing lost, nothing left); the lock is released either way."""
    try:
        yield
    except BaseException:
        if run.claim is not None:
            run.claim.rollback()
        raise
    else:
        run.checkpoint_written()
    finally:
        if run.lock is not None:
            run.lock.release()


def _start(config: RunConfig, command: str, config_path, overwrite: bool, resume: bool, progress: bool):
    """Check everything (directory, resumability, writability, data), then -- only then --
    take the directory and write the config into it."""
    protected = tuple(p for p in (config_path,) if p is not None)
    out = Path(config.output_dir)

    def stale() -> list[Path]:
        return check_output_dir(out, overwrite=overwrite, resume=resume, protected=protected)

    check_writable(out)
    stale()
    if resume:
        check_resumable(out, config.to_dict())
    task = open_task(config)
    run = _open_run(out, stale, progress, command)
    with _undo_on_failure(run):
        write_json(config.to_dict(), out / CONFIG_FILE)
    return task, run


@contextmanager
def _undo_on_failure(run: Run) -> Iterator[None]:
    try:
        yield
    except BaseException:
        run.claim.rollback()
        run.lock.release()
        raise


def run(config: RunConfig, *, command: str = "", config_path: str | Path | None = None, overwrite: bool = False,
        resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train with the force, remove units, fine-tune, measure, write the run directory; return the report."""
    task, run_ = _start(config, command, config_path, overwrite, resume, progress)
    with _writing(run_):
        return prune_stage(task, run_, train_stage(task, run_, resume=resume), resume=resume)


def train(config: RunConfig, *, command: str = "", config_path: str | Path | None = None, overwrite: bool = False,
          resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Training stage only (no removal): checkpoints in ``<output_dir>/checkpoints``; returns a summary."""
    task, run_ = _start(config, command, config_path, overwrite, resume, progress)
    with _writing(run_):
        trained = train_stage(task, run_, resume=resume)
    summary = trained.method.summary() if trained.method is not None else {}
    return {"output_dir": str(run_.out_dir), "acc_dense": trained.acc_dense,
            "acc_before_removal": trained.history[-1]["eval_acc"], **summary}


def load_run_config(run_dir: str | Path, data_dir: str | None = None) -> RunConfig:
    """The config saved in a run directory (optionally with another data directory)."""
    data = saved_config(run_dir)
    data["output_dir"] = str(run_dir)
    if data_dir is not None:
        data["data_dir"] = data_dir
    return config_from_dict(data, source=str(Path(run_dir) / CONFIG_FILE))


def prune(run_dir: str | Path, *, command: str = "", data_dir: str | None = None, overwrite: bool = False,
          resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Load a trained run directory, remove captured units (then fine-tune if configured), write the report.

    ``resume`` continues an interrupted fine-tuning; ``overwrite`` replaces an existing report.
    Everything is read and checked (config, checkpoints, data) before the directory is touched."""
    out = Path(run_dir)
    config = load_run_config(out, data_dir)

    def stale() -> list[Path]:
        return check_output_dir(out, overwrite=overwrite, resume=resume,
                                artifacts=[*report_artifacts(), "checkpoints/finetune.pt"])

    check_writable(out)
    stale()
    task = open_task(config)
    trained = load_trained(task, Run(out, progress=progress, command=command))
    run_ = _open_run(out, stale, progress, command)
    with _writing(run_):
        return prune_stage(task, run_, trained, resume=resume)


def evaluate_run(run_dir: str | Path, data_dir: str | None = None) -> dict[str, Any]:
    """Evaluate the final pruned model of a finished run (``<run>/pruned``) on the run's data:
    ``{"accuracy" (percent), "count", "eval_split", "macs", "params"}``. The model is first
    checked to be the one the run's config describes (task, model, dataset)."""
    from ..plan import read_plan

    config = load_run_config(run_dir, data_dir)
    path = Path(run_dir) / PRUNED_DIR
    if not path.exists():
        raise RunDirError(f"{run_dir} has no {PRUNED_DIR}/ model; finish the run first", reason="not_pruned", path=run_dir)
    made_from, expected = read_plan(path).get("origin"), origin(config)
    if made_from is not None and made_from.get("sha256") != expected["sha256"]:
        differ = [f"{k} {made_from.get(k)!r} (config.json says {expected[k]!r})" for k in ("task", "model", "dataset")
                  if made_from.get(k) != expected[k]]
        raise RunDirError(f"{path} was made for another run: {', '.join(differ) or 'its checksum differs'}; evaluate "
                          f"it with the config it was made with, or restore {Path(run_dir) / CONFIG_FILE}",
                          reason="mismatch", path=run_dir)
    task = open_task(config)
    model = task.load(path)
    result = evaluate(model, task.eval_batches, task.objective)
    macs, params = count_macs_params(model, task.example_inputs)
    return {"accuracy": result.accuracy, "count": result.count, "eval_split": task.eval_split, "macs": macs, "params": params}
