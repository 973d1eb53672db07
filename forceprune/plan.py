"""Portable pruning plans: save a pruned model, rebuild it anywhere, bit for bit.

A pruned model's *shapes* differ from its architecture's, so its ``state_dict`` cannot be
loaded into a freshly built model. A **plan** records how to get from the base (unpruned)
architecture to the pruned shapes: which units each removal round kept, per unit set. Loading
builds the base model (from the model registry or a user factory), replays the plan through
forceprune's own unit sets (so attention-head callbacks that fix ``num_heads`` & co. run
too), recreates biases that removal created by folding, then loads the weights.

On disk a saved model is a **directory**::

    pruned/
      plan.json           # the plan (human-readable JSON) incl. sha256 of the weights file
      model.safetensors   # the pruned weights (safetensors: no pickle, no code)

    plan = fp.plan.make_plan(pruner, model_name="resnet20", model_kwargs={"num_classes": 10})
    fp.plan.save_pruned(model, plan, "runs/pruned")         # atomic; refuses to overwrite
    model, plan = fp.plan.load_pruned("runs/pruned")         # registry models
    model, plan = fp.plan.load_pruned("runs/pruned", model_factory=MyNet)   # custom models

``save_pruned`` writes everything into a temporary directory beside the target, fsyncs it,
then renames it into place (an existing target, with ``overwrite=True``, is first renamed
aside and removed only once the new one is in place), so an error at any point (disk full,
permission, interrupt) leaves the previous output intact. Nothing here unpickles: weights are
safetensors, the plan is JSON, and :func:`safe_torch_load` refuses pickled code.

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

A plan describes the ``pruner.history`` of one :class:`~forceprune.ForcePruner` (every
:meth:`~forceprune.ForcePruner.prune` call is a round), starting from the base model.
"""
from __future__ import annotations

import base64
import errno
import hashlib
import json
import math
import os
import pickle
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from ._torch import eval_mode, model_device, to_device
from ._version import __version__
from .checkpoint import fsync_directory
from .errors import ForcePruneError
from .removal import RemovalPlan, apply_removal
from .units import build_unit_sets

__all__ = [
    "PLAN_FORMAT",
    "PLAN_FORMAT_VERSION",
    "PLAN_FILE",
    "WEIGHTS_FILE",
    "PlanError",
    "CorruptWeightsError",
    "ModelMismatchError",
    "OutputExistsError",
    "SaveError",
    "UnsafeCheckpointError",
    "make_plan",
    "save_pruned",
    "load_pruned",
    "read_plan",
    "validate_plan",
    "replay_plan",
    "replay_rounds",
    "safe_torch_load",
]

PLAN_FORMAT = "forceprune-plan"
PLAN_FORMAT_VERSION = 1
PLAN_FILE = "plan.json"
WEIGHTS_FILE = "model.safetensors"
#: example inputs up to this many bytes are stored in the plan (base64), so loading needs none
MAX_INLINE_INPUT_BYTES = 1 << 20
#: larger example inputs are refused when the plan only records their shape
MAX_GENERATED_INPUT_ELEMENTS = 1 << 26

_FIX_PLAN = "re-create it with forceprune.plan.make_plan(pruner) and save the model again"


class PlanError(ForcePruneError):
    """A plan (or saved-model directory) that is malformed, damaged or incompatible."""


class CorruptWeightsError(PlanError):
    """The weights file does not match the checksum in the plan (truncated or corrupted)."""


class ModelMismatchError(PlanError):
    """The base model built for loading is not the architecture the plan was made for."""


class OutputExistsError(ForcePruneError, FileExistsError):
    """The output path exists and ``overwrite`` was not given."""


class SaveError(ForcePruneError, OSError):
    """Writing failed (disk full, permission, ...); the previous output is intact."""


class UnsafeCheckpointError(ForcePruneError):
    """A checkpoint holds pickled Python objects, which forceprune refuses to unpickle."""


