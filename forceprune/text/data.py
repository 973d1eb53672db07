"""Readers for the text-classification sets: SST-2 (GLUE TSV or SentEval files) and TREC.

Files are looked up under the data root (``--data-dir`` > ``$FORCEPRUNE_DATA`` >
``~/.cache/forceprune/data``)::

    sst2/glue/train.tsv, sst2/glue/dev.tsv          header "sentence\\tlabel" (or "text\\tlabel")
    sst2/senteval/sentiment-{train,dev,test}       no header; test carries labels
    trec/train_5500.label, trec/TREC_10.label       "COARSE:fine question ..." (Latin-1)

Nothing is downloaded.
"""
from __future__ import annotations

import csv
import os
import random
from pathlib import Path

from ..data.errors import DatasetNotFoundError
from ..data.root import data_root
from ..errors import ForcePruneError

TEXT_COLUMNS = ("sentence", "text")
LABEL_COLUMNS = ("label",)
SST2_LABELS = ["negative", "positive"]
TREC_COARSE = ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]

_SST2_FILES = {
    "train": ["glue/train.tsv", "senteval/sentiment-train"],
    "dev": ["glue/dev.tsv", "senteval/sentiment-dev"],
    "validation": ["glue/dev.tsv", "senteval/sentiment-dev"],
    "test": ["senteval/sentiment-test"],  # GLUE's test.tsv has no labels
}
_TREC_FILES = {"train": "train_5500.label", "test": "TREC_10.label"}


class TextFormatError(ForcePruneError):
    """A text data file does not have the expected columns or label values."""


def _is_int(s: str) -> bool:
    try:
        int(s)
        return True
    except ValueError:
        return False


