"""The raw result every reader returns."""
from __future__ import annotations

from typing import NamedTuple

import torch


class Splits(NamedTuple):
    """Train/test images ``uint8 (N, C, H, W)`` and labels ``int64 (N,)`` plus metadata."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    class_names: tuple[str, ...] = ()
    note: str = ""
