"""A saved pruned model on disk: one directory, written atomically, read back safely::

    pruned/
      plan.json           # the plan (human-readable JSON) incl. sha256 of the weights file
      model.safetensors   # the pruned weights (safetensors: no pickle, no code)

:func:`save_pruned` fills a temporary directory beside the target and renames it into place
(:func:`forceprune.checkpoint.atomic_write_dir`), so an error at any point (disk full,
permission, interrupt) leaves the previous output intact. Nothing here unpickles: weights are
safetensors, the plan is JSON, and :func:`safe_torch_load` refuses pickled code.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from ..checkpoint import atomic_write_dir, load_checkpoint, read_json, write_error
from ..errors import ForcePruneError
from .replay import load_weights, replay_plan
from .schema import (
    FIX_PLAN,
    PLAN_FILE,
    WEIGHTS_FILE,
    CorruptWeightsError,
    ModelMismatchError,
    OutputExistsError,
    PlanError,
    SaveError,
    describe_model,
    validate_plan,
)


# --------------------------------------------------------------------------------------------
# safe torch.load
# --------------------------------------------------------------------------------------------
def safe_torch_load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with clear errors
    (:func:`forceprune.checkpoint.load_checkpoint`): pickled code raises
    :class:`UnsafeCheckpointError` without running anything, a damaged file
    :class:`CorruptWeightsError`."""
    return load_checkpoint(path, map_location, corrupt=CorruptWeightsError)


# --------------------------------------------------------------------------------------------
# save
# --------------------------------------------------------------------------------------------
def _safetensors():
    try:
        import safetensors.torch as st
    except ImportError as exc:
        raise ForcePruneError("saving and loading pruned models needs safetensors: pip install safetensors") from exc
    return st


