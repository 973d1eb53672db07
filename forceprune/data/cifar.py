"""Readers for CIFAR-10/100: the official python-pickle batches and the ``.npz`` shard form.

Layouts under the data root (first found wins):
  * npz:    ``cifar10/train_*.npz`` (``x_train`` uint8 (n, 32, 32, 3) HWC RGB, ``y_train``) and
            ``cifar10/test.npz`` (``x_test``, ``y_test``); same for ``cifar100/``.
  * pickle: ``cifar-10-batches-py/`` (data_batch_1..5, test_batch, batches.meta) or
            ``cifar-100-python/`` (train, test, meta; fine labels).
"""
from __future__ import annotations

import codecs
import importlib
import pickle
import re
from pathlib import Path

import numpy as np
import torch

from .checksums import expected_checksum, verify_file
from .download import MIRRORS, download_and_extract
from .errors import DatasetNotFoundError, not_found_message
from .info import JPEG_NOTE
from .splits import Splits

PICKLE = {
    "cifar10": {"folder": "cifar-10-batches-py", "archive": "cifar-10-python.tar.gz",
                "train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"],
                "meta": "batches.meta", "label_key": "labels", "names_key": "label_names"},
    "cifar100": {"folder": "cifar-100-python", "archive": "cifar-100-python.tar.gz",
                 "train": ["train"], "test": ["test"],
                 "meta": "meta", "label_key": "fine_labels", "names_key": "fine_label_names"},
}
NPZ_FOLDER = {"cifar10": "cifar10", "cifar100": "cifar100"}


def _latin1_encode(obj: str, encoding: str = "utf-8") -> bytes:
    """Stand-in for ``_codecs.encode`` (py3 protocol-2 pickles of bytes): latin-1 only."""
    if codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"refusing codec {encoding!r} in a CIFAR pickle")
    return obj.encode("latin-1")


def _numpy_attr(module: str, name: str):
    new = module.replace("numpy.core", "numpy._core", 1)
    try:
        return getattr(importlib.import_module(new), name)
    except ImportError:  # numpy < 2
        return getattr(importlib.import_module(module), name)


_ALLOWED = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
}


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that only resolves the numpy array constructors CIFAR batches need."""

    def find_class(self, module: str, name: str):
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        if (module, name) in _ALLOWED:
            return _numpy_attr(module, name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}: a CIFAR batch only "
                                     "holds dicts, lists and numpy arrays")


def unpickle(path: Path) -> dict:
    """Load one CIFAR pickle (py2 format: ``encoding='bytes'``) into a dict with str keys."""
    with open(path, "rb") as f:
        obj = _CifarUnpickler(f, encoding="bytes").load()
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict, got {type(obj).__name__}")
    return {(k.decode("latin-1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _to_tensors(x: np.ndarray, y: np.ndarray, source: Path, hwc: bool) -> tuple[torch.Tensor, torch.Tensor]:
    x = np.asarray(x)
    if x.dtype != np.uint8:
        raise ValueError(f"{source}: images must be uint8, got {x.dtype}")
    x = x.reshape(-1, 3, 32, 32) if not hwc else x
    if x.shape[1:] != ((32, 32, 3) if hwc else (3, 32, 32)) or len(x) != len(y):
        raise ValueError(f"{source}: unexpected shapes images {x.shape}, labels {np.shape(y)}")
    t = torch.from_numpy(np.ascontiguousarray(x))
    t = t.permute(0, 3, 1, 2).contiguous() if hwc else t
    return t, torch.as_tensor(np.asarray(y, dtype=np.int64))


def _load_pickle(name: str, folder: Path, verify: bool) -> Splits:
    spec = PICKLE[name]
    group = f"{name}_pickle"
    out = []
    for split in ("train", "test"):
        xs, ys = [], []
        for fn in spec[split]:
            path = folder / fn
            if verify:
                verify_file(path, expected_checksum(group, fn))
            d = unpickle(path)
            x, y = _to_tensors(d["data"], d[spec["label_key"]], path, hwc=False)
            xs.append(x)
            ys.append(y)
        out += [torch.cat(xs), torch.cat(ys)]
    names: tuple[str, ...] = ()
    meta = folder / spec["meta"]
    if meta.is_file():
        if verify:
            verify_file(meta, expected_checksum(group, spec["meta"]))
        raw = unpickle(meta).get(spec["names_key"], [])
        names = tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in raw)
    return Splits(*out, class_names=names)


def _npz_train_files(folder: Path) -> list[Path]:
    files = [p for p in folder.glob("train_*.npz") if re.fullmatch(r"train_\d+\.npz", p.name)]
    return sorted(files, key=lambda p: int(p.stem.split("_")[1]))


def _load_npz(name: str, folder: Path, verify: bool) -> Splits:
    group = f"{name}_npz"
    train_files, test_file = _npz_train_files(folder), folder / "test.npz"
    if name == "cifar10" and [p.name for p in train_files] != [f"train_{k}.npz" for k in range(5)]:
        raise DatasetNotFoundError(f"{folder} must hold train_0.npz .. train_4.npz and test.npz; "
                                   f"found {sorted(p.name for p in folder.glob('*.npz'))}")
    if verify:
        for p in [*train_files, test_file]:
            verify_file(p, expected_checksum(group, p.name))
    xs, ys = [], []
    for p in train_files:
        with np.load(p, allow_pickle=False) as z:
            x, y = _to_tensors(z["x_train"], z["y_train"], p, hwc=True)
        xs.append(x)
        ys.append(y)
    with np.load(test_file, allow_pickle=False) as z:
        tx, ty = _to_tensors(z["x_test"], z["y_test"], test_file, hwc=True)
        names = tuple(str(s) for s in z["class_names"]) if "class_names" in z.files else ()
        # test_src_index only exists in the JPEG-derived CIFAR-10 copy (see its PROVENANCE.md)
        note = JPEG_NOTE if "test_src_index" in z.files else ""
    return Splits(torch.cat(xs), torch.cat(ys), tx, ty, class_names=names, note=note)


def load_cifar(name: str, root: Path, *, verify: bool = True, download: bool = False) -> Splits:
    """Load ``cifar10``/``cifar100``: images uint8 (N, 3, 32, 32) RGB, labels int64 (fine labels)."""
    spec = PICKLE[name]
    npz_dir = root / NPZ_FOLDER[name]
    if (npz_dir / "test.npz").is_file() and _npz_train_files(npz_dir):
        return _load_npz(name, npz_dir, verify)
    pkl_dir = root / spec["folder"]
    needed = spec["train"] + spec["test"]
    if not all((pkl_dir / f).is_file() for f in needed) and download:
        download_and_extract(MIRRORS["cifar"], spec["archive"], expected_checksum("archives", spec["archive"]),
                             root, spec["folder"], set(needed) | {spec["meta"]})
    if all((pkl_dir / f).is_file() for f in needed):
        return _load_pickle(name, pkl_dir, verify)
    layouts = [(pkl_dir, needed + [f"{spec['meta']} (optional)"]),
               (npz_dir, ["train_0.npz", "train_1.npz", "...", "test.npz"])]
    raise DatasetNotFoundError(not_found_message(name, root, layouts, MIRRORS["cifar"][0] + spec["archive"]))
