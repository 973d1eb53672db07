"""The whole pipeline of one run, and the run directory it writes.

``run(config)``: (optional dense baseline) -> training with the force -> removal of captured
units -> (optional fine-tuning) -> latency of the dense and pruned models side by side ->
``report.json``, pictures, ``report.html`` and the pruned model in ``config.output_dir``.

It is two stages that can also be called alone (``forceprune train`` / ``forceprune prune``):
:func:`train` runs the training phases, checkpointing every epoch to
``<run>/checkpoints/{dense,force,finetune}.pt``; :func:`prune` loads a trained run directory,
removes units and writes the report. Every phase resumes from its checkpoint.
"""

from __future__ import annotations

import copy
import json
import platform
import shlex
import shutil
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from . import checkpoint as ckpt
from .errors import ForcePruneError
from .config import ConfigError, RunConfig
from .train import Phase, Trainer, evaluate, resolve_device, seed_everything, use_channels_last

CONFIG_FILE, REPORT_FILE, CHECKPOINT_DIR = "config.json", "report.json", "checkpoints"
PRUNED_DIR = "pruned"
LATENCY_ROUNDS, LATENCY_WARMUP = 5, 3
ACC_BEST_NOTE = ("highest test accuracy of any epoch (force training or fine-tuning); for reference only, "
                 "NOT used for model selection: the reported and saved model is the last epoch's")


class RunDirError(ForcePruneError):
    """The output directory cannot be used as asked (holds a run, is incomplete, ...)."""


def _report_artifacts() -> list[str]:
    from .visual import PICTURES

    return [REPORT_FILE, "report.html", PRUNED_DIR, *PICTURES.values()]


def _run_artifacts() -> list[str]:
    return [CONFIG_FILE, CHECKPOINT_DIR, *_report_artifacts()]


@dataclass
class Session:
    """What every stage of a run shares: config, run directory, device and data."""

    config: RunConfig
    out_dir: Path
    device: torch.device
    train_loader: Any
    test_loader: Any
    info: Any
    example_input: torch.Tensor  # one test image, (1, C, H, W): MACs are per sample
    calibration: torch.Tensor  # a batch of test images for the removal's output check
    progress: bool = True
    command: str = ""
    started: float = field(default_factory=time.perf_counter)

    def checkpoint(self, phase: str) -> Path:
        return self.out_dir / CHECKPOINT_DIR / f"{phase}.pt"

    def log(self, message: str) -> None:
        if self.progress:
            print(message, file=sys.stderr, flush=True)


# -- run directory -----------------------------------------------------------------------------


def check_output_dir(out_dir: str | Path, *, overwrite: bool = False, resume: bool = False,
                     protected: tuple[str | Path, ...] = (), artifacts: list[str] | None = None) -> list[Path]:
    """Check the run directory without touching it; return the files ``overwrite`` will replace.

    A directory that already holds a run is refused unless ``resume`` (continue it) or
    ``overwrite`` (replace this library's own files in it -- never anything else). A user
    input (``protected``, e.g. the config file) that a run would overwrite is refused.
    """
    out = Path(out_dir)
    artifacts = _run_artifacts() if artifacts is None else artifacts
    if overwrite and resume:
        raise RunDirError("choose either --overwrite (start again) or --resume (continue), not both")
    if out.exists() and not out.is_dir():
        raise RunDirError(f"output_dir {out} is a file; choose a directory, e.g. --output-dir runs/my_run")
    ours = {(out / name).resolve() for name in artifacts}
    for path in protected:
        if Path(path).resolve() in ours:
            raise RunDirError(f"{path} is an input but also a file this run would write; move it out of {out} "
                              "or choose another --output-dir")
    existing = [name for name in artifacts if (out / name).exists()]
    if existing and not (overwrite or resume):
        raise RunDirError(f"{out} already holds a run ({', '.join(existing)}); pass --resume to continue it, "
                          "--overwrite to replace it, or choose another --output-dir")
    return [out / name for name in existing] if overwrite else []


