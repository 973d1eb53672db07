"""Tests for forceprune.data. Real-data tests read $FORCEPRUNE_DATA and skip when it is unset."""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

import forceprune.data as fd
from forceprune.data import (ChecksumError, DatasetInfo, DatasetNotFoundError, data_root, list_datasets,
                             load_dataset, make_loaders)
from forceprune.data import checksums, download
from forceprune.data.augment import Augmentation, random_crop_flip
from forceprune.data.cifar import unpickle
from forceprune.data.loader import BatchLoader
from forceprune.data.tensor_dataset import ImageTensorDataset

REAL = os.environ.get("FORCEPRUNE_DATA")

# Digests copied by hand from the PROVENANCE.md files of the shared data (never computed by the code under test).
PROVENANCE = {
    "mnist/train-images-idx3-ubyte.gz": ("md5", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    "mnist/train-labels-idx1-ubyte.gz": ("md5", "d53e105ee54ea40749a09fcbcd1e9432"),
    "mnist/t10k-images-idx3-ubyte.gz": ("md5", "9fb629c4189551a2d022fa330f9573f3"),
    "mnist/t10k-labels-idx1-ubyte.gz": ("md5", "ec29112dd5afa0611ce80d1b7f02629c"),
    "fashion-mnist/train-images-idx3-ubyte.gz": ("md5", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
    "fashion-mnist/train-labels-idx1-ubyte.gz": ("md5", "25c81989df183df01b3e8a0aad5dffbe"),
    "fashion-mnist/t10k-images-idx3-ubyte.gz": ("md5", "bef4ecab320f06d8554ea6380940ec79"),
    "fashion-mnist/t10k-labels-idx1-ubyte.gz": ("md5", "bb300cfdad3c16e7a12a480ee83cd310"),
    "cifar10/train_0.npz": ("sha256", "fec8e6f160097cae0c9b345cd5b4412ab65feaec5e35df2b40fdabd8a35cb3de"),
    "cifar10/train_1.npz": ("sha256", "565e08a097d49135f73b83bbda773bf7e02385ba79b9a922743655419b6be243"),
    "cifar10/train_2.npz": ("sha256", "34c5e817d33ce1fa5d6cd10132d28ed64705034f598e2a6bf7a2826f6e83bf6b"),
    "cifar10/train_3.npz": ("sha256", "824dc964ffe715453b7ad61f41312c85b588ceefd0d50503ef16432813792000"),
    "cifar10/train_4.npz": ("sha256", "4234d8a6280a9ff9faaf1aeb5add611ea17b432408803c0a1389d572b6b6035f"),
    "cifar10/test.npz": ("sha256", "f4b62e6997eed72abb436e5faaa44c249de66d6e2435c93b50798e876d0eaf99"),
}
TABLE_GROUP = {"mnist": "mnist", "fashion-mnist": "fashion_mnist", "cifar10": "cifar10_npz"}


def real_dir(sub: str) -> Path:
    """The real dataset folder, or skip."""
    if not REAL:
        pytest.skip("FORCEPRUNE_DATA is not set; real-data tests need it")
    p = Path(REAL).resolve() / sub  # absolute: tests mirror it into tmp folders with symlinks
    if not p.is_dir():
        pytest.skip(f"{p} is absent")
    return p


@pytest.fixture(scope="module")
def cifar10_real():
    real_dir("cifar10")
    return load_dataset("cifar10", root=REAL)


# ---------------------------------------------------------------- helpers for synthetic data

def idx_bytes(arr: np.ndarray) -> bytes:
    """Encode a uint8 array in the idx format."""
    header = bytes([0, 0, 0x08, arr.ndim]) + np.array(arr.shape, dtype=">u4").tobytes()
    return header + arr.astype(np.uint8).tobytes()


def tiny_mnist_files(seed=0) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte.gz": gzip.compress(idx_bytes(rng.integers(0, 256, (6, 28, 28)))),
        "train-labels-idx1-ubyte.gz": gzip.compress(idx_bytes(np.arange(6) % 10)),
        "t10k-images-idx3-ubyte.gz": gzip.compress(idx_bytes(rng.integers(0, 256, (3, 28, 28)))),
        "t10k-labels-idx1-ubyte.gz": gzip.compress(idx_bytes(np.array([7, 8, 9]))),
    }


def synthetic_dataset(n=40, c=3, hw=32, augmentation=Augmentation(4, True), seed=0) -> ImageTensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, c, hw, hw), generator=g, dtype=torch.uint8)
    y = torch.arange(n) % 10
    return ImageTensorDataset(x, y, [0.5] * c, [0.25] * c, augmentation)