# --------------------------------------------------------------------------------------------
# safe torch.load
# --------------------------------------------------------------------------------------------
def safe_torch_load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with clear errors.

    Only tensors and plain Python containers/types load; a checkpoint containing pickled
    code (a whole ``nn.Module``, custom classes, lambdas) raises :class:`UnsafeCheckpointError`
    instead of executing anything.
    """
    path = Path(path)
    if not path.is_file():
        raise ForcePruneError(f"no checkpoint file at {str(path)!r}; check the path.")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(
            f"{str(path)!r} contains pickled Python objects (a whole model, custom classes or code), "
            "which forceprune refuses to unpickle because loading them can run arbitrary code. "
            "Re-save it as tensors only, e.g. torch.save(model.state_dict(), path), or save a pruned "
            f"model with forceprune.plan.save_pruned. (torch said: {str(exc).splitlines()[0]})"
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CorruptWeightsError(
            f"{str(path)!r} is not a readable torch checkpoint ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); the file is truncated or damaged: "
            "restore it from a backup or re-create it."
        ) from exc


# --------------------------------------------------------------------------------------------
# building a plan
# --------------------------------------------------------------------------------------------
def _fp_version() -> str:
    return __version__


def _tp_version() -> str:
    try:
        import torch_pruning as tp

        return str(getattr(tp, "__version__", "unknown"))
    except Exception:  # pragma: no cover - torch_pruning is a hard dependency
        return "unknown"


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
    if model_name is not None:
        from .models import is_model

        if not isinstance(model_name, str) or not is_model(model_name):
            from .models import list_models

            raise ForcePruneError(
                f"model_name={model_name!r} is not a registered model ({', '.join(list_models())}); "
                "for a custom model omit model_name and pass model_factory to load_pruned."
            )
        identity = {"source": "registry", "name": model_name, "kwargs": dict(model_kwargs or {})}
    else:
        if model_kwargs:
            raise ForcePruneError("model_kwargs were given without model_name; pass model_name too.")
        cls = type(model)
        identity = {"source": "custom", "class": f"{cls.__module__}.{cls.__qualname__}"}
    force = getattr(pruner, "force", None)
    plan = {
        "format": PLAN_FORMAT,
        "format_version": PLAN_FORMAT_VERSION,
        "versions": {"forceprune": _fp_version(), "torch": torch.__version__, "torch_pruning": _tp_version()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": identity,
        "pruner": {
            "force": force.options() if force is not None and hasattr(force, "options") else None,
            "capture": getattr(pruner, "capture_mode", None),
            "threshold": getattr(pruner, "threshold", None),
            "ignored_layers": ignored,
            "ignore_output_layers": bool(getattr(pruner, "ignore_output_layers", True)),
        },
        "example_inputs": encode_inputs(pruner.example_inputs if example_inputs is None else example_inputs),
        "rounds": rounds_from_history(getattr(pruner, "history", []), pruner.unit_sets),
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
        raise PlanError(f"{where} must be an object with a 'type'; {_FIX_PLAN}.")
    kind = spec["type"]
    if kind == "tensor":
        dtype = getattr(torch, str(spec.get("dtype")), None)
        shape = spec.get("shape")
        if not isinstance(dtype, torch.dtype) or not _is_int_list(shape) or any(s < 0 for s in shape):
            raise PlanError(f"{where} has a bad dtype or shape; {_FIX_PLAN}.")
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
            raise PlanError(f"{where} holds damaged tensor data ({exc}); {_FIX_PLAN}.") from exc
    items = spec.get("items")
    if kind == "dict":
        if not isinstance(items, dict):
            raise PlanError(f"{where}['items'] must be an object; {_FIX_PLAN}.")
        return {k: decode_inputs(v, f"{where}['items'][{k!r}]") for k, v in items.items()}
    if kind in ("tuple", "list"):
        if not isinstance(items, list):
            raise PlanError(f"{where}['items'] must be a list; {_FIX_PLAN}.")
        out = [decode_inputs(v, f"{where}['items'][{i}]") for i, v in enumerate(items)]
        return tuple(out) if kind == "tuple" else out
    if kind == "value":
        return spec.get("value")
    raise PlanError(f"{where} has unknown type {kind!r}; {_FIX_PLAN}.")


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------
def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_int_list(x) -> bool:
    return isinstance(x, list) and all(_is_int(v) for v in x)


def _bad(where: str, problem: str) -> PlanError:
    return PlanError(f"malformed plan: {where} {problem}. The plan was edited or damaged; {_FIX_PLAN}.")


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
        where = f"plan['rounds'][{r}]"
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


def _major(version: str) -> int | None:
    head = version.strip().split(".")[0]
    return int(head) if head.isdigit() else None


def _check_version(made_with: str, format_version: int) -> None:
    ours = _fp_version()
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


# --------------------------------------------------------------------------------------------
# replay
# --------------------------------------------------------------------------------------------
def replay_plan(model: nn.Module, plan: dict, example_inputs=None) -> nn.Module:
    """Prune the base ``model`` in place to the plan's shapes (weights are left as they are).

    Each round rebuilds forceprune's unit sets (same ignored layers, same output-layer
    handling) and removes exactly the units the plan did not keep, through
    :func:`forceprune.removal.apply_removal` (so ``on_removed`` callbacks run). Raises
    :class:`ModelMismatchError` naming the first unit set that differs from the plan.
    """
    validate_plan(plan, require_weights=False)
    if example_inputs is None:
        if plan.get("example_inputs") is None:
            raise PlanError(
                "the plan stores no example inputs (they were not tensors/plain values); pass "
                "example_inputs=... (inputs the model accepts) to load_pruned."
            )
        example_inputs = decode_inputs(plan["example_inputs"])
    return replay_rounds(
        model,
        plan["rounds"],
        example_inputs,
        plan["pruner"]["ignored_layers"],
        plan["pruner"]["ignore_output_layers"],
        _describe(plan),
    )


def replay_rounds(
    model: nn.Module,
    rounds: list[dict],
    example_inputs,
    ignored_layers: list[str] = (),
    ignore_output_layers: bool = True,
    description: str = "the model the plan was made for",
) -> nn.Module:
    """:func:`replay_plan` on validated ``rounds`` (the plan's ``"rounds"`` list)."""
    modules = dict(model.named_modules())
    ignored = []
    for name in ignored_layers:
        if name not in modules:
            raise ModelMismatchError(
                f"the plan ignores layer {name!r}, which the base model does not have; build the same "
                f"architecture the plan was made for ({description})."
            )
        ignored.append(modules[name])
    inputs = to_device(example_inputs, model_device(model))
    for r, rnd in enumerate(rounds):
        if not any(len(e["kept"]) < e["size"] for e in rnd["unit_sets"]):
            continue
        graph, unit_sets = build_unit_sets(model, inputs, ignored, ignore_output_layers=ignore_output_layers)
        by_name = {us.name: us for us in unit_sets}
        removal = []
        for entry in rnd["unit_sets"]:
            if len(entry["kept"]) == entry["size"]:
                continue
            us = by_name.get(entry["name"])
            if us is None:
                raise ModelMismatchError(
                    f"round {r} of the plan removes units of {entry['name']!r}, but the base model has no "
                    f"prunable unit set of that name (its unit sets: {sorted(by_name) or 'none'}). Build the "
                    f"architecture the plan was made for ({description}); for attention heads, import the "
                    "module that registers their unit provider first."
                )
            cpu = entry.get("channels_per_unit", us.channels_per_unit)
            if us.size != entry["size"] or us.channels_per_unit != cpu:
                raise ModelMismatchError(
                    f"unit set {entry['name']!r} has {us.size} units ({us.channels_per_unit} channels each) in the "
                    f"base model but the plan expects {entry['size']} ({cpu} each) in round "
                    f"{r}; build the architecture the plan was made for ({description})."
                )
            for key, attr in (("kind", "kind"), ("root", "root_name")):
                if key in entry and entry[key] != getattr(us, attr):
                    raise ModelMismatchError(
                        f"unit set {entry['name']!r} is a {us.kind} set rooted at {us.root_name!r} in the base model "
                        f"but the plan has {key}={entry[key]!r}; build the architecture the plan was made for "
                        f"({description})."
                    )
            remove = torch.ones(us.size, dtype=torch.bool)
            remove[torch.as_tensor(entry["kept"], dtype=torch.long)] = False
            removal.append(RemovalPlan(us, remove, torch.zeros(us.size, dtype=torch.bool)))
        with eval_mode(model):
            apply_removal(graph, removal, model)
    return model


def _describe(plan: dict) -> str:
    m = plan.get("model", {})
    if m.get("source") == "registry":
        return f"registry model {m.get('name')!r} with kwargs {m.get('kwargs')}"
    return f"custom model {m.get('class', '?')}"


# --------------------------------------------------------------------------------------------
# weights
# --------------------------------------------------------------------------------------------
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


def _ensure_biases(model: nn.Module, shapes: dict[str, tuple]) -> list[str]:
    """Create ``bias`` parameters that removal created by folding (``bias=None`` in the base
    model, present in the saved weights). Returns their names."""
    have = set(model.state_dict().keys())
    created = []
    modules = dict(model.named_modules())
    for name, shape in shapes.items():
        if name in have or not (name == "bias" or name.endswith(".bias")):
            continue
        mod = modules.get(name[: -len(".bias")] if name != "bias" else "")
        weight = getattr(mod, "weight", None) if mod is not None else None
        if mod is None or not hasattr(mod, "bias") or mod.bias is not None or not torch.is_tensor(weight):
            continue
        mod.bias = nn.Parameter(torch.zeros(shape, dtype=weight.dtype, device=weight.device))
        created.append(name)
    return created


def load_weights(model: nn.Module, tensors: dict[str, torch.Tensor], aliases: dict[str, str] | None = None, plan=None) -> None:
    """Load safetensors-style tensors into ``model`` after checking every name, shape and dtype;
    the first mismatch is named in a :class:`ModelMismatchError`."""
    aliases = aliases or {}
    _ensure_biases(model, {k: tuple(v.shape) for k, v in tensors.items()})
    expected = model.state_dict()
    fix = f"build the architecture the plan was made for ({_describe(plan)})" if plan else "build the same architecture"
    order = [n for n in expected if n in tensors] + [n for n in tensors if n not in expected]
    for name in order:  # the model's own order: the first mismatch named is the first layer's
        t = tensors[name]
        if name not in expected:
            raise ModelMismatchError(f"the saved weights have {name!r} with shape {tuple(t.shape)}, which the rebuilt model lacks; {fix}.")
        have = expected[name]
        if tuple(have.shape) != tuple(t.shape):
            raise ModelMismatchError(
                f"layer {name!r}: the saved weights have shape {tuple(t.shape)} but the rebuilt model has "
                f"{tuple(have.shape)}; {fix}."
            )
        if have.dtype != t.dtype:
            raise ModelMismatchError(
                f"layer {name!r}: the saved weights are {t.dtype} but the rebuilt model is {have.dtype}; build the "
                "model in the saved dtype (e.g. model_factory=lambda: MyNet().to(torch.float16))."
            )
    missing = [n for n in expected if n not in tensors and n not in aliases]
    if missing:
        raise ModelMismatchError(f"the saved weights lack {missing[0]!r} (shape {tuple(expected[missing[0]].shape)}); {fix}.")
    result = model.load_state_dict(tensors, strict=False)
    unresolved = [n for n in result.missing_keys if n not in aliases]
    if unresolved:  # pragma: no cover - covered by the check above
        raise ModelMismatchError(f"the saved weights lack {unresolved[0]!r}; {fix}.")


# --------------------------------------------------------------------------------------------
# save / load
# --------------------------------------------------------------------------------------------
def _safetensors():
    try:
        import safetensors.torch as st
    except ImportError as exc:
        raise ForcePruneError("saving and loading pruned models needs safetensors: pip install safetensors") from exc
    return st


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _save_error(exc: OSError, path: Path) -> SaveError:
    hint = {
        errno.ENOSPC: "no space left on the device: free some space or save elsewhere",
        errno.EDQUOT: "disk quota exceeded: free some space or save elsewhere",
        errno.EACCES: "permission denied: choose a directory you can write to",
        errno.EPERM: "operation not permitted: choose a directory you can write to",
        errno.EROFS: "the file system is read-only: save elsewhere",
    }.get(exc.errno, f"{exc.strerror or exc}")
    err = SaveError(f"could not save the pruned model to {str(path)!r}: {hint}. Nothing at {str(path)!r} was changed.")
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
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = path.parent / f".{path.name}.tmp-{tag}"
    backup = path.parent / f".{path.name}.old-{tag}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(tmp)
        _write_file(tmp / WEIGHTS_FILE, data)
        _write_file(tmp / PLAN_FILE, text.encode("utf-8"))
        fsync_directory(tmp)
        if path.exists():
            os.replace(path, backup)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(backup, path)
                raise
        else:
            os.replace(tmp, path)
        fsync_directory(path.parent)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _save_error(exc, path) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(backup, ignore_errors=True)
    return path


def read_plan(path: str | os.PathLike) -> dict:
    """The validated plan of a saved directory (or of a ``plan.json`` file)."""
    path = Path(path)
    file = path / PLAN_FILE if path.is_dir() else path
    if not file.is_file():
        raise PlanError(f"no {PLAN_FILE} at {str(path)!r}: pass the directory written by save_pruned.")
    try:
        plan = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PlanError(f"{str(file)!r} is not valid JSON ({exc}); the file is damaged: {_FIX_PLAN}.") from exc
    return validate_plan(plan)


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
            from .models import create_model

            try:
                model = create_model(identity["name"], **identity["kwargs"])
            except Exception as exc:
                raise PlanError(
                    f"could not build the base model {identity['name']!r} with kwargs {identity['kwargs']} "
                    f"({type(exc).__name__}: {exc}); pass model_factory=... that builds it, or {_FIX_PLAN}."
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
        tensors = st.load(raw)
    except Exception as exc:
        raise CorruptWeightsError(f"{str(weights_file)!r} is not a valid safetensors file ({exc}); save the model again.") from exc
    model = _build_base(plan, model_factory)
    try:
        replay_plan(model, plan, example_inputs)
        load_weights(model, tensors, plan["weights"].get("aliases", {}), plan)
    except ForcePruneError:
        raise
    except Exception as exc:  # torch-pruning / the model itself: name it, never a bare crash
        raise ModelMismatchError(
            f"rebuilding the pruned model failed ({type(exc).__name__}: {exc}); build the architecture the plan "
            f"was made for ({_describe(plan)}) and pass example_inputs it accepts."
        ) from exc
    model.eval()
    return model, plan
