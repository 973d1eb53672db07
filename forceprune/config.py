"""Run configuration: one frozen dataclass, read from TOML, validated eagerly.

A config file is a flat TOML table whose keys are the fields of :class:`RunConfig`,
plus an optional ``[force_options]`` table passed to the force law::

    model = "lenet5"
    dataset = "mnist"
    force = "etp"
    epochs = 8

    [force_options]
    beta = 5e-4
    norm = "l2"

``load_config(path, overrides=["epochs=3", "force_options.beta=1e-4"])`` applies
command-line overrides (values parsed as TOML literals, bare words as strings) and
checks every field at once; each problem is reported with the fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .budget import TARGET_KEYS, budget_errors
from .errors import ForcePruneError


IMAGEFOLDER_PREFIX = "imagefolder:"


class ConfigError(ForcePruneError):
    """A configuration value is missing, unknown, mistyped or impossible."""


def _opt(default: Any, help: str) -> Any:
    """A dataclass field with a default and its help text in ``metadata["help"]``."""
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def _required(help: str) -> Any:
    return field(metadata={"help": help})


@dataclass(frozen=True)
class RunConfig:
    """Everything one pruning run needs. Epoch counts are whole passes over the training set."""

    model: str = _required('Model name from the registry, e.g. "lenet5", "resnet20" (see forceprune.models.list_models()).')
    dataset: str = _required('Dataset name, e.g. "mnist", "fashion_mnist", "cifar10" or "imagefolder:<path>".')
    force: str = _required('Force law name, e.g. "etp", "torque", "electrostatic", "gravity", "group_lasso".')
    force_options: dict = _opt({}, "Options of the force law passed to ForcePruner, e.g. beta (penalty strength), norm, pivot, scale.")
    capture: Literal["unit", "element"] | None = _opt(None, 'What is captured (held at exactly 0): whole units ("unit") or single weights ("element"); unset = the force\'s default.')
    threshold: float | None = _opt(None, "Capture threshold in weight units (unit: all |w| of a unit <= it; element: |w| < it); unset = the force's default.")
    capture_every: int = _opt(10, "Capture every this many optimizer steps (0 = only at epoch end, as ETP's code).")
    cost_power: float = _opt(0.0, "Weight each unit set's force by (MACs per unit / mean)**cost_power; 0 = the papers' uniform force.")
    target_macs: float | None = _opt(None, "Keep this fraction of the dense model's MACs (e.g. 0.1 = 10x fewer): the budget controller sets the force strength; unset = fixed beta.")
    target_params: float | None = _opt(None, "Keep this fraction of the dense model's parameters (budget controller); unset = none.")
    target_latency_ms: float | None = _opt(None, "Reach this latency (ms per sample batch of latency_batch_sizes[0]) on this machine; unset = none.")
    budget: dict = _opt({}, "Budget controller options: warmup, reach (fraction of training by which the target is met, default 0.7), every, gain, min_width, round_to, tolerance.")
    download: bool = _opt(False, "Download the dataset (checksum-verified) into data_dir when it is missing; needs internet.")
    data_dir: str | None = _opt(None, "Dataset root directory; unset = $FORCEPRUNE_DATA, then ~/.cache/forceprune/data.")
    train_subset: int = _opt(0, "Use only this many training samples (random, seeded); 0 = all. For smoke tests.")
    test_subset: int = _opt(0, "Use only this many test samples (random, seeded); 0 = all. For smoke tests.")
    epochs: int = _opt(10, "Epochs of training with the force (the pruning phase).")
    dense_epochs: int = _opt(0, "Epochs of a dense baseline trained first with the same recipe (gives acc_dense); 0 = no baseline.")
    finetune_epochs: int = _opt(0, "Epochs of plain fine-tuning after unit removal; 0 = none.")
    finetune_lr: float | None = _opt(None, "Peak learning rate of the fine-tuning phase; unset = 0.1 x lr.")
    batch_size: int = _opt(128, "Training mini-batch size (samples).")
    eval_batch_size: int = _opt(512, "Evaluation mini-batch size (samples).")
    optimizer: Literal["sgd", "adamw"] = _opt("sgd", 'Optimizer: "sgd" (with momentum) or "adamw".')
    lr: float = _opt(0.05, "Peak learning rate (reached after the warm-up).")
    momentum: float = _opt(0.9, "SGD momentum in [0, 1); ignored by adamw.")
    weight_decay: float = _opt(5e-4, "Decoupled (adamw) or L2 (sgd) weight decay; never applied to biases and norm layers.")
    schedule: Literal["cosine", "step", "constant"] = _opt("cosine", 'Learning-rate schedule after the warm-up: "cosine", "step" or "constant".')
    milestones: tuple[int, ...] = _opt((), 'Epochs (of `epochs`) at which the "step" schedule multiplies the lr by gamma; other phases use the same fractions of their length.')
    gamma: float = _opt(0.1, 'Factor of the "step" schedule at each milestone, in (0, 1].')
    warmup_epochs: int = _opt(0, "Epochs of linear learning-rate warm-up from 0 to lr.")
    seed: int = _opt(0, "Seed of torch, numpy and random; also fixes data order and model initialisation.")
    deterministic: bool = _opt(False, "Use deterministic algorithms only (slower on GPU).")
    device: Literal["auto", "cpu", "cuda"] = _opt("auto", '"auto" = CUDA when available, else CPU.')
    amp: bool = _opt(True, "Mixed precision (float16 autocast) on CUDA; ignored on CPU.")
    channels_last: bool | Literal["auto"] = _opt("auto", '"auto" = channels-last memory format for conv models on CPU; or true / false.')
    output_dir: str = _opt("runs/forceprune", "Directory for checkpoints, report.json, pictures and the pruned model; default runs/<config name>.")
    latency_batch_sizes: tuple[int, ...] = _opt((1, 64), "Batch sizes (samples) at which latency is measured before and after removal.")
    latency_repeats: int = _opt(30, "Timed forward passes per model and batch size, split into 5 alternating dense/pruned rounds; the median of the round medians is reported.")

    def __post_init__(self) -> None:
        errors = _check_values(self)
        if errors:
            raise ConfigError("; ".join(errors))

    def to_dict(self) -> dict[str, Any]:
        """The config as JSON-safe plain types (tuples become lists)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> RunConfig:
        """Build a config from plain data, with the same checks as :func:`load_config`."""
        try:
            return cls(**_coerce_all(data))
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None


