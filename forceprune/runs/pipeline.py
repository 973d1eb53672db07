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

The report's schema is in :mod:`forceprune.runs.stages`.
"""
from __future__ import annotations

import math

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from ..checkpoint import write_json
from ..metrics import count_macs_params
from .config import RunConfig
from .loop import evaluate
from .rundir import (
    CONFIG_FILE, PRUNED_DIR, Claim, RunDirError, RunLock, check_output_dir, check_resumable, check_writable,
    report_artifacts, saved_config,
)
from .stages import (  # noqa: F401  (the stages are part of this module's API)
    Run, Trained, build_method, load_trained, origin, prune_stage, train_stage, write_report,
)
from .tasks import config_from_dict, open_task


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
    ``{"accuracy" (percent), "loss", "count", "eval_split", "macs", "params"}`` (and
    ``"perplexity"`` for a language model). The model is first
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
    out = {"accuracy": result.accuracy, "loss": result.loss, "count": result.count, "eval_split": task.eval_split,
           "macs": macs, "params": params}
    if getattr(task, "perplexity", False):
        out["perplexity"] = math.exp(min(result.loss, 50.0))
    return out
