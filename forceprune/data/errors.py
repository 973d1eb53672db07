"""Exceptions raised by ``forceprune.data``."""
from __future__ import annotations

from pathlib import Path

from ..errors import ForcePruneError


class DatasetNotFoundError(ForcePruneError, FileNotFoundError):
    """A dataset's files are not on disk (and ``download=False``).

    The message names the folders and files that were looked for and how to fix it.
    """


class ChecksumError(ForcePruneError, RuntimeError):
    """A data file's digest differs from the published one (corrupt, truncated or another version).

    Attributes: ``path`` (file or URL), ``algorithm`` ("md5"/"sha256"), ``expected``, ``actual``.
    """

    def __init__(self, path: str | Path, algorithm: str, expected: str, actual: str, hint: str = ""):
        self.path, self.algorithm, self.expected, self.actual = str(path), algorithm, expected, actual
        fix = hint or (
            "Fix: delete the file and fetch it again (load_dataset(..., download=True) on a machine with "
            "internet, or copy a good version from the original source), or replace it with an intact copy. "
            "If it is your own conversion of the dataset, pass verify=False."
        )
        super().__init__(
            f"checksum mismatch for {self.path}: expected {algorithm} {expected}, got {actual}. "
            f"The file is corrupt, truncated or a different version. {fix}"
        )


def not_found_message(dataset: str, root: Path, layouts: list[tuple[Path, list[str]]],
                      download_source: str | None) -> str:
    """Build the text of a ``DatasetNotFoundError``.

    ``layouts``: accepted (folder, file names) pairs, first one preferred.
    ``download_source``: where ``download=True`` fetches from, or None if not downloadable.
    """
    lines = [f"dataset {dataset!r} not found under data root {root}. Expected one of:"]
    for folder, files in layouts:
        lines.append(f"  {folder}/  containing: {', '.join(files)}")
    lines.append("Point forceprune at the directory that holds these folders with the --data-dir flag "
                 "or the FORCEPRUNE_DATA environment variable (default: ~/.cache/forceprune/data).")
    if download_source:
        lines.append(f"With internet access you can opt in to downloading it: pass download=True "
                     f"(fetches from {download_source} and verifies checksums).")
    else:
        lines.append("This dataset cannot be downloaded automatically; create the folders yourself.")
    return "\n".join(lines)
