"""Run configurations: one system for every task, read from TOML, validated eagerly.

A config file is a flat TOML table whose keys are the fields of the config class of its
``task`` (``"image_classification"`` when absent: :class:`~forceprune.runs.vision.VisionConfig`;
``"text_classification"``: :class:`~forceprune.runs.text.TextConfig`; the map is
:mod:`forceprune.runs.tasks`), plus optional ``[force_options]`` and ``[budget]`` tables::

    model = "lenet5"
    dataset = "mnist"
    force = "etp"
    epochs = 8

    [force_options]
    beta = 5e-4

Every field carries its help text (``RunConfig.field_help()``, printed by ``forceprune config
TASK``). Loading (:func:`forceprune.runs.tasks.load_config`) applies ``key=value`` overrides
(:func:`apply_override`: TOML literals, bare words are strings) and checks every key, type and
value at once; each problem is reported with its fix, before any data is read or any
directory touched.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from ..baselines import FISHER, GROUP_NORM, WANDA
from ..budget import TARGET_KEYS, budget_errors
from ..checkpoint import read_text
from ..distill import Distillation
from ..errors import ForcePruneError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

DEFAULT_TASK = "image_classification"


class ConfigError(ForcePruneError):
    """A configuration value is missing, unknown, mistyped or impossible."""


def option(default: Any, help: str) -> Any:
    """A config field with a default and its help text in ``metadata["help"]``."""
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def required(help: str) -> Any:
    """A config field without a default."""
    return field(metadata={"help": help})


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """What every run shares, whatever its task: the force, the budget, paths and the seed.

    Subclasses (one per task) add the model, data and training recipe; :meth:`check` returns
    every problem, each with its fix, and ``__post_init__`` raises them all at once."""

    #: the ``task`` value selecting this class in a config file
    task_name: ClassVar[str] = DEFAULT_TASK
    #: with ``distill`` and no dense phase, the model the force phase starts from teaches (a
    #: pretrained model that is already the dense baseline); else distillation needs a dense phase
    teacher_from_start: ClassVar[bool] = False
    #: methods that are not force laws (``"none"``: no pruning; see forceprune.baselines)
    baselines: ClassVar[tuple[str, ...]] = ("none", GROUP_NORM, WANDA, FISHER)

    force_options: dict = option({}, "Options of the force law, e.g. beta (penalty strength), norm, pivot, scale.")
    capture: Literal["unit", "element"] | None = option(None, 'What is captured (held at exactly 0): whole units ("unit") or single weights ("element"); unset = the force\'s default.')
    threshold: float | None = option(None, "Capture threshold in weight units (unit: all |w| of a unit <= it; element: |w| < it); unset = the force's default.")
    snap: float = option(1.0, "Factor on the proximal capture bound (a unit within one force step of zero is captured); 0 = fixed threshold only.")
    cost_power: float = option(0.0, "Weight each unit set's force by (MACs per unit / mean)**cost_power; 0 = the papers' uniform force.")
    target_macs: float | None = option(None, "Keep this fraction of the dense model's MACs (e.g. 0.1 = 10x fewer): the budget controller sets the force strength; unset = fixed beta.")
    target_params: float | None = option(None, "Keep this fraction of the dense model's parameters (budget controller); unset = none.")
    target_latency_ms: float | None = option(None, "Reach this latency (ms per forward pass of the example inputs) on this machine; unset = none.")
    spare_keepers: bool = option(False, "With a target: push only the units it needs gone (the weakest by force-weighted score, re-chosen at every controller update); the units that will be kept feel no force.")
    importance: Literal["magnitude", "activation", "fisher"] = option("magnitude", 'What ranks the units the force pushes and removal takes first: "magnitude" (force-weighted weight norm), "activation" (Wanda\'s |W| x ||X||, input norms measured once on 128 training samples before the force phase: what a pretrained language model needs) or "fisher" (with target_macs and spare_keepers: the units to push are fixed once before the force phase by the Fisher mask search on 2,048 training samples, Kwon et al. 2022; the layers then lose different numbers of units).')
    budget: dict = option({}, "Budget controller options: warmup, reach (fraction of training by which the target is met, default 0.7), every, gain, min_width, round_to, tolerance.")
    widths: dict | None = option(None, "Cut to these widths instead of removing zeros: {unit set name = units kept}; unset = lossless removal of exact zeros.")
    data_dir: str | None = option(None, "Dataset root directory; unset = $FORCEPRUNE_DATA, then ../shared/data beside the checkout, then ~/.cache/forceprune/data.")
    finetune_lr: float | None = option(None, "Peak learning rate of the fine-tuning phase after removal; unset = the task's default fraction of lr.")
    distill: dict = option({}, "Distillation from the dense model (the dense phase: needs dense_epochs > 0) during the force and fine-tuning phases: temperature (2.0), alpha (the KL's share of the loss, 0.5), hidden (weight of per-layer hidden-state matching, 0). Empty = off.")
    init_from_dense: bool = option(False, "Start the force phase from the dense phase's trained weights (prune a trained model) instead of from the same initial weights.")
    seed: int = option(0, "Seed of torch, numpy and random; also fixes data order and model initialisation.")
    output_dir: str = option("runs/forceprune", "Directory for checkpoints, report.json, pictures and the pruned model; default runs/<config name>.")

    def __post_init__(self) -> None:
        errors = self.check()
        if errors:
            raise ConfigError("; ".join(errors))

    def check(self) -> list[str]:
        """Range and consistency checks of the shared fields; each message names the fix."""
        errors = budget_errors(self.budget_targets(), self.budget)
        need = collect(errors)
        need(all(isinstance(k, str) for k in self.force_options), "force_options keys must be strings")
        need(self.threshold is None or self.threshold > 0, f"threshold = {self.threshold} must be > 0, or leave it unset for the pruner's default")
        need(self.snap >= 0, f"snap = {self.snap} must be >= 0 (1 = the proximal bound, 0 = off)")
        need(0 <= self.cost_power <= 4, f"cost_power = {self.cost_power} must be in [0, 4]: 0 = uniform, 1 = MACs-proportional")
        need(self.finetune_lr is None or self.finetune_lr > 0, f"finetune_lr = {self.finetune_lr} must be > 0, or leave it unset")
        need(0 <= self.seed < 2**32, f"seed = {self.seed} must be in [0, 2**32 - 1] (numpy's range)")
        need(bool(self.output_dir.strip()), 'output_dir is empty: set e.g. output_dir = "runs/my_run"')
        need("beta" not in self.force_options or _is_number(self.force_options["beta"]) and self.force_options["beta"] >= 0,
             f"force_options.beta = {self.force_options.get('beta')!r} must be a number >= 0, e.g. beta = 5e-4")
        try:
            Distillation(**self.distill)
        except TypeError:
            errors.append(f"unknown distill options {sorted(set(self.distill) - {'temperature', 'alpha', 'hidden'})}; "
                          "valid: temperature, alpha, hidden")
        except ForcePruneError as exc:
            errors.append(str(exc).rstrip("."))
        dense = getattr(self, "dense_epochs", 0)
        need(not (self.distill and not self.teacher_from_start or self.init_from_dense) or dense > 0,
             f"{'distill' if self.distill else 'init_from_dense'} needs a dense model: set dense_epochs > 0 (the dense "
             "phase trains the teacher / the starting point)")
        targets = [k for k, v in self.budget_targets().items() if v is not None]
        force = getattr(self, "force", None)
        need(not targets or force not in self.baselines or (force == FISHER and targets == ["target_macs"]),
             f"{targets[0] if targets else ''} needs a force (the controller scales it); force {force!r} has none")
        need(force != FISHER or self.target_macs is not None,
             f"force {FISHER!r} searches for a MACs target: set target_macs, e.g. target_macs = 0.5")
        need(force not in (GROUP_NORM, WANDA) or bool(self.widths),
             f"force {force!r} prunes to given per-layer widths: set widths = {{unit set name = units kept}}")
        need(self.importance != "fisher" or self.target_macs is not None and self.spare_keepers and self.is_force,
             'importance = "fisher" fixes the units a force pushes to a MACs target: set a force, target_macs '
             "(e.g. 0.5) and spare_keepers = true")
        need(not (targets and self.widths), f"give either {targets[0] if targets else 'a target'} or widths, not both")
        need(self.widths is None or all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in self.widths.values()),
             "widths must map unit set names to whole numbers of units >= 1, e.g. widths = { fc1 = 8 }")
        return errors

    def budget_targets(self) -> dict[str, float | None]:
        """The targets as the budget rules see them (``{"target_macs": ..., ...}``)."""
        return {k: getattr(self, k) for k in TARGET_KEYS}

    def check_names(self) -> list[str]:
        """Checks against the installed registries (models, datasets, forces) and the machine."""
        force = getattr(self, "force")
        if force in self.baselines:
            return []
        from ..forces import available, resolve

        names = available()
        if force not in names:
            return [unknown_name("force", force, names + list(self.baselines))]
        try:
            resolve(force, self.force_options)
        except (ForcePruneError, TypeError) as exc:
            return [f"force_options for force {force!r}: {exc}"]
        return []

    @property
    def is_force(self) -> bool:
        """True when the method is a force law (not a baseline such as ``"none"``)."""
        return getattr(self, "force") not in self.baselines

    def to_dict(self) -> dict[str, Any]:
        """The config as JSON-safe plain types (tuples become lists)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> RunConfig:
        """Build a config of this class from plain data, with every check of ``__post_init__``."""
        try:
            return cls(**_coerce_all(cls, data))
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    @classmethod
    def field_help(cls) -> dict[str, str]:
        """Help text of every field, keyed by field name."""
        return {f.name: f.metadata["help"] for f in dataclasses.fields(cls)}


