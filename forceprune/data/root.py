"""Where datasets live on disk."""
from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "FORCEPRUNE_DATA"


def data_root(cli_value: str | os.PathLike | None = None) -> Path:
    """Return the data root directory (not created here).

    Precedence: ``cli_value`` (e.g. ``--data-dir``) > ``$FORCEPRUNE_DATA`` > a team data folder
    ``../shared/data`` beside the current directory, when one exists (our machines' layout:
    the checkout sits next to ``shared/``) > ``$XDG_CACHE_HOME/forceprune/data`` >
    ``~/.cache/forceprune/data``.
    Datasets sit in sub-folders of it: ``mnist/``, ``fashion-mnist/``, ``cifar10/`` (npz),
    ``cifar-10-batches-py/``, ``cifar-100-python/``, ...
    """
    if cli_value:
        return Path(cli_value).expanduser()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    team = Path.cwd().parent / "shared" / "data"
    if team.is_dir():
        return team
    cache = os.environ.get("XDG_CACHE_HOME")
    base = Path(cache).expanduser() if cache else Path.home() / ".cache"
    return base / "forceprune" / "data"
