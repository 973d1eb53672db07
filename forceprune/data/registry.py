"""Public entry points: ``list_datasets``, ``load_dataset``, ``make_loaders``."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from .augment import Augmentation
from .cifar import load_cifar
from .idx import load_idx_dataset
from .imagefolder import load_imagefolder
from .info import BUILTIN, DatasetInfo
from .loader import BatchLoader
from .root import data_root
from .splits import Splits
from .tensor_dataset import ImageTensorDataset

IMAGEFOLDER_PREFIX = "imagefolder:"
# Train-time augmentation per dataset (applied only when augment=True); MNIST-likes get none.
AUGMENTATION: dict[str, Augmentation | None] = {
    "mnist": None,
    "fashion_mnist": None,
    "cifar10": Augmentation(pad=4, flip=True),
    "cifar100": Augmentation(pad=4, flip=True),
}


def list_datasets() -> list[str]:
    """Names of the built-in datasets; any ``"imagefolder:<path>"`` is accepted as well."""
    return sorted(BUILTIN)


def _canonical(name: str) -> str:
    if name.startswith(IMAGEFOLDER_PREFIX):
        return name
    key = name.strip().lower().replace("-", "_")
    if key not in BUILTIN:
        raise ValueError(f"unknown dataset {name!r}; choose from {list_datasets()} or 'imagefolder:<path>'")
    return key


def _channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std in [0, 1] units of uint8 (N, C, H, W), accumulated in float64."""
    c = x.shape[1]
    flat = x.transpose(0, 1).reshape(c, -1).to(torch.float64) / 255.0
    std = flat.std(dim=1, unbiased=False).clamp_min(1e-3)
    return tuple(flat.mean(dim=1).tolist()), tuple(std.tolist())


def load_dataset(name: str, root: str | os.PathLike | None = None, augment: bool = True,
                 download: bool = False, verify: bool = True
                 ) -> tuple[ImageTensorDataset, ImageTensorDataset, DatasetInfo]:
    """Load a dataset fully into memory.

    Returns ``(train_ds, test_ds, info)``; items are (float32 (C, H, W) normalised, int64 label).
    ``root`` defaults to ``data_root()``. ``augment`` enables the dataset's train-time augmentation
    (CIFAR: pad-4 random crop + horizontal flip; MNIST-likes: none). ``verify`` checks the files
    against the published checksums (cached per file); ``download`` opts in to fetching missing
    standard files. Raises ``DatasetNotFoundError`` or ``ChecksumError``.
    """
    key = _canonical(name)
    root_path = Path(root).expanduser() if root is not None else data_root()
    if key.startswith(IMAGEFOLDER_PREFIX):
        splits = load_imagefolder(key[len(IMAGEFOLDER_PREFIX):], root_path)
        mean, std = _channel_stats(splits.train_x)
        h, w = splits.train_x.shape[2:]
        aug = Augmentation(pad=max(1, min(h, w) // 8), flip=True)
        info = DatasetInfo(key, len(splits.class_names), tuple(splits.train_x.shape[1:]), mean, std,
                           note="normalisation statistics computed from train/", class_names=splits.class_names)
    else:
        splits = _load_builtin(key, root_path, verify, download)
        info = dataclasses.replace(BUILTIN[key], note=splits.note,
                                   class_names=splits.class_names or BUILTIN[key].class_names)
        aug = AUGMENTATION[key]
    train = ImageTensorDataset(splits.train_x, splits.train_y, info.mean, info.std, aug if augment else None)
    test = ImageTensorDataset(splits.test_x, splits.test_y, info.mean, info.std, None)
    return train, test, info


def _load_builtin(key: str, root: Path, verify: bool, download: bool) -> Splits:
    if key in ("mnist", "fashion_mnist"):
        return load_idx_dataset(key, root, verify=verify, download=download)
    return load_cifar(key, root, verify=verify, download=download)


def make_loaders(name: str, root: str | os.PathLike | None = None, batch_size: int = 128,
                 eval_batch_size: int = 512, augment: bool = True, seed: int = 0, download: bool = False,
                 verify: bool = True, drop_last: bool = False) -> tuple[BatchLoader, BatchLoader, DatasetInfo]:
    """``load_dataset`` + fast batched loaders.

    Returns ``(train_loader, test_loader, info)``. The train loader shuffles and augments whole
    batches from a generator seeded by (``seed``, epoch); the test loader is in file order, no
    augmentation. Both yield (float32 (B, C, H, W), int64 (B,)) and support ``len()``;
    ``train_loader.set_epoch(e)`` resumes the stream at epoch ``e``.
    """
    train, test, info = load_dataset(name, root=root, augment=augment, download=download, verify=verify)
    train_loader = BatchLoader(train, batch_size, shuffle=True, augment=augment, seed=seed, drop_last=drop_last)
    test_loader = BatchLoader(test, eval_batch_size, shuffle=False, augment=False, seed=seed)
    return train_loader, test_loader, info