def field_help() -> dict[str, str]:
    """Help text of every config field, keyed by field name."""
    return {f.name: f.metadata["help"] for f in dataclasses.fields(RunConfig)}


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a TOML config, apply ``key=value`` overrides and validate everything.

    ``output_dir`` defaults to ``runs/<config file stem>``. Model, dataset and force names and
    the force options are checked against the installed registries. Raises :class:`ConfigError`
    naming every problem and its fix.
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; pass the path of a .toml file (see configs/)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    data.setdefault("output_dir", f"runs/{path.stem}")
    for item in overrides:
        apply_override(data, item)
    config = RunConfig.from_dict(data, source=str(path))
    check_registry_names(config)
    return config


def apply_override(data: dict[str, Any], item: str) -> None:
    """Apply one ``key=value`` (or ``table.key=value``) override to raw config data in place."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {item!r} must look like key=value, e.g. --set epochs=3")
    value = parse_literal(raw.strip())
    head, dot, tail = key.partition(".")
    names = _field_names()
    if head not in names:
        raise ConfigError(_unknown_key_message(head, names, "override"))
    if not dot:
        data[head] = value
        return
    if head not in ("force_options", "budget"):
        raise ConfigError(f"override {item!r}: only force_options and budget have sub-keys; use {head}=value")
    current = data.get(head, {})
    if not isinstance(current, dict):
        raise ConfigError(f"override {item!r}: {head} is {current!r}, not a table; set {head} as a table or drop that override")
    options = dict(current)
    options[tail] = value
    data[head] = options


def parse_literal(text: str) -> Any:
    """Parse a TOML literal (``3``, ``1e-4``, ``true``, ``[1, 64]``, ``"x"``); a bare word stays a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def check_registry_names(config: RunConfig) -> None:
    """Check model, dataset and force names against the installed registries.

    A registry that cannot be imported is skipped (its own error appears when the run starts).
    """
    errors = []
    checks = [("model", config.model, _registry("forceprune.models", "list_models")),
              ("force", config.force, _registry("forceprune.forces", "available"))]
    if not config.dataset.startswith(IMAGEFOLDER_PREFIX):
        checks.append(("dataset", config.dataset, _registry("forceprune.data", "list_datasets")))
    for key, value, names in checks:
        if names is None or value in names:
            continue
        near = difflib.get_close_matches(value, names, n=1)
        hint = f'did you mean {key} = "{near[0]}"? ' if near else ""
        extra = f' or "{IMAGEFOLDER_PREFIX}<path>"' if key == "dataset" else ""
        errors.append(f"unknown {key} {value!r}: {hint}choose one of {', '.join(names)}{extra}")
    if not errors:
        errors += _force_option_errors(config)
    if config.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            errors.append('device = "cuda" but CUDA is not available here; use device = "auto" or "cpu"')
    if errors:
        raise ConfigError("; ".join(errors))


def _force_option_errors(config: RunConfig) -> list[str]:
    """Build the force law once so that unknown or invalid force_options fail now, not mid-run."""
    from .forces import resolve

    try:
        resolve(config.force, config.force_options)
    except (ForcePruneError, TypeError) as exc:
        return [f"force_options for force {config.force!r}: {exc}"]
    return []


def _registry(module: str, function: str) -> list[str] | None:
    try:
        mod = __import__(module, fromlist=[function])
        return list(getattr(mod, function)())
    except (ImportError, AttributeError):
        return None


def _field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(RunConfig)]


