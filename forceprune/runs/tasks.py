"""The tasks a run can have, and how a config file picks one.

Each task is a config class (its fields, with help text and checks) and an adapter class that
loads its data and models and knows its objective and recipes. The pipeline
(:mod:`forceprune.runs.pipeline`) only ever talks to an adapter through these verbs:
``build_model()``, ``objective(model, batch)``, ``phase(name)``, ``method_options(model)``,
``formatted(model)``, ``latency_inputs()``, ``latency_settings()``, ``describe(model)``,
``save(model, method, path)``, ``load(path)`` and the attributes ``train_batches``,
``eval_batches``, ``extra_evals``, ``example_inputs``, ``calibration_inputs``, ``eval_split``,
``dataset_note``, ``device``; optionally ``facts()`` (report entries), ``targets(model)`` (the
budget as the pruner takes it), ``compare(dense, pruned)`` (side-by-side extras, e.g.
generations) and ``perplexity = True`` (report ``ppl_*`` beside the accuracies).

To add a task: write its config (a :class:`~forceprune.runs.config.RunConfig` subclass) and
adapter, and add them to :data:`TASKS`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import DEFAULT_TASK, ConfigError, RunConfig, apply_override, read_toml, unknown_name
from .lm import LMConfig, LMTask
from .text import TextConfig, TextTask
from .vision import VisionConfig, VisionTask

#: task name -> (config class, adapter class)
TASKS: dict[str, tuple[type[RunConfig], type]] = {
    VisionConfig.task_name: (VisionConfig, VisionTask),
    TextConfig.task_name: (TextConfig, TextTask),
    LMConfig.task_name: (LMConfig, LMTask),
}


def config_class(task: Any) -> type[RunConfig]:
    """The config class of a task name."""
    if not isinstance(task, str) or task not in TASKS:
        raise ConfigError(unknown_name("task", task, sorted(TASKS)))
    return TASKS[task][0]


def config_from_dict(data: dict[str, Any], source: str = "config") -> RunConfig:
    """A config from plain data; its ``task`` key (default ``"image_classification"``) picks the class."""
    return config_class(data.get("task", DEFAULT_TASK)).from_dict(data, source)


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a TOML config, apply ``key=value`` overrides and validate everything.

    ``output_dir`` defaults to ``runs/<config file stem>``. Names (model, dataset, force) and
    force options are checked against the installed registries. Raises :class:`ConfigError`
    naming every problem and its fix."""
    path = Path(path)
    data = read_toml(path)
    try:
        cls = config_class(data.get("task", DEFAULT_TASK))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    data.setdefault("output_dir", f"runs/{path.stem}")
    for item in overrides:
        apply_override(data, item, cls)
    config = cls.from_dict(data, source=str(path))
    errors = config.check_names()
    if errors:
        raise ConfigError(f"{path}: " + "; ".join(errors))
    return config


def open_task(config: RunConfig):
    """The adapter of a config's task: loads its data (and tokenizer), not yet the model."""
    return TASKS[config.task_name][1](config)
