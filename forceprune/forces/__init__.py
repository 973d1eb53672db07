"""Force laws. Select by name (``fp.forces.create("etp", beta=1e-4)``) or build the class."""
from __future__ import annotations

import dataclasses
import difflib

from ..errors import ForcePruneError
from .base import Force, available, force_class, register_force
from .inverse_square import Electrostatic, Gravity
from .presets import PRESETS
from .torque import ExponentialTorque, GroupLasso, LinearTorque

__all__ = [
    "Force",
    "ExponentialTorque",
    "LinearTorque",
    "GroupLasso",
    "Gravity",
    "Electrostatic",
    "PRESETS",
    "available",
    "create",
    "resolve",
    "register_force",
]


def create(name: str, **options) -> Force:
    """Build a registered force law by name, validating every option.

    Unknown options raise an error listing the valid ones (and the nearest match).
    """
    cls = force_class(name)
    valid = [f.name for f in dataclasses.fields(cls)]
    for key in options:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ForcePruneError(f"force {name!r} has no option {key!r}.{hint} Valid options: {', '.join(valid)}.")
    return cls(**options)


#: Capture settings of a force that is not a preset.
DEFAULT_CAPTURE = {"capture": "unit", "threshold": 1e-3}


def resolve(force: str | Force, options: dict | None = None) -> tuple[Force, dict]:
    """A force law from a registered name, a preset name (``"etp-official"``) or a
    :class:`Force` object, with ``options`` applied; returns it with its capture defaults
    (``{"capture", "threshold"}``: a preset's own, else unit capture at 1e-3)."""
    options = dict(options or {})
    if isinstance(force, Force):
        if options:
            raise ForcePruneError(
                f"options {sorted(options)} were given with a Force object; set them on the object instead, "
                f"e.g. dataclasses.replace(force, {next(iter(options))}=...)."
            )
        return force, dict(DEFAULT_CAPTURE)
    if not isinstance(force, str):
        raise ForcePruneError(f"force must be a name or a Force object, got {type(force).__name__}.")
    if force in PRESETS:
        preset = PRESETS[force]
        capture = {k: preset[k] for k in DEFAULT_CAPTURE}
        return create(preset["force"], **{**preset["force_options"], **options}), capture
    return create(force, **options), dict(DEFAULT_CAPTURE)
