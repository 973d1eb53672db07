"""Published digests of the standard data files, and cached verification.

Sources: MNIST / Fashion-MNIST md5s are the canonical ones (same as torchvision); the md5s of the
decompressed idx files are the published ones too. CIFAR pickle/archive md5s are those of the
official www.cs.toronto.edu/~kriz release. The ``cifar10/*.npz`` sha256s are those of the
JPEG-derived copy documented in its PROVENANCE.md.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .errors import ChecksumError

Checksum = tuple[str, str]  # (algorithm, lowercase hex digest)

CHECKSUMS: dict[str, dict[str, Checksum]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": ("md5", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
        "train-labels-idx1-ubyte.gz": ("md5", "d53e105ee54ea40749a09fcbcd1e9432"),
        "t10k-images-idx3-ubyte.gz": ("md5", "9fb629c4189551a2d022fa330f9573f3"),
        "t10k-labels-idx1-ubyte.gz": ("md5", "ec29112dd5afa0611ce80d1b7f02629c"),
        "train-images-idx3-ubyte": ("md5", "6bbc9ace898e44ae57da46a324031adb"),
        "train-labels-idx1-ubyte": ("md5", "a25bea736e30d166cdddb491f175f624"),
        "t10k-images-idx3-ubyte": ("md5", "2646ac647ad5339dbf082846283269ea"),
        "t10k-labels-idx1-ubyte": ("md5", "27ae3e4e09519cfbb04c329615203637"),
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte.gz": ("md5", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        "train-labels-idx1-ubyte.gz": ("md5", "25c81989df183df01b3e8a0aad5dffbe"),
        "t10k-images-idx3-ubyte.gz": ("md5", "bef4ecab320f06d8554ea6380940ec79"),
        "t10k-labels-idx1-ubyte.gz": ("md5", "bb300cfdad3c16e7a12a480ee83cd310"),
        "train-images-idx3-ubyte": ("md5", "f4a8712d7a061bf5bd6d2ca38dc4d50a"),
        "train-labels-idx1-ubyte": ("md5", "9018921c3c673c538a1fc5bad174d6f9"),
        "t10k-images-idx3-ubyte": ("md5", "8181f5470baa50b63fa0f6fddb340f0a"),
        "t10k-labels-idx1-ubyte": ("md5", "15d484375f8d13e6eb1aabb0c3f46965"),
    },
    "cifar10_npz": {
        "train_0.npz": ("sha256", "fec8e6f160097cae0c9b345cd5b4412ab65feaec5e35df2b40fdabd8a35cb3de"),
        "train_1.npz": ("sha256", "565e08a097d49135f73b83bbda773bf7e02385ba79b9a922743655419b6be243"),
        "train_2.npz": ("sha256", "34c5e817d33ce1fa5d6cd10132d28ed64705034f598e2a6bf7a2826f6e83bf6b"),
        "train_3.npz": ("sha256", "824dc964ffe715453b7ad61f41312c85b588ceefd0d50503ef16432813792000"),
        "train_4.npz": ("sha256", "4234d8a6280a9ff9faaf1aeb5add611ea17b432408803c0a1389d572b6b6035f"),
        "test.npz": ("sha256", "f4b62e6997eed72abb436e5faaa44c249de66d6e2435c93b50798e876d0eaf99"),
    },
    "cifar100_npz": {},  # no known published copy
    "cifar10_pickle": {
        "data_batch_1": ("md5", "c99cafc152244af753f735de768cd75f"),
        "data_batch_2": ("md5", "d4bba439e000b95fd0a9bffe97cbabec"),
        "data_batch_3": ("md5", "54ebc095f3ab1f0389bbae665268c751"),
        "data_batch_4": ("md5", "634d18415352ddfa80567beed471001a"),
        "data_batch_5": ("md5", "482c414d41f54cd18b22e5b47cb7c3cb"),
        "test_batch": ("md5", "40351d587109b95175f43aff81a1287e"),
        "batches.meta": ("md5", "5ff9c542aee3614f3951f8cda6e48888"),
    },
    "cifar100_pickle": {
        "train": ("md5", "16019d7e3df5f24257cddd939b257f8d"),
        "test": ("md5", "f0ef6b0ae62326f3e7ffdfab6717acfc"),
        "meta": ("md5", "7973b15100ade9c7d40fb424638fde48"),
    },
    "archives": {
        "cifar-10-python.tar.gz": ("md5", "c58f30108f718f92721af3b95e74349a"),
        "cifar-100-python.tar.gz": ("md5", "eb9058c3a382ffc7106e4002c42a8d85"),
    },
}

# (real path, mtime_ns, size, algorithm) -> hex digest; avoids re-hashing unchanged files.
_DIGEST_CACHE: dict[tuple[str, int, int, str], str] = {}
_CHUNK = 1 << 20  # bytes


def expected_checksum(group: str, filename: str) -> Checksum | None:
    """Published (algorithm, digest) for ``filename`` in table ``group``, or None if unknown."""
    return CHECKSUMS.get(group, {}).get(filename)


def _digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_digest(path: str | os.PathLike, algorithm: str) -> str:
    """Hex digest of a file, memoised per (real path, mtime, size, algorithm)."""
    p = Path(path)
    st = p.stat()
    key = (os.path.realpath(p), st.st_mtime_ns, st.st_size, algorithm)
    if key not in _DIGEST_CACHE:
        _DIGEST_CACHE[key] = _digest(p, algorithm)
    return _DIGEST_CACHE[key]


def verify_file(path: str | os.PathLike, expected: Checksum | None) -> None:
    """Raise ``ChecksumError`` if ``path`` does not match ``expected``; no-op when ``expected`` is None."""
    if expected is None:
        return
    algorithm, want = expected
    got = file_digest(path, algorithm)
    if got != want.lower():
        raise ChecksumError(path, algorithm, want, got)
