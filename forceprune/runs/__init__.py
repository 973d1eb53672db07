"""Runs: one pipeline (train with a force -> capture -> remove -> fine-tune -> measure -> report
-> save) for every task, driven by one config system.

    from forceprune.runs import load_config, run
    report = run(load_config("configs/lenet5_mnist_etp.toml"))

* :mod:`~forceprune.runs.config`: the shared config machinery (fields with help text, TOML,
  ``--set`` overrides, coercion and checks); :mod:`~forceprune.runs.tasks`: which task a config
  file is, and :func:`load_config`.
* :mod:`~forceprune.runs.vision` / :mod:`~forceprune.runs.text`: each task's config and adapter.
* :mod:`~forceprune.runs.loop`: the one training loop and ``evaluate``.
* :mod:`~forceprune.runs.pipeline`: the stages and the report; :mod:`~forceprune.runs.rundir`:
  the run directory.
"""
from .config import ConfigError, RunConfig
from .loop import Evaluation, Phase, Trainer, evaluate
from .pipeline import evaluate_run, load_run_config, prune, run, train
from .rundir import RunDirError, has_checkpoint, last_checkpoint
from .tasks import TASKS, config_class, config_from_dict, load_config
from .text import TextConfig
from .vision import VisionConfig

__all__ = [
    "ConfigError", "Evaluation", "Phase", "RunConfig", "RunDirError", "TASKS", "TextConfig", "Trainer", "VisionConfig",
    "config_class", "config_from_dict", "evaluate", "evaluate_run", "has_checkpoint", "last_checkpoint", "load_config",
    "load_run_config", "prune", "run", "train",
]
