"""Exceptions raised by forceprune. Every message names the cause and the fix."""


class ForcePruneError(ValueError):
    """Bad input to forceprune: the message says what is wrong and how to fix it."""


class UnknownForceError(ForcePruneError, KeyError):
    """A force name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0] if self.args else ""


class NonFiniteError(ForcePruneError, FloatingPointError):
    """NaN or Inf in weights or in the penalty."""


class UnsafeCheckpointError(ForcePruneError):
    """A checkpoint holds pickled Python objects, which forceprune refuses to unpickle."""


class CorruptFileError(ForcePruneError):
    """A file forceprune wrote (checkpoint, weights, plan) is truncated, damaged or not one."""


class WriteError(ForcePruneError, OSError):
    """Writing failed (disk full, permission, read-only, name too long, ...); what was there
    before is intact and no partial file is left."""
