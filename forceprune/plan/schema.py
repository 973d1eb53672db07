"""What a plan is: its errors, its JSON layout, how one is built and how one is checked.

Plan layout (``format_version`` 1)::

    {"format": "forceprune-plan", "format_version": 1,
     "versions": {"forceprune", "torch", "torch_pruning"},
     "model": {"source": "registry", "name", "kwargs"} | {"source": "custom", "class"},
     "pruner": {"force": {...}, "capture", "threshold", "ignored_layers": [names],
                "ignore_output_layers": bool},
     "example_inputs": spec | null,   # structure, dtype, shape (+ base64 data when small)
     "rounds": [{"mode", "unit_sets": [{"name", "size", "kept": [unit indices],
                                        "root", "kind", "channels_per_unit" (when known)}]}],
     "weights": {"file", "sha256", "bytes", "aliases": {tied name: stored name}}}

:func:`make_plan` describes the ``pruner.history`` of one :class:`~forceprune.ForcePruner`
(every :meth:`~forceprune.ForcePruner.prune` call is a round); :func:`plan_from_rounds`
builds the same dict from rounds alone (e.g. those a training callback kept in its state).
"""
from __future__ import annotations

import base64
import json
import math
import sys
import time
from typing import Sequence

import torch
import torch.nn as nn

from .._version import __version__, library_versions
from ..errors import CorruptFileError, ForcePruneError, UnsafeCheckpointError, WriteError  # noqa: F401  (UnsafeCheckpointError: part of this module's API)

PLAN_FORMAT = "forceprune-plan"
PLAN_FORMAT_VERSION = 1
PLAN_FILE = "plan.json"
WEIGHTS_FILE = "model.safetensors"
#: example inputs up to this many bytes are stored in the plan (base64), so loading needs none
MAX_INLINE_INPUT_BYTES = 1 << 20
#: larger example inputs are refused when the plan only records their shape
MAX_GENERATED_INPUT_ELEMENTS = 1 << 26
#: the fix named by every error about a damaged plan
FIX_PLAN = "re-create it with forceprune.plan.make_plan(pruner) and save the model again"


class PlanError(ForcePruneError):
    """A plan (or saved-model directory) that is malformed, damaged or incompatible."""


class CorruptWeightsError(PlanError, CorruptFileError):
    """The weights file does not match the checksum in the plan (truncated or corrupted)."""


class ModelMismatchError(PlanError):
    """The base model built for loading is not the architecture the plan was made for."""


class OutputExistsError(ForcePruneError, FileExistsError):
    """The output path exists and ``overwrite`` was not given."""


class SaveError(WriteError):
    """Writing a pruned model failed (disk full, permission, ...); the previous output is intact."""


# --------------------------------------------------------------------------------------------
# building a plan
# --------------------------------------------------------------------------------------------
def identify_model(model: nn.Module, model_name: str | None = None, model_kwargs: dict | None = None) -> dict:
    """The plan's ``"model"`` entry: a registry model (``model_name`` + constructor kwargs) or,
    without ``model_name``, the class of the custom ``model`` (loading then needs a factory)."""
    if model_name is not None:
        from ..models import is_model

        if not isinstance(model_name, str) or not is_model(model_name):
            from ..models import list_models

            raise ForcePruneError(
                f"model_name={model_name!r} is not a registered model ({', '.join(list_models())}); "
                "for a custom model omit model_name and pass model_factory to load_pruned."
            )
        return {"source": "registry", "name": model_name, "kwargs": dict(model_kwargs or {})}
    if model_kwargs:
        raise ForcePruneError("model_kwargs were given without model_name; pass model_name too.")
    cls = type(model)
    return {"source": "custom", "class": f"{cls.__module__}.{cls.__qualname__}"}


