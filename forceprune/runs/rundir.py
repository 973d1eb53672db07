"""The run directory: what a run writes, and the checks made before anything is written.

    <output_dir>/
      config.json                 the validated config (resuming checks it has not changed)
      checkpoints/{dense,force,finetune}.pt   atomic, one per phase, rewritten every epoch
      report.json  report.html  *.png         the report (:mod:`forceprune.runs.pipeline`)
      pruned/                                 the pruned model (plan.json + model.safetensors)

Nothing here prints or knows the command line: errors are :class:`RunDirError` with a
``reason`` (``"exists"``, ``"is_file"``, ``"protected"``, ``"not_a_run"``, ``"incomplete"``,
``"conflict"``) and the paths involved, which the CLI turns into flag hints.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Sequence

from ..checkpoint import load_checkpoint, read_json
from ..errors import ForcePruneError

CONFIG_FILE, REPORT_FILE, CHECKPOINT_DIR, PRUNED_DIR = "config.json", "report.json", "checkpoints", "pruned"
PHASES = ("dense", "force", "finetune")


def report_artifacts() -> tuple[str, ...]:
    """The files of a run's report (``visual`` names the pictures; imported late: matplotlib)."""
    from ..visual import PICTURES

    return (REPORT_FILE, "report.html", PRUNED_DIR, *PICTURES.values())


def run_artifacts() -> tuple[str, ...]:
    """Every file a run writes into its directory."""
    return (CONFIG_FILE, CHECKPOINT_DIR, *report_artifacts())


class RunDirError(ForcePruneError):
    """The output directory cannot be used as asked. ``reason`` says why (see the module doc),
    ``path`` is the directory and ``existing`` the files of a previous run found in it."""

    def __init__(self, message: str, *, reason: str, path: str | Path, existing: Sequence[str] = ()):
        super().__init__(message)
        self.reason, self.path, self.existing = reason, Path(path), list(existing)


def check_output_dir(out_dir: str | Path, *, overwrite: bool = False, resume: bool = False,
                     protected: Sequence[str | Path] = (), artifacts: Sequence[str] | None = None) -> list[Path]:
    """Check the run directory without touching it; return the files ``overwrite`` will replace.

    A directory that already holds a run is refused unless ``resume`` (continue it) or
    ``overwrite`` (replace this library's own files in it -- never anything else). A user
    input (``protected``, e.g. the config file) that a run would overwrite is refused."""
    out = Path(out_dir)
    artifacts = run_artifacts() if artifacts is None else artifacts
    if overwrite and resume:
        raise RunDirError("choose either overwrite (start again) or resume (continue), not both", reason="conflict", path=out)
    if out.exists() and not out.is_dir():
        raise RunDirError(f"output_dir {out} is a file; choose a directory, e.g. runs/my_run", reason="is_file", path=out)
    ours = {(out / name).resolve() for name in artifacts}
    for path in protected:
        if Path(path).resolve() in ours:
            raise RunDirError(f"{path} is an input but also a file this run would write; move it out of {out} "
                              "or choose another output directory", reason="protected", path=out)
    existing = [name for name in artifacts if (out / name).exists()]
    if existing and not (overwrite or resume):
        raise RunDirError(f"{out} already holds a run ({', '.join(existing)})", reason="exists", path=out, existing=existing)
    return [out / name for name in existing] if overwrite else []


def claim_output_dir(out_dir: str | Path, stale: Sequence[Path]) -> Path:
    """Delete the ``stale`` files found by :func:`check_output_dir` and create the checkpoint folder."""
    for path in stale:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    out = Path(out_dir)
    (out / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
    return out


def saved_config(run_dir: str | Path) -> dict:
    """The config saved in a run directory, as plain data."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.exists():
        raise RunDirError(f"{run_dir} is not a forceprune run directory (no {CONFIG_FILE})", reason="not_a_run", path=run_dir)
    data = read_json(path, "restore it, or start the run again")
    if not isinstance(data, dict):
        raise RunDirError(f"{path} does not hold a config table; restore it, or start the run again", reason="not_a_run",
                          path=run_dir)
    return data


def changed_settings(saved: dict, now: dict, free: Sequence[str] = ("data_dir", "output_dir", "device")) -> list[str]:
    """The settings that differ between a saved config and the current one (``free`` excepted)."""
    return [f"{k} ({saved.get(k)!r} -> {now.get(k)!r})" for k in now if k not in free and saved.get(k) != now.get(k)]


def checkpoint_path(run_dir: str | Path, phase: str) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"{phase}.pt"


def complete_checkpoint(run_dir: str | Path, phase: str, epochs: int, device="cpu") -> dict:
    """A phase's checkpoint, refused unless its last epoch has finished."""
    path = checkpoint_path(run_dir, phase)
    if not path.exists():
        raise RunDirError(f"{run_dir} has no {phase} checkpoint; train first", reason="incomplete", path=run_dir)
    state = load_checkpoint(path, map_location=device)
    if state["epoch"] < epochs:
        raise RunDirError(f"{phase} training in {run_dir} stopped after epoch {state['epoch']}/{epochs}; finish it "
                          "(resume the training) first", reason="incomplete", path=run_dir)
    return state


def last_checkpoint(run_dir: str | Path) -> str:
    """Describe the newest checkpoint of a run directory."""
    for phase in reversed(PHASES):
        path = checkpoint_path(run_dir, phase)
        if path.exists():
            state = load_checkpoint(path)
            return f"Last checkpoint: {path} ({phase} epoch {state['epoch']}/{state['epochs']}, intact)."
    return "No epoch had finished, so there is no checkpoint yet."
