"""Rebuilding pruned shapes on a base model: replay a plan's rounds, then load the weights.

Each round rebuilds forceprune's own unit sets (so attention-head callbacks that fix
``num_heads`` & co. run too) and removes exactly the units the plan did not keep; biases
that removal created by folding are recreated before the weights are loaded.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .._torch import eval_mode, model_device, to_device
from ..removal import RemovalPlan, apply_removal
from ..units import build_unit_sets
from .schema import ModelMismatchError, PlanError, decode_inputs, describe_model, validate_plan


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
        describe_model(plan),
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
        removal = [
            _removal(by_name, entry, r, description) for entry in rnd["unit_sets"] if len(entry["kept"]) < entry["size"]
        ]
        with eval_mode(model):
            apply_removal(graph, removal, model)
    return model


def _removal(by_name: dict, entry: dict, r: int, description: str) -> RemovalPlan:
    """The removal of the units round ``r`` did not keep in ``entry``'s unit set, after
    checking that the base model's unit set is the one the plan describes."""
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
    return RemovalPlan(us, remove, torch.zeros(us.size, dtype=torch.bool))


# --------------------------------------------------------------------------------------------
# weights
# --------------------------------------------------------------------------------------------
def ensure_biases(model: nn.Module, shapes: dict[str, tuple]) -> list[str]:
    """Create the ``bias`` parameters that removal created by folding (``bias=None`` in the
    base model, present in the saved weights), as zeros of the saved ``shapes``
    (``{state-dict name: shape}``). Returns their names."""
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
    ensure_biases(model, {k: tuple(v.shape) for k, v in tensors.items()})
    expected = model.state_dict()
    fix = f"build the architecture the plan was made for ({describe_model(plan)})" if plan else "build the same architecture"
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
