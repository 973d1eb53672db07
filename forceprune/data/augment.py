"""Batched augmentation on uint8 image tensors (pure tensor ops, no per-sample Python loop)."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Augmentation:
    """Zero-pad ``pad`` pixels per side then random-crop back to H x W; flip left-right with p=0.5."""

    pad: int = 0
    flip: bool = False


def random_crop_flip(x: torch.Tensor, aug: Augmentation, generator: torch.Generator | None = None) -> torch.Tensor:
    """Augment a batch ``x`` uint8 (B, C, H, W) -> uint8 (B, C, H, W), independently per sample.

    Draws, in this order from ``generator`` (or the global RNG): row offsets (B,), column
    offsets (B,) in [0, 2*pad], flip coins (B,). Padding is 0, as in torchvision's RandomCrop.
    """
    b, c, h, w = x.shape
    p = aug.pad
    if p > 0:
        padded = x.new_zeros((b, c, h + 2 * p, w + 2 * p))
        padded[:, :, p:p + h, p:p + w] = x
        oy = torch.randint(0, 2 * p + 1, (b,), generator=generator)
        ox = torch.randint(0, 2 * p + 1, (b,), generator=generator)
        rows = (oy[:, None] + torch.arange(h))[:, None, :, None].expand(b, c, h, w + 2 * p)
        cols = (ox[:, None] + torch.arange(w))[:, None, None, :].expand(b, c, h, w)
        x = padded.gather(2, rows).gather(3, cols)
    if aug.flip:
        coin = torch.rand(b, generator=generator) < 0.5
        x = torch.where(coin[:, None, None, None], x.flip(3), x)
    return x