def _state_tensors(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """CPU copies of the state dict, tied tensors stored once (``aliases``: tied -> stored)."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for name, t in model.state_dict(keep_vars=False).items():
        if not torch.is_tensor(t):
            continue
        key = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if t.numel() and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        tensors[name] = t.detach().to("cpu", copy=True).contiguous()
    return tensors, aliases


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _save_error(exc: OSError, path: Path) -> SaveError:
    err = SaveError(str(write_error(exc, path, "save the pruned model to")))
    err.errno = exc.errno
    return err


def save_pruned(model: nn.Module, plan: dict, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Save ``model`` (pruned) and its ``plan`` to the directory ``path``, atomically.

    Writes ``plan.json`` (with the weights' sha256) and ``model.safetensors`` into a temporary
    directory beside ``path`` and renames it into place. Refuses an existing ``path`` unless
    ``overwrite=True`` (and even then only a previous forceprune save directory). On any
    error the previous ``path`` is left intact and the temporary directory is removed.
    """
    if not isinstance(model, nn.Module):
        raise ForcePruneError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    plan = dict(validate_plan(plan, require_weights=False))
    path = Path(path)
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise OutputExistsError(
                f"{str(path)!r} already exists; pass overwrite=True to replace it or choose another path."
            )
        if not path.is_dir() or path.is_symlink() or not (path / PLAN_FILE).is_file():
            raise OutputExistsError(
                f"{str(path)!r} exists and is not a forceprune save directory (no {PLAN_FILE}); refusing to "
                "replace it even with overwrite=True: choose another path."
            )
    st_save = _safetensors().save
    tensors, aliases = _state_tensors(model)
    data = st_save(tensors, metadata={"format": "pt"})
    plan["weights"] = {
        "file": WEIGHTS_FILE,
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "aliases": aliases,
    }
    text = json.dumps(plan, indent=2, allow_nan=False) + "\n"

    def write_files(directory: Path) -> None:
        _write_file(directory / WEIGHTS_FILE, data)
        _write_file(directory / PLAN_FILE, text.encode("utf-8"))

    try:
        return atomic_write_dir(path, write_files, replace=overwrite)
    except OSError as exc:
        raise _save_error(exc, path) from exc


# --------------------------------------------------------------------------------------------
# load
# --------------------------------------------------------------------------------------------
def read_plan(path: str | os.PathLike) -> dict:
    """The validated plan of a saved directory (or of a ``plan.json`` file)."""
    path = Path(path)
    file = path / PLAN_FILE if path.is_dir() else path
    if not file.is_file():
        raise PlanError(f"no {PLAN_FILE} at {str(path)!r}: pass the directory written by save_pruned.")
    return validate_plan(read_json(file, f"{FIX_PLAN}.", PlanError))


def _build_base(plan: dict, model_factory: Callable[[], nn.Module] | None) -> nn.Module:
    identity = plan["model"]
    with torch.random.fork_rng(devices=[]):  # building a model must not move the caller's RNG
        if model_factory is not None:
            if not callable(model_factory):
                raise ForcePruneError("model_factory must be a callable returning the base (unpruned) model.")
            try:
                model = model_factory()
            except Exception as exc:
                raise ForcePruneError(f"model_factory() failed ({type(exc).__name__}: {exc}).") from exc
            origin = "model_factory()"
        elif identity["source"] == "registry":
            from ..models import create_model

            try:
                model = create_model(identity["name"], **identity["kwargs"])
            except Exception as exc:
                raise PlanError(
                    f"could not build the base model {identity['name']!r} with kwargs {identity['kwargs']} "
                    f"({type(exc).__name__}: {exc}); pass model_factory=... that builds it, or {FIX_PLAN}."
                ) from exc
            origin = f"create_model({identity['name']!r})"
        else:
            raise PlanError(
                f"this plan was saved from a custom model ({identity.get('class', '?')}); pass "
                "model_factory=... , a callable that builds the base (unpruned) model, to load_pruned."
            )
    if not isinstance(model, nn.Module):
        raise ForcePruneError(f"{origin} returned {type(model).__name__}, not a torch.nn.Module.")
    return model


def _read_weights(path: Path, plan: dict) -> dict[str, torch.Tensor]:
    """The tensors of the saved weights file, after checking its size and sha256 against the plan."""
    weights_file = path / plan["weights"]["file"]
    if Path(plan["weights"]["file"]).name != plan["weights"]["file"] or not weights_file.is_file():
        raise CorruptWeightsError(
            f"the weights file {plan['weights']['file']!r} is missing from {str(path)!r}; restore it from a backup "
            "or save the model again."
        )
    raw = weights_file.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if len(raw) != plan["weights"]["bytes"] or digest != plan["weights"]["sha256"]:
        raise CorruptWeightsError(
            f"{str(weights_file)!r} is truncated or corrupted: {len(raw)} bytes with sha256 {digest[:12]}..., but "
            f"the plan recorded {plan['weights']['bytes']} bytes with sha256 {plan['weights']['sha256'][:12]}...; "
            "restore the file from a backup or save the model again."
        )
    st = _safetensors()
    try:
        return st.load(raw)
    except Exception as exc:
        raise CorruptWeightsError(f"{str(weights_file)!r} is not a valid safetensors file ({exc}); save the model again.") from exc


def load_pruned(
    path: str | os.PathLike,
    model_factory: Callable[[], nn.Module] | None = None,
    example_inputs=None,
) -> tuple[nn.Module, dict]:
    """Rebuild a model saved with :func:`save_pruned`: ``(model in eval mode, plan)``.

    Args:
        path: the directory written by :func:`save_pruned`.
        model_factory: zero-argument callable building the base (unpruned) model; required for
            custom models, optional (overrides the registry) otherwise.
        example_inputs: inputs to trace the model with; default: those stored in the plan.

    The outputs of the returned model are bit-identical to those of the saved one.
    """
    path = Path(path)
    if path.is_file() and path.name in (PLAN_FILE, WEIGHTS_FILE):
        path = path.parent
    if not path.is_dir():
        raise PlanError(f"no saved pruned model at {str(path)!r} (expected a directory written by save_pruned).")
    plan = read_plan(path)
    tensors = _read_weights(path, plan)
    model = _build_base(plan, model_factory)
    other = _other_class(plan, model)
    try:
        replay_plan(model, plan, example_inputs)
        load_weights(model, tensors, plan["weights"].get("aliases", {}), plan)
    except ForcePruneError as exc:
        if other is None:
            raise
        raise ModelMismatchError(f"{other}; {exc}") from exc
    except Exception as exc:  # torch-pruning / the model itself: name it, never a bare crash
        cause = other or "the rebuilt model does not match the plan"
        raise ModelMismatchError(
            f"{cause}: rebuilding the pruned model failed ({type(exc).__name__}: {exc}); build the architecture the "
            f"plan was made for ({describe_model(plan)}) and pass example_inputs it accepts."
        ) from exc
    model.eval()
    return model, plan


def _other_class(plan: dict, model: nn.Module) -> str | None:
    """When a custom plan's recorded class is not the class ``model_factory()`` built, say so:
    that, not the example inputs, is then the likely reason a replay fails."""
    recorded = plan["model"].get("class") if plan["model"]["source"] == "custom" else None
    built = f"{type(model).__module__}.{type(model).__qualname__}"
    if not isinstance(recorded, str) or recorded.rsplit(".", 1)[-1] == type(model).__qualname__.rsplit(".", 1)[-1]:
        return None
    return f"the plan was made for a {recorded} but model_factory() built a {built}"