def plan_from_rounds(
    rounds: list[dict],
    *,
    model_identity: dict,
    ignored_layers: Sequence[str] = (),
    ignore_output_layers: bool = True,
    force: dict | None = None,
    capture: str | None = None,
    threshold: float | None = None,
    example_inputs=None,
) -> dict:
    """A plan (without weights, which :func:`~forceprune.plan.save_pruned` adds) from removal
    ``rounds`` (:func:`rounds_from_history`'s list).

    Args:
        rounds: one ``{"mode", "unit_sets": [...]}`` entry per removal round, in order.
        model_identity: the plan's ``"model"`` entry (:func:`identify_model`).
        ignored_layers: names of the modules the pruner ignored (relative to the model).
        ignore_output_layers: whether the pruner left the output layers alone.
        force, capture, threshold: the pruner's settings, recorded for reference.
        example_inputs: inputs to trace the model with at load time, stored when at most
            1 MiB (otherwise only their shapes); ``None``: none stored, loading needs them.
    """
    plan = {
        "format": PLAN_FORMAT,
        "format_version": PLAN_FORMAT_VERSION,
        "versions": library_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": dict(model_identity),
        "pruner": {
            "force": force,
            "capture": capture,
            "threshold": threshold,
            "ignored_layers": list(ignored_layers),
            "ignore_output_layers": bool(ignore_output_layers),
        },
        "example_inputs": None if example_inputs is None else encode_inputs(example_inputs),
        "rounds": list(rounds),
        "weights": None,
    }
    try:
        json.dumps(plan, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ForcePruneError(
            f"the plan is not JSON-serialisable ({exc}); model_kwargs must hold plain values "
            "(numbers, strings, booleans, lists, dicts)."
        ) from exc
    return plan


def make_plan(
    pruner,
    model_name: str | None = None,
    model_kwargs: dict | None = None,
    example_inputs=None,
) -> dict:
    """The plan of everything ``pruner`` removed so far (one round per ``prune()`` call).

    Args:
        pruner: the :class:`~forceprune.ForcePruner` that pruned the model (built on the base,
            unpruned model).
        model_name: registry name (``forceprune.models.create_model``) of the base model; omit
            for a custom model, which then needs ``model_factory`` at load time.
        model_kwargs: constructor kwargs given to ``create_model`` (JSON-safe values only).
        example_inputs: inputs to trace the model with at load time (default: the pruner's);
            stored in the plan when at most 1 MiB, otherwise only their shapes.
    """
    model = getattr(pruner, "model", None)
    if not isinstance(model, nn.Module) or not hasattr(pruner, "unit_sets"):
        raise ForcePruneError(f"make_plan needs a ForcePruner, got {type(pruner).__name__}.")
    names = {id(m): n for n, m in model.named_modules()}
    ignored = []
    for m in getattr(pruner, "ignored_layers", []):
        if id(m) not in names:
            raise ForcePruneError(
                f"an ignored layer ({type(m).__name__}) is not a submodule of the pruned model; "
                "pass ignored_layers that belong to the model."
            )
        ignored.append(names[id(m)])
    identity = identify_model(model, model_name, model_kwargs)
    force = getattr(pruner, "force", None)
    return plan_from_rounds(
        rounds_from_history(getattr(pruner, "history", []), pruner.unit_sets),
        model_identity=identity,
        ignored_layers=ignored,
        ignore_output_layers=getattr(pruner, "ignore_output_layers", True),
        force=force.options() if force is not None and hasattr(force, "options") else None,
        capture=getattr(pruner, "capture_mode", None),
        threshold=getattr(pruner, "threshold", None),
        example_inputs=pruner.example_inputs if example_inputs is None else example_inputs,
    )


def rounds_from_history(reports, unit_sets=()) -> list[dict]:
    """Plan rounds from :class:`~forceprune.PruneReport` objects (one per ``prune()`` call).

    ``root``, ``kind`` and ``channels_per_unit`` come from the report's ``layers`` rows when
    it records them, else from the pruner's current unit set of that name; they are left out
    when neither knows them (a set pruned down to one unit is no unit set any more), and are
    then not checked at load time.
    """
    current = {us.name: us for us in unit_sets}
    rounds = []
    for report in reports:
        layers = {row["name"]: row for row in report.layers}
        sets = []
        for name, kept in report.kept.items():
            row, us = layers.get(name, {}), current.get(name)
            size = row.get("width_before")
            entry = {"name": name, "size": int(size if size is not None else (max(kept) + 1 if kept else 0))}
            for key, attr in (("root", "root_name"), ("kind", "kind"), ("channels_per_unit", "channels_per_unit")):
                value = row.get(key, getattr(us, attr, None) if us is not None else None)
                if value is not None:
                    entry[key] = value
            entry["kept"] = [int(i) for i in kept]
            sets.append(entry)
        rounds.append({"mode": report.mode, "unit_sets": sets})
    return rounds


def describe_model(plan: dict) -> str:
    """The base model a plan was made for, in words (for error messages)."""
    m = plan.get("model", {})
    if m.get("source") == "registry":
        return f"registry model {m.get('name')!r} with kwargs {m.get('kwargs')}"
    return f"custom model {m.get('class', '?')}"


# -- example inputs -------------------------------------------------------------------------------
class _Unencodable(Exception):
    pass


def encode_inputs(obj, budget: int = MAX_INLINE_INPUT_BYTES) -> dict | None:
    """JSON spec of example inputs (tensors stored exactly, base64, when small); None if the
    inputs hold something other than tensors and plain values."""
    try:
        return _encode(obj, [budget])
    except _Unencodable:
        return None


def _encode(obj, budget: list) -> dict:
    if torch.is_tensor(obj):
        t = obj.detach().cpu().contiguous()
        entry = {"type": "tensor", "dtype": str(t.dtype).replace("torch.", ""), "shape": list(t.shape)}
        nbytes = t.numel() * t.element_size()
        if nbytes <= budget[0] and sys.byteorder == "little":
            raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
            entry["base64"] = base64.b64encode(raw).decode("ascii")
            budget[0] -= nbytes
        return entry
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            raise _Unencodable
        return {"type": "dict", "items": {k: _encode(v, budget) for k, v in obj.items()}}
    if isinstance(obj, (list, tuple)):
        return {"type": "tuple" if isinstance(obj, tuple) else "list", "items": [_encode(v, budget) for v in obj]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return {"type": "value", "value": obj}
    raise _Unencodable


def decode_inputs(spec: dict, where: str = "plan['example_inputs']"):
    """Example inputs from :func:`encode_inputs`' spec (tensors without data become zeros)."""
    if not isinstance(spec, dict) or "type" not in spec:
        raise PlanError(f"{where} must be an object with a 'type'; {FIX_PLAN}.")
    kind = spec["type"]
    if kind == "tensor":
        dtype = getattr(torch, str(spec.get("dtype")), None)
        shape = spec.get("shape")
        if not isinstance(dtype, torch.dtype) or not _is_int_list(shape) or any(s < 0 for s in shape):
            raise PlanError(f"{where} has a bad dtype or shape; {FIX_PLAN}.")
        if math.prod(shape) > MAX_GENERATED_INPUT_ELEMENTS:
            raise PlanError(
                f"{where} asks for a {shape} tensor, too large to generate; pass example_inputs=... to load_pruned."
            )
        data = spec.get("base64")
        if data is None:
            return torch.zeros(shape, dtype=dtype)
        try:
            raw = base64.b64decode(str(data), validate=True)
            flat = torch.frombuffer(bytearray(raw), dtype=torch.uint8) if raw else torch.zeros(0, dtype=torch.uint8)
            return flat.view(dtype).reshape(shape).clone()
        except Exception as exc:
            raise PlanError(f"{where} holds damaged tensor data ({exc}); {FIX_PLAN}.") from exc
    items = spec.get("items")
    if kind == "dict":
        if not isinstance(items, dict):
            raise PlanError(f"{where}['items'] must be an object; {FIX_PLAN}.")
        return {k: decode_inputs(v, f"{where}['items'][{k!r}]") for k, v in items.items()}
    if kind in ("tuple", "list"):
        if not isinstance(items, list):
            raise PlanError(f"{where}['items'] must be a list; {FIX_PLAN}.")
        out = [decode_inputs(v, f"{where}['items'][{i}]") for i, v in enumerate(items)]
        return tuple(out) if kind == "tuple" else out
    if kind == "value":
        return spec.get("value")
    raise PlanError(f"{where} has unknown type {kind!r}; {FIX_PLAN}.")


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------
def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_int_list(x) -> bool:
    return isinstance(x, list) and all(_is_int(v) for v in x)


def _bad(where: str, problem: str) -> PlanError:
    return PlanError(f"malformed plan: {where} {problem}. The plan was edited or damaged; {FIX_PLAN}.")


def _need(d: dict, key: str, types, where: str, what: str):
    if not isinstance(d, dict):
        raise _bad(where, "must be a JSON object")
    if key not in d:
        raise _bad(f"{where}[{key!r}]", "is missing")
    value = d[key]
    ok = _is_int(value) if types is int else isinstance(value, types)
    if not ok:
        raise _bad(f"{where}[{key!r}]", f"must be {what}, got {type(value).__name__}")
    return value


def validate_plan(plan, require_weights: bool = True) -> dict:
    """Check a plan's structure and types; raise :class:`PlanError` naming the first problem.

    Also refuses plans from an incompatible forceprune major version or a newer plan format.
    """
    if not isinstance(plan, dict):
        raise _bad("the plan", f"must be a JSON object, got {type(plan).__name__}")
    fmt = _need(plan, "format", str, "plan", "a string")
    if fmt != PLAN_FORMAT:
        raise _bad("plan['format']", f"is {fmt!r}, not {PLAN_FORMAT!r} (this is not a forceprune plan)")
    fver = _need(plan, "format_version", int, "plan", "an integer")
    versions = _need(plan, "versions", dict, "plan", "an object")
    made_with = _need(versions, "forceprune", str, "plan['versions']", "a version string")
    _check_version(made_with, fver)
    model = _need(plan, "model", dict, "plan", "an object")
    source = _need(model, "source", str, "plan['model']", "a string")
    if source == "registry":
        _need(model, "name", str, "plan['model']", "a registered model name")
        _need(model, "kwargs", dict, "plan['model']", "an object of constructor kwargs")
    elif source != "custom":
        raise _bad("plan['model']['source']", f"is {source!r}; expected 'registry' or 'custom'")
    pr = _need(plan, "pruner", dict, "plan", "an object")
    ignored = _need(pr, "ignored_layers", list, "plan['pruner']", "a list of module names")
    if not all(isinstance(n, str) for n in ignored):
        raise _bad("plan['pruner']['ignored_layers']", "must hold module names (strings)")
    _need(pr, "ignore_output_layers", bool, "plan['pruner']", "true or false")
    if plan.get("example_inputs") is not None and not isinstance(plan["example_inputs"], dict):
        raise _bad("plan['example_inputs']", "must be an object or null")
    rounds = _need(plan, "rounds", list, "plan", "a list")
    for r, rnd in enumerate(rounds):
        _check_round(rnd, f"plan['rounds'][{r}]")
    weights = plan.get("weights")
    if require_weights or weights is not None:
        weights = _need(plan, "weights", dict, "plan", "an object (written by save_pruned)")
        _need(weights, "file", str, "plan['weights']", "a file name")
        sha = _need(weights, "sha256", str, "plan['weights']", "a hex digest")
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise _bad("plan['weights']['sha256']", "is not a sha256 hex digest")
        _need(weights, "bytes", int, "plan['weights']", "an integer")
        aliases = weights.get("aliases", {})
        if not isinstance(aliases, dict) or not all(isinstance(v, str) for v in aliases.values()):
            raise _bad("plan['weights']['aliases']", "must map names to names")
    return plan


def _check_round(rnd, where: str) -> None:
    sets = _need(rnd, "unit_sets", list, where, "a list")
    for i, us in enumerate(sets):
        w = f"{where}['unit_sets'][{i}]"
        _need(us, "name", str, w, "a unit-set name")
        size = _need(us, "size", int, w, "an integer")
        kept = _need(us, "kept", list, w, "a list of unit indices")
        for key in ("root", "kind"):  # optional: checked at load time when present
            if key in us:
                _need(us, key, str, w, "a string")
        cpu = _need(us, "channels_per_unit", int, w, "an integer") if "channels_per_unit" in us else 1
        if size < 1 or cpu < 1:
            raise _bad(w, "has a size or channels_per_unit below 1")
        if not _is_int_list(kept):
            raise _bad(f"{w}['kept']", "must hold integers only")
        if not kept:
            raise _bad(f"{w}['kept']", "is empty (a layer keeps at least one unit)")
        if len(set(kept)) != len(kept) or min(kept) < 0 or max(kept) >= size:
            raise _bad(f"{w}['kept']", f"must hold distinct indices in [0, {size})")


def _major(version: str) -> int | None:
    head = version.strip().split(".")[0]
    return int(head) if head.isdigit() else None


def _check_version(made_with: str, format_version: int) -> None:
    ours = __version__
    if format_version > PLAN_FORMAT_VERSION:
        raise PlanError(
            f"this plan uses plan format {format_version} (made with forceprune {made_with}), newer than this "
            f"forceprune {ours} reads (format {PLAN_FORMAT_VERSION}); upgrade forceprune to load it."
        )
    theirs = _major(made_with)
    if theirs is None or theirs != _major(ours):
        raise PlanError(
            f"this plan was made with forceprune {made_with}, whose major version is incompatible with the "
            f"installed forceprune {ours}; load it with forceprune {made_with.split('.')[0]}.x "
            f"(pip install 'forceprune=={made_with.split('.')[0]}.*') or re-create the plan from the base model."
        )
