"""In-memory image dataset: uint8 storage, normalised float32 on access."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from .augment import Augmentation, random_crop_flip


class ImageTensorDataset(Dataset):
    """Images ``uint8 (N, C, H, W)`` and labels ``int64 (N,)`` held in memory.

    ``ds[i]`` -> (float32 (C, H, W) normalised with ``mean``/``std`` (per channel, [0, 1] units),
    int64 scalar label). If ``augmentation`` is set, ``__getitem__`` applies it with the global
    torch RNG (for use with ``torch.utils.data.DataLoader``); ``BatchLoader`` instead augments
    whole batches from a seeded generator, which is much faster.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                 augmentation: Augmentation | None = None):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
        c = images.shape[1]
        if len(mean) != c or len(std) != c:
            raise ValueError(f"mean/std need {c} entries, got {len(mean)}/{len(std)}")
        self.images = images.contiguous()
        self.labels = labels.to(torch.int64)
        self.mean, self.std = tuple(mean), tuple(std)
        self.augmentation = augmentation
        std_t = torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1)
        self._scale = 1.0 / (255.0 * std_t)
        self._shift = torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1) / std_t

    def __len__(self) -> int:
        return self.images.shape[0]

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) -> float32 (B, C, H, W): (x/255 - mean) / std."""
        return x.to(torch.float32).mul_(self._scale).sub_(self._shift)

    def batch(self, index: torch.Tensor, augment: bool = False,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Gather samples ``index`` (B,) -> (float32 (B, C, H, W), int64 (B,)), augmenting if asked."""
        x = self.images[index]
        if augment and self.augmentation is not None:
            x = random_crop_flip(x, self.augmentation, generator)
        return self.normalize(x), self.labels[index]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.batch(torch.tensor([int(i)]), augment=self.augmentation is not None)
        return x[0], y[0]
