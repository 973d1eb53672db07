"""Atomic writes: files, directories, checkpoints and JSON, each in one place.

Everything forceprune writes goes to a temporary name beside its target, is fsync'ed, then
moved into place with ``os.replace`` -- so an interruption at any point (disk full,
permission, Ctrl-C) leaves the previous file or directory intact:

* :func:`atomic_path` -- a temporary file path to write by any means (e.g. an exporter);
* :func:`atomic_write` -- a file written through a file object;
* :func:`atomic_write_dir` -- a whole directory (a saved pruned model);
* :func:`save_checkpoint` / :func:`write_json` -- a ``torch.save`` dict / a JSON document.

A checkpoint is a dict of tensors and plain Python types only (RNG states included), so it
loads with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import random
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

import numpy as np
import torch

from .errors import CorruptFileError, ForcePruneError, UnsafeCheckpointError, WriteError


def _temp_beside(path: Path, kind: str) -> Path:
    """A fresh hidden name beside ``path`` (``.name.<kind>-<pid>-<random>``)."""
    return path.parent / f".{path.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write inside the ``with`` block.

    When the block ends normally the temporary file is fsync'ed and renamed over ``path``;
    on any exception (including KeyboardInterrupt) it is removed and an existing ``path`` is
    left untouched.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(exc, path) from exc
    tmp = _temp_beside(path, "tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_directory(path.parent)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Write a file atomically: ``write(fileobj)`` into a temp file beside ``path``, fsync, rename.

    On any exception (including KeyboardInterrupt) the temp file is removed and an existing
    ``path`` is left untouched; an operating-system fault (disk full, permission, read-only
    file system, name too long) is raised as a :class:`~forceprune.errors.WriteError` that
    says which.
    """
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as handle:
                write(handle)
    except OSError as exc:
        if isinstance(exc, WriteError):
            raise
        raise write_error(exc, path) from exc
    return path


_WRITE_HINTS = {
    errno.ENOSPC: "no space left on the device: free some space or write elsewhere",
    errno.EDQUOT: "disk quota exceeded: free some space or write elsewhere",
    errno.EACCES: "permission denied: choose a directory you can write to",
    errno.EPERM: "operation not permitted: choose a directory you can write to",
    errno.EROFS: "the file system is read-only: write elsewhere",
    errno.ENAMETOOLONG: "the path is too long for the file system: choose a shorter output path",
    errno.ENOTDIR: "a part of the path is a file, not a directory: choose another output path",
    errno.EEXIST: "a part of the path is a file, not a directory: choose another output path",
}


def write_error(exc: OSError, path: str | Path, what: str = "write") -> WriteError:
    """A :class:`~forceprune.errors.WriteError` for an OS fault while writing ``path``, naming
    the cause and the fix."""
    hint = _WRITE_HINTS.get(exc.errno, f"{exc.strerror or exc}")
    err = WriteError(f"could not {what} {str(path)!r}: {hint}. Nothing at {str(path)!r} was changed.")
    err.errno = exc.errno
    return err


def atomic_write_dir(path: str | Path, write_files: Callable[[Path], None], *, replace: bool = False) -> Path:
    """Create the directory ``path`` atomically.

    ``write_files(tmp)`` fills a new temporary directory beside ``path`` (fsync'ing what it
    writes); the directory is fsync'ed and renamed into place. An existing ``path`` is
    refused with :class:`FileExistsError` unless ``replace=True``; then it is first renamed
    aside and removed only once the new directory is in place. On any exception (including
    KeyboardInterrupt) the temporary directory is removed, an existing ``path`` is left as it
    was, and the exception propagates.
    """
    path = Path(path)
    if not replace and (path.exists() or path.is_symlink()):
        raise FileExistsError(f"{str(path)!r} already exists")
    tmp, backup = _temp_beside(path, "tmp"), _temp_beside(path, "old")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(tmp)
        write_files(tmp)
        fsync_directory(tmp)
        if path.exists() or path.is_symlink():
            os.replace(path, backup)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(backup, path)
                raise
        else:
            os.replace(tmp, path)
        fsync_directory(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if backup.is_dir() and not backup.is_symlink():
        shutil.rmtree(backup, ignore_errors=True)
    else:
        backup.unlink(missing_ok=True)
    return path


def fsync_directory(directory: Path) -> None:
    """Make the rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Save a checkpoint dict atomically with ``torch.save``."""
    return atomic_write(path, lambda handle: torch.save(state, handle))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", *,
                    corrupt: type[ForcePruneError] = CorruptFileError, fix: str = "restore it from a backup or re-create it") -> Any:
    """``torch.load(path, weights_only=True)`` with clear errors: only tensors and plain Python
    types load. A checkpoint holding pickled code (a whole ``nn.Module``, custom classes,
    lambdas) raises :class:`~forceprune.errors.UnsafeCheckpointError` without running
    anything; a truncated or foreign file raises ``corrupt`` naming the file and ``fix``."""
    path = Path(path)
    if not path.is_file():
        raise corrupt(f"no checkpoint file at {str(path)!r}; check the path, or {fix}.")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "GLOBAL" not in str(exc):  # not a class or function reference: bytes that are no checkpoint
            raise corrupt(f"{str(path)!r} is not a torch checkpoint (its bytes do not decode as one); the file is "
                          f"truncated or damaged: {fix}.") from exc
        raise UnsafeCheckpointError(
            f"{str(path)!r} contains pickled Python objects (a whole model, custom classes or code), which "
            "forceprune refuses to unpickle because loading them can run arbitrary code. Re-save it as tensors "
            "only, e.g. torch.save(model.state_dict(), path), or save a pruned model with forceprune.plan.save_pruned."
        ) from exc
    except Exception as exc:  # torch raises RuntimeError, EOFError, KeyError, ... on damaged files
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise corrupt(f"{str(path)!r} is not a readable torch checkpoint ({type(exc).__name__}: {first[:160]}); the "
                      f"file is truncated or damaged: {fix}.") from exc


def write_json(data: Any, path: str | Path) -> Path:
    """Write JSON atomically (UTF-8, indented)."""
    text = json.dumps(data, indent=2, ensure_ascii=False, allow_nan=True) + "\n"
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def read_text(path: str | Path, fix: str, error: type[ForcePruneError] = ForcePruneError) -> str:
    """The UTF-8 text of ``path``. A missing, unreadable or non-UTF-8 file raises ``error``
    naming the file, what is wrong and ``fix`` (what the user should do)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise error(f"{path} does not exist; {fix}") from None
    except IsADirectoryError:
        raise error(f"{path} is a directory, not a file; {fix}") from None
    except OSError as exc:
        raise error(f"cannot read {path} ({exc.strerror or exc}); check its permissions, or {fix}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{path} is not a UTF-8 text file (byte {exc.start} is {raw[exc.start:exc.start + 1]!r}); "
                    f"{fix}") from None


def read_json(path: str | Path, fix: str, error: type[ForcePruneError] = ForcePruneError) -> Any:
    """The JSON data of ``path``; a damaged file raises ``error`` naming it and ``fix``
    (see :func:`read_text` for the other faults)."""
    text = read_text(path, fix, error)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{path} is not valid JSON ({exc}); the file is damaged: {fix}") from None


def rng_state() -> dict[str, Any]:
    """Snapshot of the torch (CPU and CUDA), numpy and Python RNGs as tensors and plain types."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore RNG states saved by :func:`rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
