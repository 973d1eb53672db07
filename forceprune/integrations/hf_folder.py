"""Saving a pruned Hugging Face model as a ``save_pretrained`` folder, and loading it back.

Two folders:

* **with a record** (any pruning): ``from_pretrained`` cannot rebuild such a model (its config
  holds one head count and one FFN width for all layers), so ``config.forceprune`` records what
  removal kept (names relative to the base model)::

      {"kept_heads": {attention module: base head indices},       # multi-head attention
       "kept_kv_heads": {attention module: base key/value heads},   # grouped-query attention
       "kept_query_heads": {attention module: base query heads within a group},
       "intermediate_size": {FFN block: width},
       "hidden": {"size": width, "rms_norm_eps": epsilon}}          # the residual stream

  and :func:`load_pruned_pretrained` builds the model from its config, resizes every tensor
  to the saved shapes, sets the head attributes (checked against the record) and loads the
  weights. Kept units over several ``prune()`` rounds compose: the record holds base indices.
* **plain** (``save_pruned_pretrained(..., uniform=True)``): when every layer has the same
  widths (a budget or ``prune()`` with ``uniform=True``), the config itself says the new head,
  key/value-head, FFN and hidden sizes (``head_dim`` and ``rms_norm_eps`` with them) and the
  folder loads with ``AutoModel*.from_pretrained`` without forceprune. Refused, with the
  reason, when the widths differ per layer or the family's config cannot express them
  (GPT-2 and BERT derive the head size from ``hidden / heads``, so fewer heads cannot be said).
"""
from __future__ import annotations

import copy
import json
import weakref
from pathlib import Path
from typing import Iterable

import torch
import torch.nn as nn

from ..attention.hidden import residual_eps, residual_norms
from ..attention.rebuild import ffn_blocks, ffn_per_layer, head_dims, heads_per_layer, kv_heads_per_layer
from ..attention.rebuild import shrink_to_state_dict
from ..errors import ForcePruneError
from ..report import PruneReport

#: ``model.config.<CONFIG_KEY>``: what removal kept, so that a saved pruned model can be rebuilt.
CONFIG_KEY = "forceprune"
#: per model, the reports already in its record (a report is recorded once however often it is passed)
_RECORDED: "weakref.WeakKeyDictionary[nn.Module, list]" = weakref.WeakKeyDictionary()
_QUERY_SUFFIX = ".query_heads"


def _relative(model: nn.Module, name: str) -> str:
    """``name`` without the model's ``base_model_prefix`` (``bert.encoder...`` -> ``encoder...``)."""
    prefix = getattr(model, "base_model_prefix", "") or ""
    return name[len(prefix) + 1 :] if prefix and name.startswith(prefix + ".") else name


def _rows_and_kept(report) -> tuple[list[dict], dict]:
    if isinstance(report, dict):  # PruneReport.to_dict() or a baseline's report dict
        return report.get("layers") or [], report.get("kept") or {}
    return report.layers, report.kept


def _compose(rec: dict, key: str, name: str, before: int, kept: list[int]) -> None:
    """``rec[key][name]`` = the base indices still kept after this round kept ``kept`` of ``before``."""
    prev = rec.get(key, {}).get(name) or list(range(before))
    if len(prev) != before:
        prev = list(range(before))
    rec.setdefault(key, {})[name] = [int(prev[i]) for i in kept]


