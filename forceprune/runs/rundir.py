"""The run directory: what a run writes, and the checks made before anything is written.

    <output_dir>/
      config.json                 the validated config (resuming checks it has not changed)
      checkpoints/{dense,force,finetune}.pt   atomic, one per phase, rewritten every epoch
      report.json  report.html  *.png         the report (:mod:`forceprune.runs.pipeline`)
      pruned/                                 the pruned model (plan.json + model.safetensors)

A run holds the directory's lock (:class:`RunLock`) while it writes, and an overwrite keeps
the previous run's files recoverable until the new run's first checkpoint (:class:`Claim`).

Nothing here prints or knows the command line: errors are :class:`RunDirError` with a
``reason`` (``"exists"``, ``"is_file"``, ``"protected"``, ``"not_a_run"``, ``"incomplete"``,
``"conflict"``, ``"not_writable"``, ``"nothing_to_resume"``, ``"config_changed"``,
``"locked"``, ``"no_checkpoint"``, ``"not_pruned"``, ``"damaged"``, ``"mismatch"``) and the paths involved, which the CLI turns into flag hints.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Sequence

from ..checkpoint import load_checkpoint, read_json
from ..errors import CorruptFileError, ForcePruneError

CONFIG_FILE, REPORT_FILE, CHECKPOINT_DIR, PRUNED_DIR = "config.json", "report.json", "checkpoints", "pruned"
PHASES = ("dense", "force", "finetune")
#: Longest directory name and path a run accepts (POSIX's 255 / 4096, less room for our own names).
NAME_MAX, PATH_MAX = 255 - 40, 4096 - 80


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


def saved_config(run_dir: str | Path) -> dict:
    """The config saved in a run directory, as plain data."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.exists():
        raise RunDirError(f"{run_dir} is not a forceprune run directory (no {CONFIG_FILE})", reason="not_a_run", path=run_dir)
    data = read_json(path, "restore it, or start the run again")
    if not isinstance(data, dict):
        raise RunDirError(f"{path} does not hold a config table; restore it, or start the run again", reason="damaged",
                          path=run_dir)
    return data


def changed_settings(saved: dict, now: dict, free: Sequence[str] = ("data_dir", "output_dir", "device")) -> list[str]:
    """The settings that differ between a saved config and the current one (``free`` excepted)."""
    return [f"{k} ({saved.get(k)!r} -> {now.get(k)!r})" for k in now if k not in free and saved.get(k) != now.get(k)]


def checkpoint_path(run_dir: str | Path, phase: str) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"{phase}.pt"


def complete_checkpoint(run_dir: str | Path, phase: str, epochs: int, device="cpu", config: dict | None = None) -> dict:
    """A phase's checkpoint, refused unless it is a complete forceprune checkpoint of this run
    (made with ``config``'s task, model and dataset) whose last epoch has finished."""
    path = checkpoint_path(run_dir, phase)
    if not path.exists():
        raise RunDirError(f"{run_dir} has no {phase} checkpoint (train it first)", reason="no_checkpoint", path=run_dir)
    fix = "restore it from a backup, or train the run again"
    state = load_checkpoint(path, map_location=device, fix=fix)
    missing = [k for k in ("epoch", "model", "history") if not isinstance(state, dict) or k not in state]
    if missing:
        raise CorruptFileError(f"{path} is not a forceprune checkpoint (it has no {', '.join(missing)}); {fix}")
    made_with = state.get("config") or {}
    differ = [f"{k} {made_with.get(k)!r} (config.json says {config.get(k)!r})" for k in ("task", "model", "dataset")
              if config is not None and k in made_with and made_with.get(k) != config.get(k)]
    if differ:
        raise RunDirError(f"{path} was made for another run: {', '.join(differ)}; restore {CONFIG_FILE} or train this "
                          "config in another output directory", reason="mismatch", path=run_dir)
    if state["epoch"] < epochs:
        raise RunDirError(f"{phase} training in {run_dir} stopped after epoch {state['epoch']}/{epochs}; finish it "
                          "(resume the training) first", reason="incomplete", path=run_dir)
    return state


def has_checkpoint(run_dir: str | Path) -> bool:
    """Whether any phase of the run has a checkpoint (there is something to resume)."""
    return any(checkpoint_path(run_dir, phase).exists() for phase in PHASES)


def last_checkpoint(run_dir: str | Path) -> str:
    """Describe the newest checkpoint of a run directory."""
    for phase in reversed(PHASES):
        path = checkpoint_path(run_dir, phase)
        if path.exists():
            state = load_checkpoint(path)
            return f"Last checkpoint: {path} ({phase} epoch {state['epoch']}/{state['epochs']}, intact)."
    return "No epoch had finished, so there is no checkpoint yet."


