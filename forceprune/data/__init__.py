"""Datasets for forceprune: MNIST, Fashion-MNIST, CIFAR-10/100 and image folders, held in memory.

>>> train_loader, test_loader, info = make_loaders("cifar10", batch_size=128, seed=0)  # doctest: +SKIP
"""
from .errors import ChecksumError, DatasetNotFoundError
from .info import DatasetInfo
from .loader import BatchLoader
from .registry import list_datasets, load_dataset, make_loaders
from .root import data_root
from .tensor_dataset import ImageTensorDataset

__all__ = [
    "BatchLoader", "ChecksumError", "DatasetInfo", "DatasetNotFoundError", "ImageTensorDataset",
    "data_root", "list_datasets", "load_dataset", "make_loaders",
]