def record_pruning(model: nn.Module, reports: PruneReport | dict | Iterable[PruneReport | dict]) -> dict:
    """Add what ``reports`` removed from ``model`` to ``model.config.forceprune``; returns the record.

    ``reports``: one :class:`~forceprune.PruneReport` (or its ``to_dict()``), or several in the
    order the rounds ran (e.g. ``pruner.history``). Heads, key/value groups and query heads keep
    the indices of the *base model's* units still there (composing with earlier rounds); FFN
    blocks their width; the residual stream its width and its norms' epsilon. A report already
    recorded for this model is skipped, so passing a pruner's whole history again after more
    rounds is safe. Models without a Hugging Face-style config get no record.
    """
    cfg = getattr(model, "config", None)
    if cfg is None or not hasattr(cfg, "to_dict"):
        return {}
    if isinstance(reports, (PruneReport, dict)):
        reports = [reports]
    done = _RECORDED.setdefault(model, [])
    heads, blocks, grouped = heads_per_layer(model), ffn_blocks(model), kv_heads_per_layer(model)
    rec = {key: (dict(sub) if isinstance(sub, dict) else sub) for key, sub in (getattr(cfg, CONFIG_KEY, None) or {}).items()}
    changed = False
    for report in reports:
        if any(report is r for r in done):
            continue
        done.append(report)
        rows, kept_sets = _rows_and_kept(report)
        for row in rows:
            name, kept, before = row["name"], kept_sets.get(row["name"]), row["width_before"]
            if kept is None or len(kept) >= before:
                continue  # nothing removed from this unit set
            if row.get("kind") == "hidden":
                rec["hidden"] = {"size": len(kept), "rms_norm_eps": residual_eps(model)}
            elif name in heads:
                key = "kept_kv_heads" if name in grouped and row.get("kind") == "kv_group" else "kept_heads"
                _compose(rec, key, _relative(model, name), before, kept)
            elif name.endswith(_QUERY_SUFFIX) and name[: -len(_QUERY_SUFFIX)] in heads:
                _compose(rec, "kept_query_heads", _relative(model, name[: -len(_QUERY_SUFFIX)]), before, kept)
            elif name in blocks:
                rec.setdefault("intermediate_size", {})[_relative(model, blocks[name])] = len(kept)
            else:
                continue  # a channel group: its shapes are in the weights, nothing to record
            changed = True
    if changed:
        setattr(cfg, CONFIG_KEY, rec)
    return dict(getattr(cfg, CONFIG_KEY, None) or {})


def save_pruned_pretrained(model: nn.Module, path, reports: PruneReport | dict | Iterable[PruneReport | dict] = (),
                           uniform: bool = False, **save_kwargs) -> Path:
    """Save a pruned model with ``model.save_pretrained(path, **save_kwargs)``; returns ``path``.

    Default: :func:`record_pruning` (``model``, ``reports``) first, so that
    :func:`load_pruned_pretrained` rebuilds it. ``uniform=True``: a plain folder whose config
    holds the new sizes (:func:`plain_config`), loadable with ``from_pretrained`` alone."""
    if not hasattr(model, "save_pretrained"):
        raise ForcePruneError(
            f"{type(model).__name__} has no save_pretrained(); save a plain PyTorch model with "
            "forceprune.plan.save_pruned(model, forceprune.plan.make_plan(pruner), path)."
        )
    if not uniform:
        record_pruning(model, reports)
        model.save_pretrained(str(path), **save_kwargs)
        return Path(path)
    config, saved = plain_config(model), model.config
    model.config = config
    try:
        model.save_pretrained(str(path), **save_kwargs)
    finally:
        model.config = saved
    return Path(path)


def save_model_folder(model: nn.Module, folder, reports: PruneReport | dict | Iterable[PruneReport | dict] = (),
                      tokenizer=None) -> str:
    """Save ``model`` (and ``tokenizer``) as one Hugging Face folder, written atomically (an
    existing ``folder`` is replaced only once the new one is complete): **plain** when the
    pruned sizes fit the family's config (:func:`plain_config`: ``from_pretrained`` loads it
    without forceprune), else **with a record** (:func:`load_pruned_pretrained` loads it).
    Returns ``"plain"`` or ``"record"``."""
    from ..checkpoint import atomic_write_dir

    try:
        plain_config(model)
        kind = "plain"
    except ForcePruneError:  # per-layer widths, or sizes the config cannot say
        kind = "record"

    def write(tmp: Path) -> None:
        save_pruned_pretrained(model, tmp, reports, uniform=kind == "plain")
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))

    atomic_write_dir(folder, write, replace=True)
    return kind


