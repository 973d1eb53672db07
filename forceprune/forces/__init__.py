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
