"""timm-style model registry.

Models are registered by decorating a factory function::

    @register_model
    def resnet20(num_classes=10, in_channels=3, **kwargs) -> nn.Module: ...

and built by name with :func:`create_model`.  Every factory must accept
``num_classes`` and ``in_channels`` keyword arguments.
"""
from __future__ import annotations

import difflib
import fnmatch
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Tuple, Union

import torch.nn as nn

from ..errors import ForcePruneError

__all__ = [
    "ModelInfo",
    "UnknownModelError",
    "register_model",
    "create_model",
    "list_models",
    "get_model_info",
    "is_model",
]


@dataclass(frozen=True)
class ModelInfo:
    """Metadata kept for each registered model."""

    name: str
    fn: Callable[..., nn.Module]
    input_size: Tuple[int, int, int] = (3, 32, 32)  # default (C, H, W) the model was designed for
    description: str = ""
    tags: Tuple[str, ...] = field(default_factory=tuple)


_REGISTRY: Dict[str, ModelInfo] = {}


class UnknownModelError(ForcePruneError, KeyError):
    """Raised by :func:`create_model` / :func:`get_model_info` for an unregistered name."""

    def __init__(self, name: str, available: Iterable[str]):
        self.name = name
        self.available = sorted(available)
        self.suggestion: Optional[str] = _nearest(str(name), self.available)
        msg = f"Unknown model {name!r}."
        if self.suggestion is not None:
            msg += f" Did you mean {self.suggestion!r}?"
        msg += " Available models: " + (", ".join(self.available) if self.available else "(none)")
        self.message = msg
        super().__init__(msg)

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return self.message


def _nearest(name: str, candidates: Iterable[str]) -> Optional[str]:
    """Closest candidate by difflib ratio; ties broken by longer common prefix, then name."""
    query = name.lower().replace("-", "_")

    def key(c: str):
        prefix = len(os.path.commonprefix([query, c]))
        return (-difflib.SequenceMatcher(None, query, c).ratio(), -prefix, abs(len(c) - len(query)), c)

    ranked = sorted(candidates, key=key)
    return ranked[0] if ranked else None


def _first_doc_line(fn: Callable) -> str:
    doc = (fn.__doc__ or "").strip()
    return doc.splitlines()[0].strip() if doc else ""


def register_model(
    fn: Optional[Callable[..., nn.Module]] = None,
    *,
    name: Optional[str] = None,
    input_size: Tuple[int, int, int] = (3, 32, 32),
    description: Optional[str] = None,
    tags: Iterable[str] = (),
):
    """Register a model factory under ``name`` (default: the function's ``__name__``).

    Usable bare (``@register_model``) or with options
    (``@register_model(input_size=(1, 28, 28))``).  Returns the function unchanged.
    Registering a *different* function under an existing name raises ``ValueError``
    (re-registering the same function, e.g. on module reload, is allowed).
    """

    def _register(f: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = (name or f.__name__).lower()
        old = _REGISTRY.get(key)
        if old is not None and (old.fn.__module__, old.fn.__qualname__) != (f.__module__, f.__qualname__):
            raise ValueError(f"model {key!r} is already registered by {old.fn.__module__}.{old.fn.__qualname__}")
        _REGISTRY[key] = ModelInfo(
            name=key,
            fn=f,
            input_size=tuple(input_size),
            description=description if description is not None else _first_doc_line(f),
            tags=tuple(tags),
        )
        return f

    if fn is not None:
        return _register(fn)
    return _register


def _lookup(name: str) -> ModelInfo:
    key = str(name).lower().replace("-", "_")
    info = _REGISTRY.get(key)
    if info is None:
        raise UnknownModelError(name, _REGISTRY.keys())
    return info


def is_model(name: str) -> bool:
    """True if ``name`` is a registered model."""
    return str(name).lower().replace("-", "_") in _REGISTRY


def get_model_info(name: str) -> ModelInfo:
    """Metadata (factory, default ``input_size`` (C, H, W), description) of a registered model."""
    return _lookup(name)


def create_model(name: str, num_classes: int = 10, in_channels: int = 3, **kwargs) -> nn.Module:
    """Build the registered model ``name`` (case-insensitive, ``-`` == ``_``).

    Extra ``kwargs`` are forwarded to the factory (e.g. ``width_mult`` for mobilenetv2).
    Raises :class:`UnknownModelError` (a ``KeyError``) for an unknown name.
    """
    info = _lookup(name)
    return info.fn(num_classes=num_classes, in_channels=in_channels, **kwargs)


def list_models(pattern: Union[str, Iterable[str], None] = None) -> List[str]:
    """Sorted registered model names, optionally filtered by fnmatch pattern(s) (case-insensitive)."""
    names = sorted(_REGISTRY)
    if pattern is None:
        return names
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    patterns = [p.lower() for p in patterns]
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