def read_labelled_tsv(path: str | os.PathLike) -> tuple[list[str], list[int]]:
    """``(texts, labels)`` from a TSV with a header naming a text column (``sentence`` or
    ``text``) and ``label``, or a header-less ``text<TAB>label`` file (SentEval layout)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(f"{path} does not exist; check the data folder (--data-dir / $FORCEPRUNE_DATA).")
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    rows = [r for r in rows if r and any(c.strip() for c in r)]
    if not rows:
        raise TextFormatError(f"{path} is empty.")
    first = rows[0]
    if len(first) >= 2 and _is_int(first[-1].strip()):
        text_col, label_col, body = 0, len(first) - 1, rows  # no header: text ... label
    else:
        header = [c.strip().lower() for c in first]
        text_col = next((header.index(c) for c in TEXT_COLUMNS if c in header), None)
        label_col = next((header.index(c) for c in LABEL_COLUMNS if c in header), None)
        if text_col is None or label_col is None:
            raise TextFormatError(
                f"{path} has columns {first}; expected a text column named 'sentence' or 'text' and a 'label' "
                "column (tab-separated, header on the first line), or no header and '<text>\\t<label>' rows."
            )
        body = rows[1:]
    texts, labels = [], []
    for i, r in enumerate(body, start=2 if body is not rows else 1):
        if len(r) <= max(text_col, label_col):
            raise TextFormatError(f"{path}, line {i}: expected at least {max(text_col, label_col) + 1} tab-separated fields, got {len(r)}.")
        lab = r[label_col].strip()
        if not _is_int(lab):
            raise TextFormatError(f"{path}, line {i}: label {lab!r} is not an integer.")
        texts.append(r[text_col].strip())
        labels.append(int(lab))
    return texts, labels


def read_sst2(split: str = "train", root: str | os.PathLike | None = None) -> tuple[list[str], list[int]]:
    """SST-2 ``(texts, labels)``; ``split`` is ``"train"``, ``"dev"`` or ``"test"`` (the
    labelled SentEval test set). Labels: 0 negative, 1 positive."""
    if split not in _SST2_FILES:
        raise ForcePruneError(f"SST-2 split {split!r} does not exist; choose 'train', 'dev' or 'test'.")
    base = data_root(root) / "sst2"
    for rel in _SST2_FILES[split]:
        if (base / rel).is_file():
            texts, labels = read_labelled_tsv(base / rel)
            bad = sorted(set(labels) - {0, 1})
            if bad:
                raise TextFormatError(f"{base / rel}: SST-2 labels must be 0 or 1, found {bad[:5]}.")
            return texts, labels
    raise DatasetNotFoundError(
        f"SST-2 {split} split not found: looked for {', '.join(str(base / r) for r in _SST2_FILES[split])}. "
        "Point --data-dir or $FORCEPRUNE_DATA at the folder holding sst2/ (see forceprune/text/data.py)."
    )


def read_trec(split: str = "train", root: str | os.PathLike | None = None, fine: bool = False) -> tuple[list[str], list[int], list[str]]:
    """TREC ``(texts, labels, label_names)``: 6 coarse classes, or the fine ones (``fine=True``,
    named ``COARSE:fine``, numbered over the training file's labels)."""
    if split not in _TREC_FILES:
        raise ForcePruneError(f"TREC split {split!r} does not exist; choose 'train' or 'test'.")
    base = data_root(root) / "trec"
    path = base / _TREC_FILES[split]
    if not path.is_file():
        raise DatasetNotFoundError(f"TREC {split} split not found at {path}; point --data-dir or $FORCEPRUNE_DATA at the folder holding trec/.")

    def parse(p: Path) -> list[tuple[str, str, str]]:
        out = []
        for i, line in enumerate(p.read_text(encoding="latin-1").splitlines(), start=1):
            if not line.strip():
                continue
            label, _, text = line.partition(" ")
            coarse, sep, _fine = label.partition(":")
            if not sep or coarse not in TREC_COARSE:
                raise TextFormatError(f"{p}, line {i}: expected 'COARSE:fine question', got {line[:40]!r}.")
            out.append((coarse, label, text.strip()))
        return out

    rows = parse(path)
    if not fine:
        return [t for _, _, t in rows], [TREC_COARSE.index(c) for c, _, _ in rows], list(TREC_COARSE)
    names = sorted({f for _, f, _ in parse(base / _TREC_FILES["train"])})
    unknown = sorted({f for _, f, _ in rows} - set(names))
    if unknown:
        raise TextFormatError(f"{path}: fine labels {unknown} do not occur in the training file.")
    return [t for _, _, t in rows], [names.index(f) for _, f, _ in rows], names


def subset(texts: list[str], labels: list[int], n: int, seed: int) -> tuple[list[str], list[int]]:
    """A random (seeded) subset of ``n`` examples in their original order; all when ``n`` is 0."""
    if not n or n >= len(texts):
        return list(texts), list(labels)
    idx = sorted(random.Random(seed).sample(range(len(texts)), n))
    return [texts[i] for i in idx], [labels[i] for i in idx]


def load_splits(dataset: str, root=None, train_subset: int = 0, dev_subset: int = 0, seed: int = 0,
                with_test: bool = True) -> dict:
    """``{"train": (texts, labels), "dev": ..., "test": ... or None, "label_names": [...]}``.

    SST-2: GLUE train/dev and SentEval's labelled test; TREC has train/test only, so its test
    set is the evaluation ("dev") set. Subsets are seeded (dev with ``seed + 1``)."""
    if dataset == "sst2":
        train, dev = read_sst2("train", root), read_sst2("dev", root)
        test = read_sst2("test", root) if with_test else None
        names = list(SST2_LABELS)
    elif dataset == "trec":
        t, y, names = read_trec("train", root)
        e, ey, _ = read_trec("test", root)
        train, dev, test = (t, y), (e, ey), None
    else:
        raise ForcePruneError(f"dataset must be 'sst2' or 'trec', got {dataset!r}.")
    return {"train": subset(*train, train_subset, seed), "dev": subset(*dev, dev_subset, seed + 1), "test": test,
            "label_names": names}