class FakeUrlopen:
    """Serves bytes per URL, records requests."""

    def __init__(self, served: dict[str, bytes]):
        self.served, self.requested = served, []

    def __call__(self, url, timeout=None):
        self.requested.append(url)
        if url not in self.served:
            raise download.URLError(f"no route to {url}")
        return io.BytesIO(self.served[url])


# ---------------------------------------------------------------- root, names, info

def test_data_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("FORCEPRUNE_DATA", str(tmp_path / "env"))
    assert data_root(str(tmp_path / "cli")) == tmp_path / "cli"
    assert data_root() == tmp_path / "env"
    monkeypatch.delenv("FORCEPRUNE_DATA")
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "checkout").mkdir()
    monkeypatch.chdir(tmp_path / "checkout")  # a team checkout beside shared/data
    assert data_root() == tmp_path / "shared" / "data"
    monkeypatch.chdir(tmp_path)  # no shared/data beside it: the user cache
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data_root() == tmp_path / "xdg" / "forceprune" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data_root() == tmp_path / "home" / ".cache" / "forceprune" / "data"


def test_list_datasets_and_unknown_name(tmp_path):
    assert list_datasets() == ["cifar10", "cifar100", "fashion_mnist", "mnist"]
    with pytest.raises(ValueError, match="unknown dataset 'svhn'"):
        load_dataset("svhn", root=tmp_path)


def test_library_checksum_table_matches_provenance():
    for rel, want in PROVENANCE.items():
        folder, name = rel.split("/")
        assert checksums.CHECKSUMS[TABLE_GROUP[folder]][name] == want, rel


# ---------------------------------------------------------------- real data

@pytest.mark.parametrize("rel", sorted(PROVENANCE))
def test_real_file_digest_matches_provenance(rel):
    folder = real_dir(rel.split("/")[0])
    algorithm, want = PROVENANCE[rel]
    h = hashlib.new(algorithm)
    h.update((folder.parent / rel).read_bytes())
    assert h.hexdigest() == want