# -- reading ---------------------------------------------------------------------------------------
def read_toml(path: str | Path) -> dict[str, Any]:
    """The table of a TOML config file, with errors that name the file and the fix."""
    text = read_text(path, "pass the path of a .toml config file (see configs/)", ConfigError)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}; fix that line (see configs/ for examples)") from None


def apply_override(data: dict[str, Any], item: str, cls: type[RunConfig]) -> None:
    """Apply one ``key=value`` (or ``table.key=value``) override to raw config data in place."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {item!r} must look like key=value, e.g. --set epochs=3")
    value = parse_literal(raw.strip())
    head, dot, tail = key.partition(".")
    names = _field_names(cls)
    if head not in names:
        raise ConfigError(_unknown_key_message(head, names, "override"))
    if head == "task" and value != cls.task_name:
        raise ConfigError(f"override {item!r}: the task of a config file cannot be changed; use a config of that task")
    if not dot:
        data[head] = value
        return
    if head not in ("force_options", "budget", "widths", "distill"):
        raise ConfigError(f"override {item!r}: only force_options, budget, widths and distill have sub-keys; use {head}=value")
    current = data.get(head) or {}
    if not isinstance(current, dict):
        raise ConfigError(f"override {item!r}: {head} is {current!r}, not a table; set {head} as a table or drop that override")
    data[head] = {**current, tail: value}


def parse_literal(text: str) -> Any:
    """Parse a TOML literal (``3``, ``1e-4``, ``true``, ``[1, 64]``, ``"x"``); a bare word stays a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