def claim_output_dir(out_dir: str | Path, stale: list[Path]) -> Path:
    """Delete the ``stale`` files found by :func:`check_output_dir` and create the checkpoint folder."""
    for path in stale:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    out = Path(out_dir)
    (out / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
    return out


def check_resumable(config: RunConfig, out_dir: Path) -> None:
    """Refuse to resume a run directory whose saved config differs (paths and device excepted)."""
    path = out_dir / CONFIG_FILE
    if not path.exists():
        return
    saved = json.loads(path.read_text(encoding="utf-8"))
    free = {"data_dir", "output_dir", "device"}
    now = config.to_dict()
    changed = [f"{k} ({saved.get(k)!r} -> {now.get(k)!r})" for k in now if k not in free and saved.get(k) != now.get(k)]
    if changed:
        raise ConfigError(f"cannot resume {out_dir}: the config differs in {', '.join(changed)}; "
                          "resume with the same settings, or start again with --overwrite or another --output-dir")


def load_run_config(run_dir: str | Path, data_dir: str | None = None) -> RunConfig:
    """The config saved in a run directory (optionally with another data directory)."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.exists():
        raise RunDirError(f"{run_dir} is not a forceprune run directory (no {CONFIG_FILE}); "
                          "create one with: forceprune train CONFIG --output-dir DIR")
    data = json.loads(path.read_text(encoding="utf-8"))
    data["output_dir"] = str(run_dir)
    if data_dir is not None:
        data["data_dir"] = data_dir
    return RunConfig.from_dict(data, source=str(path))


# -- session, model, pruner --------------------------------------------------------------------


def open_session(config: RunConfig, out_dir: Path, *, progress: bool = True, command: str = "") -> Session:
    """Resolve the device and load the data (subsets taken with a seeded permutation)."""
    from .data import BatchLoader, load_dataset

    device = resolve_device(config.device)
    train_set, test_set, info = load_dataset(config.dataset, root=config.data_dir, augment=True, download=config.download)
    train_set = _subset(train_set, config.train_subset, config.seed)
    test_set = _subset(test_set, config.test_subset, config.seed)
    train_loader = BatchLoader(train_set, config.batch_size, shuffle=True, augment=True, seed=config.seed)
    test_loader = BatchLoader(test_set, config.eval_batch_size)
    calibration, _ = test_set.batch(torch.arange(min(64, len(test_set))))
    return Session(config, out_dir, device, train_loader, test_loader, info, calibration[:1].clone(),
                   calibration, progress=progress, command=command)


def _subset(dataset: Any, n: int, seed: int) -> Any:
    if not n or n >= len(dataset):
        return dataset
    index = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n]
    return type(dataset)(dataset.images[index], dataset.labels[index], dataset.mean, dataset.std,
                         dataset.augmentation)


def build_model(session: Session) -> tuple[nn.Module, bool]:
    """A freshly initialised model (seeded: every phase starts from the same weights) on the device.

    Returns ``(model, channels_last)``.
    """
    from .models import create_model

    seed_everything(session.config.seed, session.config.deterministic)
    c = session.info.input_shape[0]
    model = create_model(session.config.model, num_classes=session.info.num_classes, in_channels=c)
    model = model.to(session.device)
    channels_last = use_channels_last(session.config.channels_last, model, session.device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, channels_last


def build_pruner(model: nn.Module, session: Session) -> Any:
    """The ForcePruner of the config, ignoring the model's output layer(s)."""
    import forceprune as fp
    from .models import output_layers

    config = session.config
    targets = {k: getattr(config, k) for k in ("target_macs", "target_params", "target_latency_ms") if getattr(config, k) is not None}
    budget = {}
    if targets:
        budget = {"total_steps": config.epochs * len(session.train_loader), "budget": dict(config.budget)}
    return fp.ForcePruner(model, session.example_input.to(session.device), force=config.force,
                          ignored_layers=output_layers(model), capture=config.capture,
                          threshold=config.threshold, capture_every=config.capture_every,
                          cost_power=config.cost_power, **targets, **budget, **config.force_options)


# -- stages ------------------------------------------------------------------------------------


@dataclass
class Trained:
    """Result of the training stage: the force-trained model and its pruner, before removal."""

    model: nn.Module
    pruner: Any
    channels_last: bool
    history: list[dict[str, Any]]
    acc_dense: float | None


def _fit(session: Session, phase_name: str, model: nn.Module, channels_last: bool, pruner: Any, resume: bool
         ) -> list[dict[str, Any]]:
    phase = Phase.from_config(session.config, phase_name)
    trainer = Trainer(model, phase, session.config, session.train_loader, session.test_loader,
                      device=session.device, channels_last=channels_last, pruner=pruner,
                      checkpoint_path=session.checkpoint(phase_name), progress=session.progress)
    if resume and trainer.resume():
        session.log(f"resumed {phase_name} phase after epoch {trainer.epoch}/{phase.epochs}")
    return trainer.fit()


def train_stage(session: Session, *, resume: bool = False) -> Trained:
    """Dense baseline (if ``dense_epochs``) and force training, each resumable from its checkpoint."""
    history: list[dict[str, Any]] = []
    acc_dense = None
    if session.config.dense_epochs > 0:
        dense, channels_last = build_model(session)
        history += _fit(session, "dense", dense, channels_last, None, resume)
        acc_dense = history[-1]["test_acc"]
        del dense
    model, channels_last = build_model(session)
    pruner = build_pruner(model, session)
    history += _fit(session, "force", model, channels_last, pruner, resume)
    return Trained(model, pruner, channels_last, history, acc_dense)


def load_trained(session: Session) -> Trained:
    """Rebuild the training stage's result from a run directory's complete checkpoints."""
    history: list[dict[str, Any]] = []
    acc_dense = None
    if session.config.dense_epochs > 0:
        dense = _complete_checkpoint(session, "dense", session.config.dense_epochs)
        history += dense["history"]
        acc_dense = history[-1]["test_acc"]
    state = _complete_checkpoint(session, "force", session.config.epochs)
    model, channels_last = build_model(session)
    model.load_state_dict(state["model"])
    pruner = build_pruner(model, session)
    pruner.load_state_dict(state["pruner"])
    return Trained(model, pruner, channels_last, history + state["history"], acc_dense)


def _complete_checkpoint(session: Session, phase: str, epochs: int) -> dict[str, Any]:
    path = session.checkpoint(phase)
    if not path.exists():
        raise RunDirError(f"{session.out_dir} has no {phase} checkpoint; train first: "
                          f"forceprune train CONFIG --output-dir {session.out_dir}")
    state = ckpt.load_checkpoint(path, map_location=session.device)
    if state["epoch"] < epochs:
        raise RunDirError(f"{phase} training in {session.out_dir} stopped after epoch {state['epoch']}/{epochs}; "
                          f"finish it with: forceprune train CONFIG --output-dir {session.out_dir} --resume")
    return state


def prune_stage(session: Session, trained: Trained, *, resume: bool = False) -> dict[str, Any]:
    """Remove captured units, fine-tune, measure latency and write report, pictures and model."""
    config, model, pruner = session.config, trained.model, trained.pruner

    def evaluate_model() -> float:
        return evaluate(model, session.test_loader, session.device, trained.channels_last)

    acc_before = evaluate_model()
    force_field = pruner.force_field()
    dense_copy = copy.deepcopy(model)
    removal = pruner.prune(calibration_inputs=session.calibration.to(session.device))
    if trained.channels_last:  # removal re-creates the weights in the default layout
        model.to(memory_format=torch.channels_last)
    session.log(removal.table())
    acc_after = evaluate_model()
    history = trained.history
    if config.finetune_epochs > 0:
        seed_everything(config.seed, config.deterministic)  # same fine-tuning whether run or train + prune
        history = history + _fit(session, "finetune", model, trained.channels_last, None, resume)
    acc_final = evaluate_model()
    latency_before, latency_after = measure_latencies(dense_copy, model, session, trained.channels_last)
    report = {
        "model": config.model, "dataset": config.dataset, "dataset_note": session.info.note,
        "force": config.force, "force_options": config.force_options, "seed": config.seed,
        "epochs": config.epochs, "dense_epochs": config.dense_epochs, "finetune_epochs": config.finetune_epochs,
        "acc_dense": trained.acc_dense, "acc_before_removal": acc_before, "acc_after_removal": acc_after,
        "acc_final": acc_final, "acc_best": _best_accuracy(history), "acc_best_note": ACC_BEST_NOTE,
        "macs_before": removal.macs_before, "macs_after": removal.macs_after, "macs_reduction": removal.macs_reduction,
        "params_before": removal.params_before, "params_after": removal.params_after,
        "params_reduction": removal.params_reduction,
        "latency_ms_before": latency_before, "latency_ms_after": latency_after,
        "latency_note": f"median ms per forward pass on {session.device.type}, dense and pruned measured side by side",
        "max_output_error": removal.max_output_error, "layers": removal.layers, "removal_warnings": removal.warnings,
        "history": history, "force_field": force_field,
        "train_wall_s": sum(r["wall_s"] for r in history), "wall_s": time.perf_counter() - session.started,
        "command": session.command, "config": config.to_dict(), "versions": versions(session.device),
    }
    report["pruned_model"] = save_model(model, pruner, session)
    write_report(report, session.out_dir)
    return report


def _best_accuracy(history: list[dict[str, Any]]) -> float | None:
    accs = [r["test_acc"] for r in history if r["phase"] in ("force", "finetune")]
    return max(accs) if accs else None


def measure_latencies(dense: nn.Module, pruned: nn.Module, session: Session, channels_last: bool
                      ) -> tuple[dict[str, float], dict[str, float]]:
    """Median forward latency (ms) of both models per batch size, measured in alternating rounds."""
    import forceprune as fp

    before, after = {}, {}
    repeats = max(1, session.config.latency_repeats // LATENCY_ROUNDS)
    shape = tuple(session.info.input_shape)
    for batch in session.config.latency_batch_sizes:
        x = torch.randn(batch, *shape, device=session.device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        rounds = [(fp.measure_latency(dense, x, repeats=repeats, warmup=LATENCY_WARMUP),
                   fp.measure_latency(pruned, x, repeats=repeats, warmup=LATENCY_WARMUP))
                  for _ in range(LATENCY_ROUNDS)]
        before[str(batch)] = statistics.median(r[0] for r in rounds)
        after[str(batch)] = statistics.median(r[1] for r in rounds)
    return before, after


def save_model(model: nn.Module, pruner: Any, session: Session) -> str:
    """Save the pruned model with its plan (``forceprune.plan``): ``<run>/pruned/{plan.json,model.safetensors}``.

    Load it anywhere with ``forceprune.plan.load_pruned("<run>/pruned")``.
    """
    from .plan import make_plan, save_pruned

    c, info = session.config, session.info
    plan = make_plan(pruner, model_name=c.model,
                     model_kwargs={"num_classes": info.num_classes, "in_channels": info.input_shape[0]})
    save_pruned(model, plan, session.out_dir / PRUNED_DIR, overwrite=True)
    return PRUNED_DIR


def write_report(report: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write report.json (atomically), the pictures and report.html."""
    from .visual import render_report

    ckpt.write_json(report, out_dir / REPORT_FILE)
    return render_report(report, out_dir)


def versions(device: torch.device) -> dict[str, str]:
    """Versions of the software and the device a report was made with."""
    import torch_pruning

    from . import __version__

    return {
        "forceprune": __version__, "torch": torch.__version__, "torch_pruning": torch_pruning.__version__,
        "numpy": np.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
    }


# -- entry points ------------------------------------------------------------------------------


def run(config: RunConfig, *, command: str = "", config_path: str | Path | None = None, overwrite: bool = False,
        resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train with the force, remove units, fine-tune, measure, write the run directory; return the report."""
    session = _start(config, command, config_path, overwrite, resume, progress)
    with _interrupt_notice(session):
        trained = train_stage(session, resume=resume)
        return prune_stage(session, trained, resume=resume)


def train(config: RunConfig, *, command: str = "", config_path: str | Path | None = None, overwrite: bool = False,
          resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Training stage only (no removal): checkpoints in ``<output_dir>/checkpoints``; returns a summary."""
    session = _start(config, command, config_path, overwrite, resume, progress)
    with _interrupt_notice(session):
        trained = train_stage(session, resume=resume)
    summary = trained.pruner.summary()
    return {"output_dir": str(session.out_dir), "acc_dense": trained.acc_dense,
            "acc_before_removal": trained.history[-1]["test_acc"], **summary}


def prune(run_dir: str | Path, *, command: str = "", data_dir: str | None = None, overwrite: bool = False,
          resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Load a trained run directory, remove captured units (then fine-tune if configured), write the report.

    ``resume`` continues an interrupted fine-tuning; ``overwrite`` replaces an existing report.
    """
    config = load_run_config(run_dir, data_dir)
    stale = check_output_dir(run_dir, overwrite=overwrite, resume=resume,
                             artifacts=[*_report_artifacts(), f"{CHECKPOINT_DIR}/finetune.pt"])
    session = open_session(config, Path(run_dir), progress=progress, command=command)
    claim_output_dir(run_dir, stale)
    with _interrupt_notice(session):
        return prune_stage(session, load_trained(session), resume=resume)


def load_pruned_model(run_dir: str | Path, data_dir: str | None = None) -> tuple[nn.Module, Session, bool]:
    """The final pruned model of a finished run (from ``<run>/pruned``) with the run's data.

    Returns ``(model on the run's device, session, channels_last)``.
    """
    from .plan import load_pruned

    config = load_run_config(run_dir, data_dir)
    if not (Path(run_dir) / PRUNED_DIR).exists():
        raise RunDirError(f"{run_dir} has no {PRUNED_DIR}/ model; finish the run first: forceprune prune {run_dir}")
    session = open_session(config, Path(run_dir), progress=False)
    model, _ = load_pruned(Path(run_dir) / PRUNED_DIR)
    model = model.to(session.device)
    channels_last = use_channels_last(config.channels_last, model, session.device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, session, channels_last


def _start(config: RunConfig, command: str, config_path: str | Path | None, overwrite: bool, resume: bool,
           progress: bool) -> Session:
    """Check the run directory, load the data, then (only then) write into the directory."""
    protected = tuple(p for p in (config_path,) if p is not None)
    stale = check_output_dir(config.output_dir, overwrite=overwrite, resume=resume, protected=protected)
    out = Path(config.output_dir)
    if resume:
        check_resumable(config, out)
    session = open_session(config, out, progress=progress, command=command)
    claim_output_dir(out, stale)
    ckpt.write_json(config.to_dict(), out / CONFIG_FILE)
    return session


@contextmanager
def _interrupt_notice(session: Session) -> Iterator[None]:
    """On Ctrl-C: say which checkpoint is intact and how to resume, then re-raise."""
    try:
        yield
    except KeyboardInterrupt:
        print(f"\nInterrupted. {last_checkpoint(session.out_dir)}\nResume with: {resume_command(session)}",
              file=sys.stderr, flush=True)
        raise


def last_checkpoint(out_dir: Path) -> str:
    """Describe the newest valid checkpoint of a run directory."""
    from .train import PHASES

    for phase in reversed(PHASES):
        path = out_dir / CHECKPOINT_DIR / f"{phase}.pt"
        if path.exists():
            state = ckpt.load_checkpoint(path)
            return f"Last checkpoint: {path} ({phase} epoch {state['epoch']}/{state['epochs']}, intact)."
    return "No epoch had finished, so there is no checkpoint yet."


def resume_command(session: Session) -> str:
    """The command line that continues this run."""
    if not session.command:
        return f"forceprune.runner.run(config, resume=True)  # output_dir={session.out_dir}"
    words = [w for w in shlex.split(session.command) if w not in ("--overwrite", "--resume")]
    return shlex.join(words + ["--resume"])