def uniform_widths(model: nn.Module) -> dict[str, int | float]:
    """The one width per kind of a uniformly pruned model: ``{"heads", "head_dim", "kv_heads",
    "ffn", "hidden", "rms_norm_eps"}`` (those the model has); raises naming the kind whose
    widths differ between layers."""
    found = {"heads": heads_per_layer(model), "head_dim": head_dims(model), "kv_heads": kv_heads_per_layer(model),
             "ffn": ffn_per_layer(model)}
    out: dict[str, int | float] = {}
    for kind, per_layer in found.items():
        values = set(per_layer.values())
        if len(values) > 1:
            raise ForcePruneError(
                f"uniform=True needs one width per kind, but the {kind} differ between layers ({per_layer}). Prune with "
                "budget={'uniform': True} (or pruner.prune(uniform=True)) to keep them equal, or save without uniform "
                "(load_pruned_pretrained rebuilds per-layer widths)."
            )
        if values:
            out[kind] = values.pop()
    norms = residual_norms(model)
    if norms:
        out["hidden"], out["rms_norm_eps"] = int(norms[0].weight.shape[0]), residual_eps(model)
    return out


#: config attributes, per width kind, that families use for it
_CONFIG_ATTRS = {
    "heads": ("num_attention_heads", "n_head", "n_heads"),
    "kv_heads": ("num_key_value_heads",),
    "ffn": ("intermediate_size", "n_inner", "hidden_dim"),
    "hidden": ("hidden_size",),
    "rms_norm_eps": ("rms_norm_eps",),
}


def plain_config(model: nn.Module):
    """A copy of ``model.config`` saying the pruned model's sizes (:func:`uniform_widths`),
    with ``head_dim`` explicit and no forceprune record; checked by building the architecture
    from it (on the meta device): every tensor shape and every norm's epsilon must be the
    pruned model's, or the folder would not reproduce it."""
    widths = uniform_widths(model)
    cfg = copy.deepcopy(model.config)
    if hasattr(cfg, CONFIG_KEY):
        delattr(cfg, CONFIG_KEY)
    try:
        for kind, attrs in _CONFIG_ATTRS.items():
            for attr in attrs:
                if kind in widths and getattr(cfg, attr, None) is not None:
                    setattr(cfg, attr, widths[kind])
        if "head_dim" in widths:
            cfg.head_dim = int(widths["head_dim"])
        cfg = type(cfg).from_dict(cfg.to_dict())  # what from_pretrained will read, validated as it will be
        with torch.device("meta"):
            ref = type(model)._from_config(cfg) if hasattr(type(model), "_from_config") else type(model)(cfg)
    except Exception as exc:  # the family's config validation says why
        raise _inexpressible(model, f"its config refuses the pruned sizes ({type(exc).__name__}: {exc})") from exc
    want = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    for key, t in model.state_dict().items():
        if want.get(key, tuple(t.shape)) != tuple(t.shape):
            raise _inexpressible(model, f"from the new config {key!r} would be {want[key]}, the pruned model has "
                                        f"{tuple(t.shape)}")
    ours = dict(model.named_modules())
    for name, m in ref.named_modules():
        for attr in ("variance_epsilon", "eps"):
            theirs, mine = getattr(m, attr, None), getattr(ours.get(name), attr, None)
            if isinstance(theirs, float) and isinstance(mine, float) and abs(theirs - mine) > 1e-6 * max(abs(mine), 1e-30):
                raise _inexpressible(model, f"{name}.{attr} would be {theirs:.6g} but is {mine:.6g} (one config epsilon "
                                            "serves norms whose epsilon the residual-stream removal scaled and norms it did "
                                            "not); keep the hidden size (kinds without 'hidden')")
    return cfg


def _inexpressible(model: nn.Module, why: str) -> ForcePruneError:
    return ForcePruneError(
        f"{type(model).__name__} cannot be saved as a plain Hugging Face folder: {why}. GPT-2 and BERT-style configs "
        "derive the head size from hidden_size / heads, so they cannot say fewer heads; Llama-style configs need "
        "hidden_size to be a multiple of num_attention_heads. Save without uniform and load with "
        "load_pruned_pretrained, or prune to widths the config can express."
    )


def _read_state_dict(path: Path) -> dict:
    from safetensors.torch import load_file

    single = path / "model.safetensors"
    index = path / "model.safetensors.index.json"
    if single.is_file():
        return load_file(str(single))
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state = {}
        for f in files:
            state.update(load_file(str(path / f)))
        return state
    binary = path / "pytorch_model.bin"
    if binary.is_file():
        return torch.load(str(binary), map_location="cpu", weights_only=True)
    raise ForcePruneError(f"{path} holds no model.safetensors(.index.json) or pytorch_model.bin; save it with save_pretrained().")


