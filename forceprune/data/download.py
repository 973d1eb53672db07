"""Opt-in download of the standard files (``download=True``): urllib, checksum-verified, atomic.

Never called implicitly. Files are written to ``<dest>.<random>.part`` next to the target and
renamed into place only after the digest matched, so an interrupted or corrupt download never
leaves a file that looks complete.
"""
from __future__ import annotations

import hashlib
import os
import posixpath
import sys
import tarfile
import tempfile
from pathlib import Path
from urllib.error import URLError
from urllib.request import urlopen  # module attribute so tests can monkeypatch it

from .checksums import Checksum
from .errors import ChecksumError

MIRRORS: dict[str, list[str]] = {
    "mnist": ["https://ossci-datasets.s3.amazonaws.com/mnist/"],
    "fashion_mnist": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
    "cifar": ["https://www.cs.toronto.edu/~kriz/", "https://cave.cs.toronto.edu/kriz/"],
}
TIMEOUT_S = 60.0
_CHUNK = 1 << 20  # bytes


def _fetch_to_temp(url: str, folder: Path, stem: str, algorithm: str) -> tuple[Path, str]:
    """Stream ``url`` into a temp file in ``folder``; return (temp path, hex digest)."""
    h = hashlib.new(algorithm)
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=".part", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out, urlopen(url, timeout=TIMEOUT_S) as resp:
            while chunk := resp.read(_CHUNK):
                h.update(chunk)
                out.write(chunk)
    except BaseException:
        os.unlink(tmp)
        raise
    return Path(tmp), h.hexdigest()


def download_file(mirrors: list[str], filename: str, dest: Path, checksum: Checksum) -> Path:
    """Download ``filename`` from the first working mirror to ``dest`` (atomic, digest-checked).

    Raises ``ChecksumError`` if a mirror served bytes with the wrong digest (and no other mirror
    served good ones), ``ConnectionError`` if no mirror could be reached.
    """
    algorithm, want = checksum
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    bad: ChecksumError | None = None
    for base in mirrors:
        url = base + filename
        print(f"forceprune: downloading {url} -> {dest}", file=sys.stderr)
        try:
            tmp, got = _fetch_to_temp(url, dest.parent, dest.name, algorithm)
        except (URLError, OSError) as e:
            failures.append(f"{url}: {e}")
            continue
        if got != want:
            tmp.unlink()
            bad = bad or ChecksumError(url, algorithm, want, got, hint=(
                f"Nothing was written to {dest}. The mirror served different bytes; retry later, or "
                f"download {filename} by hand from the official source and place it at {dest}."))
            continue
        os.replace(tmp, dest)
        return dest
    if bad is not None:
        raise bad
    raise ConnectionError(f"could not download {filename} from any mirror ({'; '.join(failures)}). "
                          f"Download it by hand and place it at {dest}.")


def _safe_member_path(name: str, member_dir: str) -> str | None:
    """Normalised relative path of a tar member inside ``member_dir``, or None if it escapes it."""
    norm = posixpath.normpath(name)
    if norm.startswith(("/", "..")) or "\\" in name or not norm.startswith(member_dir + "/"):
        return None
    return norm


def extract_tar(archive: Path, root: Path, member_dir: str, wanted: set[str]) -> None:
    """Extract the regular files ``member_dir/<name>`` (name in ``wanted``) from ``archive`` into ``root``.

    Only plain files are written (no links, devices or paths outside ``member_dir``); each is
    written to a temp file and renamed. Existing target files are left untouched.
    Raises ``ValueError`` if a wanted file is missing from the archive.
    """
    target_dir = root / member_dir
    target_dir.mkdir(parents=True, exist_ok=True)
    found: set[str] = set()
    with tarfile.open(archive, "r:*") as tar:
        for m in tar:
            rel = _safe_member_path(m.name, member_dir)
            if rel is None or not m.isfile():
                continue
            name = rel[len(member_dir) + 1:]
            if name not in wanted:
                continue
            found.add(name)
            dest = target_dir / name
            if dest.exists():
                continue
            src = tar.extractfile(m)
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=target_dir)
            try:
                with os.fdopen(fd, "wb") as out:
                    while chunk := src.read(_CHUNK):
                        out.write(chunk)
                os.replace(tmp, dest)
            except BaseException:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                raise
    missing = wanted - found
    if missing:
        raise ValueError(f"archive {archive} lacks {member_dir}/{{{', '.join(sorted(missing))}}}")


def download_and_extract(mirrors: list[str], archive_name: str, checksum: Checksum, root: Path,
                         member_dir: str, wanted: set[str]) -> None:
    """Download a tarball into ``root`` (digest-checked), extract ``member_dir/{wanted}``, delete it."""
    archive = root / archive_name
    download_file(mirrors, archive_name, archive, checksum)
    try:
        extract_tar(archive, root, member_dir, wanted)
    finally:
        archive.unlink(missing_ok=True)