# -- before writing --------------------------------------------------------------------------------
def check_writable(out_dir: str | Path) -> None:
    """Refuse an output directory that cannot be created or written (a name too long, a
    component that is a file, no permission, a read-only file system), before anything is
    written."""
    out = Path(out_dir).absolute()
    if any(len(part) > NAME_MAX for part in out.parts) or len(str(out)) > PATH_MAX:
        raise RunDirError(f"the path {out} is too long for the file system (names up to {NAME_MAX} characters, paths "
                          f"up to {PATH_MAX}, with room for forceprune's own file names)", reason="not_writable", path=out)
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise RunDirError(f"cannot create {out}: {existing} is a file, not a directory", reason="not_writable", path=out)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunDirError(f"cannot write into {existing} (permission denied or a read-only file system)",
                          reason="not_writable", path=out)


def check_resumable(out_dir: str | Path, now: dict) -> None:
    """Refuse to resume a directory that holds nothing to resume, or a run with other settings."""
    out = Path(out_dir)
    if not has_checkpoint(out):
        raise RunDirError(f"{out} holds no checkpoint, so there is nothing to resume", reason="nothing_to_resume", path=out)
    if (out / CONFIG_FILE).exists():
        changed = changed_settings(saved_config(out), now)
        if changed:
            raise RunDirError(f"cannot resume {out}: the config differs in {', '.join(changed)}; resume with the same "
                              "settings, or start again (overwrite) or in another output directory",
                              reason="config_changed", path=out)


# -- while writing ---------------------------------------------------------------------------------
LOCK_FILE = ".forceprune.lock"
PREVIOUS_DIR = ".previous"


class RunLock:
    """The run directory's lock file, holding the owner's pid and host: a second run into a
    directory in use is refused with the holder's pid; a lock left by a run that was killed
    (its process is gone) is taken over."""

    def __init__(self, out_dir: str | Path):
        self.path = Path(out_dir) / LOCK_FILE
        self.held = False

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is not None and self._alive(holder):
                    raise RunDirError(
                        f"{self.path.parent} is in use by another forceprune run (pid {holder.get('pid')} on "
                        f"{holder.get('host')}, started {holder.get('started')}); wait for it to finish or use another "
                        f"output directory (if that process is gone, delete {self.path})",
                        reason="locked", path=self.path.parent) from None
                self.path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as handle:
                json.dump(me, handle)
            self.held = True
            return
        raise RunDirError(f"could not take the lock {self.path}; try again", reason="locked", path=self.path.parent)

    def _holder(self) -> dict | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return data if isinstance(data, dict) else None
        except (OSError, ValueError):
            return None  # unreadable: a lock being written this instant, or garbage; treated as stale

    @staticmethod
    def _alive(holder: dict) -> bool:
        if holder.get("host") != socket.gethostname():
            return True  # another machine: we cannot tell, so we do not take it
        try:
            os.kill(int(holder["pid"]), 0)
        except (ProcessLookupError, KeyError, ValueError, TypeError):
            return False
        except PermissionError:
            return True
        return True

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


class Claim:
    """What a run does to its directory, undone if it fails before its first checkpoint.

    The previous run's files that an ``overwrite`` replaces (``stale``) are moved into
    ``<out>/.previous/`` and deleted only once the new run has written its first checkpoint
    (:meth:`commit`); if the new run fails before that, :meth:`rollback` puts them back and
    removes what the new run created (its ``config.json``, an empty checkpoint folder, a
    directory that did not exist), so the directory is as it was."""

    def __init__(self, out_dir: str | Path, stale: Sequence[Path]):
        self.out = Path(out_dir)
        self.backup = self.out / PREVIOUS_DIR
        self.created = [p for p in (self.out, self.out / CHECKPOINT_DIR, self.out / CONFIG_FILE) if not p.exists()]
        self.moved: list[str] = []
        self.done = False
        if stale:
            if self.backup.exists():
                shutil.rmtree(self.backup)  # left by an overwrite that was neither committed nor rolled back
            self.backup.mkdir(parents=True)
            for path in stale:
                os.replace(path, self.backup / path.name)
                self.moved.append(path.name)
        (self.out / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)

    def commit(self) -> None:
        """The new run has its first checkpoint (or its report): the old files can go."""
        if not self.done:
            shutil.rmtree(self.backup, ignore_errors=True)
            self.done = True

    def rollback(self) -> None:
        """The new run failed before its first checkpoint: put the directory back as it was."""
        if self.done:
            return
        self.done = True
        for name in self.moved:
            _remove(self.out / name)
            os.replace(self.backup / name, self.out / name)
        shutil.rmtree(self.backup, ignore_errors=True)
        for path in reversed(self.created):
            if path.is_dir():
                try:
                    path.rmdir()  # only when empty: never anything else
                except OSError:
                    pass
            elif path.name == CONFIG_FILE and path.exists() and path.name not in self.moved:
                path.unlink()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