def _unknown_key_message(key: str, names: list[str], where: str) -> str:
    near = difflib.get_close_matches(key, names, n=1)
    hint = f"did you mean {near[0]!r}?" if near else f"valid keys: {', '.join(names)}"
    return f"unknown {where} key {key!r}: {hint}"


def _coerce_all(data: dict[str, Any]) -> dict[str, Any]:
    """Check keys and types of raw data; return kwargs for RunConfig."""
    names = _field_names()
    hints = typing.get_type_hints(RunConfig)
    errors = [_unknown_key_message(k, names, "config") for k in data if k not in names]
    required = [f.name for f in dataclasses.fields(RunConfig) if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    errors += [f"missing required key {k!r}; add e.g. {k} = \"...\" ({field_help()[k]})" for k in required if k not in data]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            continue
        try:
            kwargs[key] = _coerce(value, hints[key], key)
        except ConfigError as exc:
            errors.append(str(exc))
    if errors:
        raise ConfigError("; ".join(errors))
    return kwargs


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Return ``value`` converted to type ``hint`` (int -> float, list -> tuple) or raise ConfigError."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None and len(options) < len(typing.get_args(hint)):
            return None
        if len(options) == 1:
            return _coerce(value, options[0], key)
        for option in options:
            try:
                return _coerce(value, option, key)
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
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} = {value!r} has the wrong type: expected a list of integers, e.g. {key} = [1, 64]")
        return tuple(_coerce(v, int, key) for v in value)
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} = {value!r} has the wrong type: expected a table, e.g. {key} = {{ beta = 1e-4 }}")
        return dict(value)
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
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


def _check_values(c: RunConfig) -> list[str]:
    """Range and consistency checks; each message names the fix."""
    errors = []

    def need(ok: bool, message: str) -> None:
        if not ok:
            errors.append(message)

    need(c.epochs >= 1, f"epochs = {c.epochs} is impossible: set epochs to 1 or more")
    for name in ("dense_epochs", "finetune_epochs", "train_subset", "test_subset", "seed"):
        need(getattr(c, name) >= 0, f"{name} = {getattr(c, name)} is negative: set it to 0 or more")
    need(c.latency_repeats >= 3, f"latency_repeats = {c.latency_repeats} is too few: set it to 3 or more, e.g. 30")
    for name in ("batch_size", "eval_batch_size"):
        need(getattr(c, name) >= 1, f"{name} = {getattr(c, name)} is impossible: set it to 1 or more")
    need(c.lr > 0, f"lr = {c.lr} must be > 0: set e.g. lr = 0.05")
    need(c.finetune_lr is None or c.finetune_lr > 0, f"finetune_lr = {c.finetune_lr} must be > 0, or leave it unset for 0.1 x lr")
    need(0 <= c.momentum < 1, f"momentum = {c.momentum} must be in [0, 1): set e.g. momentum = 0.9")
    need(c.weight_decay >= 0, f"weight_decay = {c.weight_decay} must be >= 0: set e.g. weight_decay = 5e-4")
    need(0 < c.gamma <= 1, f"gamma = {c.gamma} must be in (0, 1]: set e.g. gamma = 0.1")
    need(0 <= c.warmup_epochs < max(c.epochs, 1), f"warmup_epochs = {c.warmup_epochs} must be in [0, epochs = {c.epochs}): lower it")
    need(c.threshold is None or c.threshold > 0, f"threshold = {c.threshold} must be > 0, or leave it unset for the pruner's default")
    if c.schedule == "step":
        need(len(c.milestones) > 0, f'schedule = "step" needs milestones, e.g. milestones = [{max(1, c.epochs // 2)}]')
    need(
        list(c.milestones) == sorted(set(c.milestones)) and all(0 < m < c.epochs for m in c.milestones),
        f"milestones = {list(c.milestones)} must be increasing epochs strictly between 0 and epochs = {c.epochs}",
    )
    need(
        len(c.latency_batch_sizes) > 0 and all(b >= 1 for b in c.latency_batch_sizes),
        f"latency_batch_sizes = {list(c.latency_batch_sizes)} must be a non-empty list of batch sizes >= 1, e.g. [1, 64]",
    )
    need(all(isinstance(k, str) for k in c.force_options), "force_options keys must be strings")
    need(c.capture_every >= 0, f"capture_every = {c.capture_every} must be >= 0 (0 = capture at epoch end only)")
    need(0 <= c.cost_power <= 4, f"cost_power = {c.cost_power} must be in [0, 4]: 0 = uniform, 1 = MACs-proportional")
    errors += budget_errors({k: getattr(c, k) for k in TARGET_KEYS}, c.budget)
    need("beta" not in c.force_options or _is_number(c.force_options["beta"]) and c.force_options["beta"] >= 0,
         f"force_options.beta = {c.force_options.get('beta')!r} must be a number >= 0, e.g. beta = 5e-4")
    need(bool(c.output_dir.strip()), 'output_dir is empty: set e.g. output_dir = "runs/my_run"')
    return errors


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