def load_pruned_pretrained(path, model_class=None, **config_overrides) -> nn.Module:
    """Rebuild a pruned Hugging Face model saved with ``save_pretrained`` (or ``trainer.save_model``,
    or :func:`save_pruned_pretrained`).

    ``from_pretrained`` cannot: the config holds one head count and one FFN width for every
    layer. This builds the model from its config (``model_class`` or ``config.architectures[0]``),
    resizes each tensor to the saved shapes, sets the head attributes from them (checked
    against ``config.forceprune``), loads the weights strictly and returns it in eval mode.
    """
    import transformers

    path = Path(path)
    if not (path / "config.json").is_file():
        raise ForcePruneError(f"{path} is not a saved model folder (no config.json); pass the folder given to save_pretrained().")
    config = transformers.AutoConfig.from_pretrained(str(path), **config_overrides)
    state = _read_state_dict(path)
    if model_class is None:
        arch = (getattr(config, "architectures", None) or [None])[0]
        model_class = getattr(transformers, arch, None) if arch else None
        if model_class is None:
            raise ForcePruneError(f"the config of {path} names no known architecture ({arch!r}); pass model_class=.")
    elif isinstance(model_class, type) and hasattr(model_class, "from_config") and not hasattr(model_class, "_from_config"):
        model_class = model_class._model_mapping[type(config)]  # an Auto class
    model = model_class._from_config(config) if hasattr(model_class, "_from_config") else model_class(config)
    state = _model_names(model, state, path)
    rec = getattr(config, CONFIG_KEY, None) or {}
    shrink_to_state_dict(model, state, (rec.get("hidden") or {}).get("rms_norm_eps"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise ForcePruneError(f"{path}: weights {unexpected[:5]} do not belong to {type(model).__name__}; pass model_class=.")
    if missing:
        model.tie_weights()
        loaded = {t.data_ptr() for k, t in model.state_dict().items() if k not in missing}
        still = [k for k in missing if model.state_dict()[k].data_ptr() not in loaded]
        if still:
            raise ForcePruneError(f"{path}: weights {still[:5]} are missing from the saved model.")
    _check_record(model, rec)
    return model.eval()


def _model_names(model: nn.Module, state: dict, path: Path) -> dict:
    """``state`` with the model's own parameter names: ``save_pretrained`` renames some
    families' weights to their original checkpoint names (ViT: ``q_proj`` -> ``query``); undo
    that renaming, one name at a time, through transformers' own reverse mapping."""
    own = model.state_dict()
    if set(state) <= set(own):
        return state
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # an older transformers: names are never converted
        return state
    saved_as = {}
    for key, tensor in own.items():
        renamed = revert_weight_conversion(model, {key: tensor})
        if len(renamed) == 1:
            saved_as[next(iter(renamed))] = key
    converted = {saved_as.get(k, k): v for k, v in state.items()}
    if not set(converted) <= set(own):
        odd = sorted(set(converted) - set(own))[:5]
        raise ForcePruneError(f"{path}: weights {odd} do not belong to {type(model).__name__} (nor do they rename to its "
                              "weights); pass model_class=, or save with save_pruned_pretrained.")
    return converted


def _check_record(model: nn.Module, rec: dict) -> None:
    found = {
        "kept_heads": ({_relative(model, n): h for n, h in heads_per_layer(model).items()}, "heads"),
        "kept_kv_heads": ({_relative(model, n): h for n, h in kv_heads_per_layer(model).items()}, "key/value heads"),
    }
    for key, (have, what) in found.items():
        for name, kept in (rec.get(key) or {}).items():
            if name in have and have[name] != len(kept):
                raise ForcePruneError(f"{name}: the weights hold {have[name]} {what} but config.forceprune records {len(kept)}.")
    widths = ffn_per_layer(model)
    ffn = {_relative(model, block): widths[up] for up, block in ffn_blocks(model).items()}
    for name, width in (rec.get("intermediate_size") or {}).items():
        if name in ffn and ffn[name] != width:
            raise ForcePruneError(f"{name}: the weights hold {ffn[name]} FFN neurons but config.forceprune records {width}.")