def test_mnist_real():
    real_dir("mnist")
    train, test, info = load_dataset("mnist", root=REAL)
    assert (len(train), len(test)) == (60000, 10000)
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == torch.uint8
    x, y = train[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.bincount(train.labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert torch.bincount(test.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert abs(train.images.float().mean().item() / 255 - 0.1307) < 1e-3
    assert info == DatasetInfo("mnist", 10, (1, 28, 28), (0.1307,), (0.3081,), "", info.class_names)
    xb, _ = train.batch(torch.arange(2000))  # normalised: about zero mean, unit std
    assert abs(xb.mean().item()) < 0.05 and abs(xb.std().item() - 1) < 0.05


def test_fashion_mnist_real():
    real_dir("fashion-mnist")
    train, test, info = load_dataset("fashion_mnist", root=REAL)
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    assert info.num_classes == 10 and info.mean == (0.2860,) and info.class_names[9] == "Ankle boot"


def test_cifar10_real(cifar10_real):
    train, test, info = cifar10_real
    assert train.images.shape == (50000, 3, 32, 32) and test.images.shape == (10000, 3, 32, 32)
    assert train.labels[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert torch.bincount(train.labels).tolist() == [5000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    assert int(train.labels.min()) == 0 and int(train.labels.max()) == 9
    assert info.note.startswith("JPEG-derived (quality 75) copy")
    assert "do not quote against published accuracies" in info.note
    assert info.input_shape == (3, 32, 32) and info.class_names[0] == "airplane"
    means = train.images[:4000].double().mean(dim=(0, 2, 3)) / 255  # PROVENANCE: (0.4914, 0.4817, 0.4447)
    assert torch.allclose(means, torch.tensor([0.4914, 0.4817, 0.4447], dtype=torch.float64), atol=2e-4)
    assert train.augmentation == Augmentation(4, True) and test.augmentation is None


def test_make_loaders_real_mnist_deterministic():
    real_dir("mnist")
    a, test_a, info = make_loaders("mnist", root=REAL, batch_size=256, eval_batch_size=1000, seed=3)
    b, _, _ = make_loaders("mnist", root=REAL, batch_size=256, eval_batch_size=1000, seed=3)
    assert (len(a), len(test_a)) == (235, 10)
    xa, ya = next(iter(a))
    xb, yb = next(iter(b))
    assert xa.shape == (256, 1, 28, 28) and torch.equal(xa, xb) and torch.equal(ya, yb)
    xt, yt = next(iter(test_a))
    assert xt.shape == (1000, 1, 28, 28) and torch.equal(yt, test_a.dataset.labels[:1000])


# ---------------------------------------------------------------- checksums and errors

def _mirror_with_copy(src, dst, pattern, copied):
    """Link ``src``'s files matching ``pattern`` into ``dst``; ``copied`` is a real copy (to corrupt)."""
    dst.mkdir()
    for f in src.glob(pattern):
        (dst / f.name).symlink_to(f)
    bad = dst / copied
    bad.unlink()
    shutil.copyfile(src / copied, bad)
    return bad


def test_corrupt_mnist_file_raises(tmp_path):
    src = real_dir("mnist")
    bad = _mirror_with_copy(src, tmp_path / "mnist", "*.gz", "t10k-labels-idx1-ubyte.gz")
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(ChecksumError) as e:
        load_dataset("mnist", root=tmp_path)
    msg = str(e.value)
    assert "md5 ec29112dd5afa0611ce80d1b7f02629c" in msg
    assert e.value.expected == "ec29112dd5afa0611ce80d1b7f02629c" and e.value.actual != e.value.expected
    assert str(bad) in msg and "download=True" in msg and "replace" in msg


def test_corrupt_cifar_npz_raises(tmp_path):
    bad = _mirror_with_copy(real_dir("cifar10"), tmp_path / "cifar10", "*.npz", "test.npz")
    with open(bad, "r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(ChecksumError, match="sha256 f4b62e6997eed72abb436e5faaa44c249de66d6e2435c93b50798e876d0eaf99"):
        load_dataset("cifar10", root=tmp_path)


def test_verification_is_cached(tmp_path, monkeypatch):
    files = tiny_mnist_files()
    (tmp_path / "mnist").mkdir()
    for name, data in files.items():
        (tmp_path / "mnist" / name).write_bytes(data)
    monkeypatch.setitem(checksums.CHECKSUMS, "mnist",
                        {n: ("md5", hashlib.md5(d).hexdigest()) for n, d in files.items()})
    calls = []
    real_digest = checksums._digest
    monkeypatch.setattr(checksums, "_digest", lambda p, a: calls.append(p) or real_digest(p, a))
    load_dataset("mnist", root=tmp_path)
    load_dataset("mnist", root=tmp_path)
    assert len(calls) == 4
    target = tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"  # changed content -> re-hashed -> mismatch
    target.write_bytes(gzip.compress(idx_bytes(np.array([1, 2, 3]))))
    os.utime(target, ns=(1, 1))
    with pytest.raises(ChecksumError, match="t10k-labels-idx1-ubyte.gz"):
        load_dataset("mnist", root=tmp_path)
    assert len(calls) == 5


def test_missing_dataset_message(tmp_path):
    for name, folder, files in [("mnist", "mnist", ["train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]),
                                ("fashion_mnist", "fashion-mnist", ["train-labels-idx1-ubyte.gz"]),
                                ("cifar10", "cifar-10-batches-py", ["data_batch_1", "test_batch"]),
                                ("cifar100", "cifar-100-python", ["train", "test"])]:
        with pytest.raises(DatasetNotFoundError) as e:
            load_dataset(name, root=tmp_path)
        assert isinstance(e.value, FileNotFoundError)
        msg = str(e.value)
        assert str(tmp_path / folder) in msg, msg
        for f in files:
            assert f in msg
        assert "FORCEPRUNE_DATA" in msg and "--data-dir" in msg and "download=True" in msg
    assert list(tmp_path.iterdir()) == []  # nothing created without download=True


# ---------------------------------------------------------------- loader and augmentation

def test_batch_loader_determinism_and_epochs():
    ds = synthetic_dataset(n=50)
    a = BatchLoader(ds, 16, shuffle=True, augment=True, seed=7)
    b = BatchLoader(ds, 16, shuffle=True, augment=True, seed=7)
    assert len(a) == 4 and len(BatchLoader(ds, 16, drop_last=True)) == 3
    ea0, eb0 = list(a), list(b)
    assert [y.shape[0] for _, y in ea0] == [16, 16, 16, 2]
    for (xa, ya), (xb, yb) in zip(ea0, eb0):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    ea1 = list(a)  # next epoch: different order
    assert a.epoch == 2
    assert not torch.equal(torch.cat([y for _, y in ea0]), torch.cat([y for _, y in ea1]))
    b.set_epoch(1)  # resume at epoch 1 reproduces it exactly
    for (x1, y1), (x2, y2) in zip(ea1, b):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    c = BatchLoader(ds, 16, shuffle=True, augment=True, seed=8)
    assert not torch.equal(next(iter(c))[1], ea0[0][1])
    # one epoch visits every sample exactly once
    assert sorted(torch.cat([y for _, y in ea1]).tolist()) == sorted(ds.labels.tolist())


def test_unshuffled_loader_is_file_order_and_normalised():
    ds = synthetic_dataset(n=10)
    x, y = next(iter(BatchLoader(ds, 10)))
    assert torch.equal(y, ds.labels)
    assert torch.allclose(x, (ds.images.float() / 255 - 0.5) / 0.25, atol=1e-5)


def test_augmentation_is_crop_and_flip():
    ds = synthetic_dataset(n=32)
    g = torch.Generator().manual_seed(0)
    out = random_crop_flip(ds.images, Augmentation(pad=4, flip=True), g)
    assert out.shape == ds.images.shape and out.dtype == torch.uint8
    assert not torch.equal(out, ds.images)
    padded = torch.nn.functional.pad(ds.images, (4, 4, 4, 4))
    flips = 0
    for i in range(32):  # each output is some 32x32 window of the zero-padded input, maybe mirrored
        hits = [(dy, dx, f) for dy in range(9) for dx in range(9) for f in (False, True)
                if torch.equal(out[i], (lambda w: w.flip(2) if f else w)(padded[i, :, dy:dy + 32, dx:dx + 32]))]
        assert hits, i
        flips += hits[0][2]
    assert 4 <= flips <= 28
    no_aug = random_crop_flip(ds.images, Augmentation(pad=0, flip=False), g)
    assert torch.equal(no_aug, ds.images)


def test_getitem_augments_train_only():
    ds = synthetic_dataset(n=4)
    torch.manual_seed(0)
    xs = torch.stack([ds[0][0] for _ in range(8)])
    assert xs.shape == (8, 3, 32, 32) and xs.dtype == torch.float32
    assert not all(torch.equal(xs[0], xs[k]) for k in range(1, 8))
    plain = synthetic_dataset(n=4, augmentation=None)
    assert torch.equal(plain[1][0], plain[1][0]) and plain[1][1].item() == 1


# ---------------------------------------------------------------- other formats

def test_imagefolder(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(0)
    expected = {}
    for split, n in (("train", 3), ("val", 2)):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for k in range(n):
                arr = rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)  # H=8, W=10
                Image.fromarray(arr).save(tmp_path / split / cls / f"{k}.png")
                expected[(split, cls, k)] = arr
    (tmp_path / "train" / "cat" / "notes.txt").write_text("ignored")
    train, test, info = load_dataset(f"imagefolder:{tmp_path}", root=tmp_path / "unused")
    assert info.num_classes == 2 and info.class_names == ("cat", "dog") and info.input_shape == (3, 8, 10)
    assert (len(train), len(test)) == (6, 4)
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 1] and test.labels.tolist() == [0, 0, 1, 1]
    assert torch.equal(train.images[3].permute(1, 2, 0), torch.from_numpy(expected[("train", "dog", 0)]))
    flat = train.images.double().transpose(0, 1).reshape(3, -1) / 255
    assert np.allclose(info.mean, flat.mean(1).numpy()) and len(info.std) == 3
    x, y = test[0]
    assert x.shape == (3, 8, 10) and x.dtype == torch.float32 and y.dtype == torch.int64
    tl, vl, _ = make_loaders(f"imagefolder:{tmp_path}", batch_size=4, eval_batch_size=4, seed=0)
    assert len(tl) == 2 and next(iter(tl))[0].shape == (4, 3, 8, 10)


def test_imagefolder_missing_split(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="val/"):
        load_dataset(f"imagefolder:{tmp_path}")


def write_cifar_pickles(root: Path, hundred: bool) -> dict:
    rng = np.random.default_rng(1)
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    label_key = b"fine_labels" if hundred else b"labels"
    names = ["train", "test"] if hundred else [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    batches = {}
    for k, name in enumerate(names):
        data = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
        labels = [(k * 3 + j) % (100 if hundred else 10) for j in range(3)]
        batches[name] = (data, labels)
        obj = {b"batch_label": b"x", label_key: labels, b"data": data, b"filenames": [b"a", b"b", b"c"]}
        (folder / name).write_bytes(pickle.dumps(obj, protocol=2))
    meta_name, names_key = (b"meta", b"fine_label_names") if hundred else (b"batches.meta", b"label_names")
    n_cls = 100 if hundred else 10
    (folder / meta_name.decode()).write_bytes(pickle.dumps({names_key: [f"c{i}".encode() for i in range(n_cls)]}, 2))
    return batches


@pytest.mark.parametrize("hundred", [False, True])
def test_cifar_pickle_format(tmp_path, hundred):
    batches = write_cifar_pickles(tmp_path, hundred)
    name = "cifar100" if hundred else "cifar10"
    with pytest.raises(ChecksumError):  # tiny fakes do not match the official md5s
        load_dataset(name, root=tmp_path)
    train, test, info = load_dataset(name, root=tmp_path, verify=False)
    n_train = 3 if hundred else 15
    assert train.images.shape == (n_train, 3, 32, 32) and test.images.shape == (3, 3, 32, 32)
    first = batches["train" if hundred else "data_batch_1"]
    assert torch.equal(train.images[0], torch.from_numpy(first[0][0].reshape(3, 32, 32)))
    assert train.labels[:3].tolist() == first[1]
    assert info.num_classes == (100 if hundred else 10) and info.class_names[:2] == ("c0", "c1")
    assert info.note == ""


def test_cifar_pickle_rejects_arbitrary_globals(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))
    p = tmp_path / "data_batch_1"
    p.write_bytes(pickle.dumps({b"data": Evil()}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        unpickle(p)


# ---------------------------------------------------------------- download (no network: urlopen is faked)

def test_download_mnist(tmp_path, monkeypatch):
    files = tiny_mnist_files()
    monkeypatch.setitem(checksums.CHECKSUMS, "mnist",
                        {n: ("md5", hashlib.md5(d).hexdigest()) for n, d in files.items()})
    fake = FakeUrlopen({"https://ossci-datasets.s3.amazonaws.com/mnist/" + n: d for n, d in files.items()})
    monkeypatch.setattr(download, "urlopen", fake)
    train, test, info = load_dataset("mnist", root=tmp_path, download=True)
    assert len(fake.requested) == 4 and all(u.startswith("https://ossci-datasets.s3.amazonaws.com/") for u in fake.requested)
    assert train.images.shape == (6, 1, 28, 28) and test.labels.tolist() == [7, 8, 9]
    assert sorted(p.name for p in (tmp_path / "mnist").iterdir()) == sorted(files)
    load_dataset("mnist", root=tmp_path, download=True)  # present: no second download
    assert len(fake.requested) == 4


def test_download_checksum_mismatch_leaves_nothing(tmp_path, monkeypatch):
    files = tiny_mnist_files()
    served = {"http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/" + n: d + b"junk" for n, d in files.items()}
    monkeypatch.setitem(checksums.CHECKSUMS, "fashion_mnist",
                        {n: ("md5", hashlib.md5(d).hexdigest()) for n, d in files.items()})
    monkeypatch.setattr(download, "urlopen", FakeUrlopen(served))
    with pytest.raises(ChecksumError, match="fashion-mnist.s3-website"):
        load_dataset("fashion_mnist", root=tmp_path, download=True)
    assert list((tmp_path / "fashion-mnist").iterdir()) == []


def test_download_unreachable(tmp_path, monkeypatch):
    monkeypatch.setattr(download, "urlopen", FakeUrlopen({}))
    with pytest.raises(ConnectionError, match="train-images-idx3-ubyte.gz"):
        load_dataset("mnist", root=tmp_path, download=True)
    assert list((tmp_path / "mnist").iterdir()) == []


def test_download_cifar_archive(tmp_path, monkeypatch):
    src = tmp_path / "src"
    batches = write_cifar_pickles(src, hundred=False)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
        evil = tarfile.TarInfo("cifar-10-batches-py/../escaped")
        evil.size = 3
        tar.addfile(evil, io.BytesIO(b"bad"))
    archive = buf.getvalue()
    monkeypatch.setitem(checksums.CHECKSUMS, "archives",
                        {"cifar-10-python.tar.gz": ("md5", hashlib.md5(archive).hexdigest())})
    fake = FakeUrlopen({"https://cave.cs.toronto.edu/kriz/cifar-10-python.tar.gz": archive})  # 1st mirror down
    monkeypatch.setattr(download, "urlopen", fake)
    root = tmp_path / "root"
    train, test, info = load_dataset("cifar10", root=root, download=True, verify=False)
    assert fake.requested == ["https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                              "https://cave.cs.toronto.edu/kriz/cifar-10-python.tar.gz"]
    assert train.images.shape == (15, 3, 32, 32) and test.labels.tolist() == batches["test_batch"][1]
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-batches-py"]  # archive removed, no escape
    assert not (tmp_path / "escaped").exists() and not (root / "escaped").exists()


def test_public_api_exports():
    for name in ("load_dataset", "make_loaders", "data_root", "DatasetInfo", "DatasetNotFoundError",
                 "ChecksumError", "list_datasets"):
        assert hasattr(fd, name)
