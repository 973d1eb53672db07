"""Reader for ``imagefolder:<path>``: ``train/<class>/*.png|jpg|jpeg`` plus ``val/`` (or ``test/``).

All images must share one size; they are decoded with Pillow to RGB, or to 1-channel if every
image is greyscale. Class indices follow the sorted class-folder names of ``train/``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .errors import DatasetNotFoundError
from .splits import Splits

EXTENSIONS = (".png", ".jpg", ".jpeg")
_GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}


def _pil():
    try:
        from PIL import Image
    except ImportError as e:  # Pillow comes with matplotlib (the cli/dev extras)
        raise ImportError("imagefolder datasets need Pillow: pip install pillow") from e
    return Image


def resolve_folder(path: str, root: Path) -> Path:
    """``path`` as given if it exists (absolute or relative to cwd), else relative to the data root."""
    p = Path(path).expanduser()
    return p if p.is_absolute() or p.exists() else root / p


def _files(split_dir: Path, classes: list[str]) -> list[tuple[Path, int]]:
    out = []
    for c in sorted(d.name for d in split_dir.iterdir() if d.is_dir()):
        if c not in classes:
            raise ValueError(f"{split_dir / c}: class {c!r} does not exist in train/ ({classes})")
        out += [(f, classes.index(c)) for f in sorted((split_dir / c).iterdir())
                if f.suffix.lower() in EXTENSIONS and f.is_file()]
    return out


def _decode(files: list[tuple[Path, int]], mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    Image = _pil()
    arrays, size = [], None
    for f, _ in files:
        with Image.open(f) as im:
            a = np.asarray(im.convert(mode), dtype=np.uint8)
        if size is None:
            size = a.shape
        elif a.shape != size:
            raise ValueError(f"{f} is {a.shape[1]}x{a.shape[0]}, others are {size[1]}x{size[0]}: "
                             "resize all images of an imagefolder dataset to one size")
        arrays.append(a if a.ndim == 3 else a[..., None])
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor([label for _, label in files], dtype=torch.int64)


def load_imagefolder(path: str, root: Path) -> Splits:
    """Load an image folder: images uint8 (N, C, H, W), labels int64 (N,), class names."""
    folder = resolve_folder(path, root)
    train = folder / "train"
    test = next((folder / s for s in ("val", "test") if (folder / s).is_dir()), None)
    if not train.is_dir() or test is None:
        raise DatasetNotFoundError(
            f"image folder {folder} must contain train/<class>/*.png|jpg and val/<class>/... (or test/); "
            f"found train/: {train.is_dir()}, val/ or test/: {test is not None}. Relative paths are tried "
            f"against the current directory, then the data root {root} (--data-dir / FORCEPRUNE_DATA). "
            "Image folders cannot be downloaded (download=True has no effect).")
    classes = sorted(d.name for d in train.iterdir() if d.is_dir())
    tr, te = _files(train, classes), _files(test, classes)
    if not tr or not te:
        raise DatasetNotFoundError(f"no {'/'.join(EXTENSIONS)} images in {train if not tr else test}/<class>/")
    Image = _pil()
    modes = set()
    for f, _ in tr + te:
        with Image.open(f) as im:
            modes.add(im.mode)
    mode = "L" if modes <= _GREY_MODES else "RGB"
    tx, ty = _decode(tr, mode)
    vx, vy = _decode(te, mode)
    if tx.shape[1:] != vx.shape[1:]:
        raise ValueError(f"train images are {tuple(tx.shape[1:])}, {test.name} images {tuple(vx.shape[1:])}")
    return Splits(tx, ty, vx, vy, class_names=tuple(classes))