# -- coercion --------------------------------------------------------------------------------------
def _field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _unknown_key_message(key: str, names: list[str], where: str) -> str:
    near = difflib.get_close_matches(key, names, n=1)
    hint = f"did you mean {near[0]!r}?" if near else f"valid keys: {', '.join(names)}"
    return f"unknown {where} key {key!r}: {hint}"


def unknown_name(what: str, value: Any, names: list[str]) -> str:
    """``unknown model 'x': did you mean model = "y"? choose one of ...``."""
    near = difflib.get_close_matches(str(value), [str(n) for n in names], n=1)
    hint = f'did you mean {what} = "{near[0]}"? ' if near else ""
    return f"unknown {what} {value!r}: {hint}choose one of {', '.join(map(str, names))}"


def _coerce_all(cls: type[RunConfig], data: dict[str, Any]) -> dict[str, Any]:
    """Check keys and types of raw data; return keyword arguments for ``cls``."""
    names = _field_names(cls)
    hints = typing.get_type_hints(cls)
    errors = [_unknown_key_message(k, names, "config") for k in data if k not in names]
    help_text = cls.field_help()
    required_keys = [f.name for f in dataclasses.fields(cls)
                     if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    errors += [f"missing required key {k!r}; add e.g. {k} = \"...\" ({help_text[k]})" for k in required_keys if k not in data]
    kwargs = {}
    for key, value in data.items():
        if key in names:
            try:
                kwargs[key] = _coerce(value, hints[key], key)
            except ConfigError as exc:
                errors.append(str(exc))
    if errors:
        raise ConfigError("; ".join(errors))
    return kwargs


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """``value`` converted to type ``hint`` (int -> float, list -> tuple) or a ConfigError."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None and len(options) < len(typing.get_args(hint)):
            return None
        if len(options) == 1:
            return _coerce(value, options[0], key)
        for option_type in options:
            try:
                return _coerce(value, option_type, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key} = {value!r} has the wrong type: expected {_describe(hint)}")
    if origin is Literal:
        choices = typing.get_args(hint)
        if value in choices and type(value) is type(choices[choices.index(value)]):
            return value
        near = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint_text = f"did you mean {near[0]!r}? " if near else ""
        raise ConfigError(f"{key} = {value!r} is not allowed: {hint_text}choose one of {', '.join(map(repr, choices))}")
    if origin is tuple:
        item = typing.get_args(hint)[0]
        if not isinstance(value, (list, tuple)):
            what, example = ("integers", "[1, 64]") if item is int else ("strings", '["a", "b"]')
            raise ConfigError(f"{key} = {value!r} has the wrong type: expected a list of {what}, e.g. {key} = {example}")
        return tuple(_coerce(v, item, key) for v in value)
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} = {value!r} has the wrong type: expected a table, e.g. {key} = {{ beta = 1e-4 }}")
        return dict(value)
    if hint is float and _is_number(value):
        if not math.isfinite(value):
            raise ConfigError(f"{key} = {value!r} must be a finite number")
        return float(value)
    if hint is int and isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)  # 1e3 means 1000; its range is checked with the other values
    if hint in (int, str, bool) and type(value) is hint:
        return value
    raise ConfigError(f"{key} = {value!r} has the wrong type: expected {_describe(hint)}")


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint) if a is not type(None))
    if origin is Literal:
        return " or ".join(map(repr, typing.get_args(hint)))
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(hint, str(hint))


def collect(errors: list[str]):
    """``need(ok, message)``: append ``message`` to ``errors`` when ``ok`` is false."""

    def need(ok: bool, message: str) -> None:
        if not ok:
            errors.append(message)

    return need


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
