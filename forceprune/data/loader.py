"""Fast batched loader over an ``ImageTensorDataset``: seeded shuffling, batch-level augmentation."""
from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from .tensor_dataset import ImageTensorDataset


def epoch_seed(seed: int, epoch: int) -> int:
    """Well-mixed 63-bit seed for (seed, epoch); distinct epochs give unrelated streams."""
    state = np.random.SeedSequence([seed % 2**64, epoch % 2**64]).generate_state(1, np.uint64)[0]
    return int(state) & (2**63 - 1)


class BatchLoader:
    """Iterable of ``(x float32 (B, C, H, W), y int64 (B,))`` batches.

    Each ``iter()`` is one epoch: it uses a ``torch.Generator`` seeded from (``seed``, epoch) for
    the permutation and the augmentation draws, then advances the epoch counter. The stream is
    therefore reproducible per (seed, epoch) and different every epoch; call ``set_epoch(e)``
    when resuming so that the next epoch is ``e``. ``len()`` is the number of batches.
    """

    def __init__(self, dataset: ImageTensorDataset, batch_size: int, *, shuffle: bool = False,
                 augment: bool = False, seed: int = 0, drop_last: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.dataset, self.batch_size = dataset, int(batch_size)
        self.shuffle, self.augment, self.seed, self.drop_last = shuffle, augment, int(seed), drop_last
        self._epoch = 0

    @property
    def epoch(self) -> int:
        """The epoch the next ``iter()`` will produce."""
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter()`` produce epoch ``epoch`` (for resuming)."""
        self._epoch = int(epoch)

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(epoch_seed(self.seed, self._epoch))
        self._epoch += 1
        n = len(self.dataset)
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        return self._batches(order, gen)

    def _batches(self, order: torch.Tensor, gen: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for k in range(len(self)):
            idx = order[k * self.batch_size:(k + 1) * self.batch_size]
            yield self.dataset.batch(idx, augment=self.augment, generator=gen)
