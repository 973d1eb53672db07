"""Reader for the MNIST idx format (``mnist/``, ``fashion-mnist/``; ``.gz`` or uncompressed)."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from .checksums import expected_checksum, verify_file
from .download import MIRRORS, download_file
from .errors import DatasetNotFoundError, not_found_message
from .splits import Splits

FILES = {  # role -> base name (without .gz)
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
FOLDERS = {  # dataset -> accepted folders under the data root, preferred first (2nd: torchvision layout)
    "mnist": ["mnist", "MNIST/raw"],
    "fashion_mnist": ["fashion-mnist", "FashionMNIST/raw"],
}
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Parse an idx file (gzip-compressed if the name ends in .gz) into an array of its shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise ValueError(f"{path} is not an idx file (bad magic {data[:4].hex()})")
    ndim = data[3]
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_DTYPES[data[2]])
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(dims)) * dtype.itemsize:
        raise ValueError(f"{path}: header says {dims} x {dtype.itemsize} bytes, payload is {len(data) - offset} bytes")
    return np.frombuffer(data, dtype, offset=offset).reshape(dims)


def _locate(folder: Path) -> dict[str, Path] | None:
    """Map role -> existing file (.gz preferred) in ``folder``, or None if any is missing."""
    found = {}
    for role, base in FILES.items():
        for name in (base + ".gz", base):
            if (folder / name).is_file():
                found[role] = folder / name
                break
        else:
            return None
    return found


def load_idx_dataset(name: str, root: Path, *, verify: bool = True, download: bool = False) -> Splits:
    """Load ``mnist`` or ``fashion_mnist`` from ``root``: images uint8 (N, 1, 28, 28), labels int64."""
    files = None
    for sub in FOLDERS[name]:
        files = _locate(root / sub)
        if files:
            break
    if files is None and download:
        folder = root / FOLDERS[name][0]
        for base in FILES.values():
            if not (folder / (base + ".gz")).is_file():
                download_file(MIRRORS[name], base + ".gz", folder / (base + ".gz"),
                              expected_checksum(name, base + ".gz"))
        files = _locate(folder)
    if files is None:
        names = [b + ".gz" for b in FILES.values()]
        layouts = [(root / sub, names) for sub in FOLDERS[name]]
        raise DatasetNotFoundError(not_found_message(name, root, layouts, MIRRORS[name][0]) +
                                   "\n(The uncompressed idx files, without .gz, are accepted too.)")
    if verify:
        for path in files.values():
            verify_file(path, expected_checksum(name, path.name))
    arrays = {role: read_idx(path) for role, path in files.items()}
    for split in ("train", "test"):
        x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if x.dtype != np.uint8 or x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise ValueError(f"{name} {split}: images {x.shape} and labels {y.shape} do not match (want uint8 (N, H, W) and (N,))")
    t = {role: torch.from_numpy(a.copy()) for role, a in arrays.items()}
    return Splits(t["train_x"].unsqueeze(1), t["train_y"].long(), t["test_x"].unsqueeze(1), t["test_y"].long())
