"""End-to-end text-classification run: fine-tune a pretrained encoder with a force, remove
the captured heads and FFN neurons, (optionally) fine-tune again, and report.

    from forceprune.text import run_sst2
    report = run_sst2({"force": "etp", "force_options": {"beta": 0.5, "pivot": "ranked"}}, "runs/sst2")

``config`` is a flat dict (a TOML file's table, see ``configs/minilm_sst2_etp.toml``); every
key is a field of :class:`TextRunConfig`, checked eagerly with the fix in the message.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ForcePruneError
from .batching import TextBatches, encode_texts
from .data import SST2_LABELS, read_sst2, read_trec

TASK = "text_classification"
GROUP_NORM = "tp-group-norm"


@dataclass(frozen=True)
class TextRunConfig:
    """One text-classification pruning run (epochs may be fractional)."""

    task: str = TASK
    model: str = "minilm-l6"  # offline alias or a save_pretrained() folder
    dataset: str = "sst2"  # "sst2" | "trec"
    data_dir: str | None = None  # unset: $FORCEPRUNE_DATA, then ~/.cache/forceprune/data
    force: str = "etp"  # a force name or preset; "none" = dense fine-tuning; "tp-group-norm" = dense
    # fine-tuning, then torch-pruning's group-L2-norm ranking down to `widths` (a baseline)
    force_options: dict = field(default_factory=dict)  # beta, norm, pivot ("ranked" for pretrained models), ...
    capture: str | None = None
    threshold: float | None = None
    snap: float = 1.0
    capture_every: int = 1
    cost_power: float = 0.0
    force_mode: str = "prox"  # "prox": force decoupled from AdamW (proximal step); "loss": penalty in the loss
    prune_kinds: tuple = ("head", "neuron")  # unit kinds the force acts on; others are ignored
    widths: dict | None = None  # optional width-mode removal {unit set name: units kept}
    target_macs: float | None = None  # budget: fraction of the dense model's MACs to keep (controller scales beta)
    target_params: float | None = None  # budget: fraction of the dense model's parameters to keep
    budget: dict = field(default_factory=dict)  # controller options (reach, warmup, every, min_width, round_to, ...)
    train_subset: int = 8000  # random training sentences used (seeded); 0 = all
    dev_subset: int = 0  # 0 = the full dev set
    eval_test: bool = True  # also report the labelled test set (SST-2: SentEval test)
    max_length: int = 128
    epochs: float = 1.0  # fine-tuning with the force
    finetune_epochs: float = 0.0  # plain fine-tuning after removal
    lr: float = 1e-4
    finetune_lr: float | None = None  # unset: lr / 2
    batch_size: int = 32
    eval_batch_size: int = 128
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    max_grad_norm: float = 1.0
    max_steps: int = 0  # cap on optimizer steps per phase; 0 = none (smoke tests)
    seed: int = 0
    threads: int = 0  # torch threads; 0 = leave as is
    macs_seq_len: int = 64  # MACs and latency are for sentences of this many tokens
    latency_batch: int = 32
    latency_repeats: int = 10
    latency_threads: int = 1  # torch threads while timing (1: stable on a shared CPU); 0 = as training
    save_model: bool = False
    log_every: int = 50
    output_dir: str | None = None  # accepted for the CLI; run_sst2's output_dir argument wins
    name: str | None = None  # free label for reports


_TYPES = {f.name: f.type for f in dataclasses.fields(TextRunConfig)}


def make_config(config: dict | TextRunConfig | None) -> TextRunConfig:
    """Validate a plain dict into a :class:`TextRunConfig` (all problems reported at once)."""
    if isinstance(config, TextRunConfig):
        return config
    config = dict(config or {})
    problems = []
    names = [f.name for f in dataclasses.fields(TextRunConfig)]
    for key in list(config):
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            problems.append(f"unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            config.pop(key)
    if "prune_kinds" in config:
        config["prune_kinds"] = tuple(config["prune_kinds"])
    cfg = TextRunConfig(**config)
    if cfg.task != TASK:
        problems.append(f"task must be {TASK!r}, got {cfg.task!r}")
    if cfg.dataset not in ("sst2", "trec"):
        problems.append(f"dataset must be 'sst2' or 'trec', got {cfg.dataset!r}")
    for k in ("train_subset", "dev_subset", "max_steps", "threads", "capture_every", "latency_threads"):
        if not isinstance(getattr(cfg, k), int) or getattr(cfg, k) < 0:
            problems.append(f"{k} must be an int >= 0, got {getattr(cfg, k)!r}")
    for k in ("batch_size", "eval_batch_size", "max_length", "macs_seq_len", "latency_batch", "latency_repeats", "log_every"):
        if not isinstance(getattr(cfg, k), int) or getattr(cfg, k) < 1:
            problems.append(f"{k} must be an int >= 1, got {getattr(cfg, k)!r}")
    for k in ("epochs", "lr", "weight_decay", "warmup_ratio", "max_grad_norm", "finetune_epochs", "snap", "cost_power"):
        v = getattr(cfg, k)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
            problems.append(f"{k} must be a number >= 0, got {v!r}")
    if isinstance(cfg.epochs, (int, float)) and cfg.epochs <= 0:
        problems.append("epochs must be > 0")
    if not isinstance(cfg.force_options, dict):
        problems.append(f"force_options must be a table, got {cfg.force_options!r}")
    if cfg.force_mode not in ("prox", "loss"):
        problems.append(f"force_mode must be 'prox' or 'loss', got {cfg.force_mode!r}")
    if cfg.force == GROUP_NORM and not cfg.widths:
        problems.append(f"force {GROUP_NORM!r} prunes to given per-layer widths: set widths = {{unit set name = units kept}}")
    bad_kinds = sorted(set(cfg.prune_kinds) - {"head", "neuron", "channel"})
    if bad_kinds:
        problems.append(f"prune_kinds may hold 'head', 'neuron', 'channel'; got {bad_kinds}")
    targets = [k for k in ("target_macs", "target_params") if getattr(cfg, k) is not None]
    if targets and cfg.force in ("none", GROUP_NORM):
        problems.append(f"{targets[0]} needs a force (the controller scales it); force {cfg.force!r} has none")
    if targets and cfg.widths:
        problems.append(f"give either {targets[0]} or widths, not both")
    if not isinstance(cfg.budget, dict):
        problems.append(f"budget must be a table, got {cfg.budget!r}")
    if problems:
        raise ForcePruneError("invalid text run config:\n  " + "\n  ".join(problems))
    return cfg


def _subset(texts, labels, n: int, seed: int):
    if not n or n >= len(texts):
        return list(texts), list(labels)
    idx = sorted(random.Random(seed).sample(range(len(texts)), n))
    return [texts[i] for i in idx], [labels[i] for i in idx]


def load_splits(cfg: TextRunConfig) -> dict:
    """``{"train": (texts, labels), "dev": ..., "test": ... or None, "label_names": [...]}``."""
    if cfg.dataset == "sst2":
        train, dev = read_sst2("train", cfg.data_dir), read_sst2("dev", cfg.data_dir)
        test = read_sst2("test", cfg.data_dir) if cfg.eval_test else None
        names = list(SST2_LABELS)
    else:  # TREC has train/test only: its test set is the evaluation set
        t, y, names = read_trec("train", cfg.data_dir)
        e, ey, _ = read_trec("test", cfg.data_dir)
        train, dev, test = (t, y), (e, ey), None
    return {
        "train": _subset(*train, cfg.train_subset, cfg.seed),
        "dev": _subset(*dev, cfg.dev_subset, cfg.seed + 1),
        "test": test,
        "label_names": names,
    }


def encoder_macs(model, seq_len: int) -> int | None:
    """MACs of the transformer encoder alone (attention matmuls included) for one sequence."""
    from ..metrics import count_macs_params

    base = getattr(model, "base_model", model)
    encoder = getattr(base, "encoder", None)
    hidden = getattr(getattr(model, "config", None), "hidden_size", None)
    if encoder is None or hidden is None:
        return None
    p = next(model.parameters())
    x = torch.zeros(1, seq_len, hidden, dtype=p.dtype, device=p.device)
    return count_macs_params(encoder, (x,))[0]


def model_shape(model) -> dict:
    from ..attention import ffn_per_layer, heads_per_layer

    return {"heads": list(heads_per_layer(model).values()), "ffn": list(ffn_per_layer(model).values())}


def _ignored_for_kinds(pruner, kinds) -> list:
    out = []
    for us in pruner.unit_sets:
        if us.kind not in kinds:
            out += us.producer_modules()
    return out


def build_pruner(model, example, cfg: TextRunConfig, total_steps: int | None = None):
    """A ForcePruner acting on the unit kinds of ``cfg.prune_kinds`` only (the pooler's
    channels are not pruned by default); with a target, its controller plans over
    ``total_steps`` optimizer steps."""
    from ..pruner import ForcePruner

    kwargs: dict[str, Any] = dict(capture=cfg.capture, threshold=cfg.threshold, snap=cfg.snap, capture_every=cfg.capture_every)
    if cfg.cost_power:
        kwargs["cost_power"] = cfg.cost_power
    if cfg.target_macs is not None or cfg.target_params is not None:
        kwargs.update(target_macs=cfg.target_macs, target_params=cfg.target_params, total_steps=total_steps,
                      budget=dict(cfg.budget) or None)
    pruner = ForcePruner(model, example, cfg.force, **kwargs, **cfg.force_options)
    ignored = _ignored_for_kinds(pruner, set(cfg.prune_kinds))
    if ignored:
        pruner = ForcePruner(model, example, cfg.force, ignored_layers=ignored, **kwargs, **cfg.force_options)
    return pruner


def prune_by_group_norm(pruner, widths: dict, calibration_inputs=None) -> dict:
    """Baseline: keep, in each unit set named in ``widths``, the units with the largest
    torch-pruning ``GroupMagnitudeImportance`` (group L2 norm over every coupled layer),
    summed over a head's channels; remove the rest through the same graph. Returns a
    report dict like :meth:`PruneReport.to_dict` (MACs, params, widths, kept)."""
    import torch_pruning as tp

    from ..metrics import count_macs_params
    from ..removal import RemovalPlan, apply_removal

    unknown = sorted(set(widths) - {us.name for us in pruner.unit_sets})
    if unknown:
        raise ForcePruneError(f"widths names unknown unit sets {unknown}; valid: {[us.name for us in pruner.unit_sets]}.")
    model = pruner.model
    example = pruner.example_inputs
    macs0, params0 = count_macs_params(model, example)
    imp = tp.importance.GroupMagnitudeImportance(p=2)
    plans, layers = [], []
    was = model.training
    model.eval()
    for us in pruner.unit_sets:
        k = int(widths.get(us.name, us.size))
        if k >= us.size:
            continue
        channels = list(range(us.size * us.channels_per_unit))
        group = pruner.graph.get_pruning_group(us.root, us.root_fn, channels)
        with torch.no_grad():
            scores = imp(group).float().cpu().view(us.size, us.channels_per_unit).sum(1)
        remove = torch.ones(us.size, dtype=torch.bool)
        remove[torch.argsort(scores, descending=True, stable=True)[: max(1, k)]] = False
        plans.append(RemovalPlan(us, remove, torch.zeros(us.size, dtype=torch.bool)))
        layers.append({"name": us.name, "width_before": us.size, "width_after": int((~remove).sum())})
    kept = apply_removal(pruner.graph, plans, model)
    model.train(was)
    macs1, params1 = count_macs_params(model, example)
    return {"mode": GROUP_NORM, "macs_before": macs0, "macs_after": macs1, "params_before": params0,
            "params_after": params1, "layers": layers, "kept": kept}


def run_text_classification(config: dict | TextRunConfig, output_dir: str | Path | None = None, log=print) -> dict:
    """Run one config; returns the report dict (also written to ``output_dir/report.json``)."""
    from ..metrics import count_macs_params, measure_latency
    from .finetune import evaluate, steps_for, train_classifier
    from .model import load_text_classifier

    cfg = make_config(config)
    out_dir = Path(output_dir or cfg.output_dir or f"runs/{cfg.dataset}_{cfg.force}")
    t_start = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    splits = load_splits(cfg)  # data errors before the (slower) model load
    model, tokenizer = load_text_classifier(cfg.model, num_labels=len(splits["label_names"]), seed=cfg.seed)
    pad = tokenizer.pad_token_id or 0

    def batches(split, shuffle, bs):
        texts, labels = split
        return TextBatches(encode_texts(tokenizer, texts, cfg.max_length), labels, bs, shuffle=shuffle, seed=cfg.seed, pad_id=pad)

    train = batches(splits["train"], True, cfg.batch_size)
    dev = batches(splits["dev"], False, cfg.eval_batch_size)
    test = batches(splits["test"], False, cfg.eval_batch_size) if splits["test"] is not None else None
    example = dev.example(1, cfg.macs_seq_len)
    latency_inputs = dev.example(cfg.latency_batch, cfg.macs_seq_len)
    calib = dev.example(min(64, len(dev.ids)))

    macs0, params0 = count_macs_params(model, example)
    enc0 = encoder_macs(model, cfg.macs_seq_len)
    shape0 = model_shape(model)
    report: dict[str, Any] = {
        "task": TASK, "name": cfg.name, "model": cfg.model, "dataset": cfg.dataset, "force": cfg.force,
        "force_options": dict(cfg.force_options), "config": dataclasses.asdict(cfg),
        "train_samples": len(train.ids), "dev_samples": len(dev.ids), "test_samples": len(test.ids) if test else 0,
        "macs_seq_len": cfg.macs_seq_len,
    }
    steps = steps_for(cfg.epochs, len(train), cfg.max_steps)
    pruner = None if cfg.force in ("none", GROUP_NORM) else build_pruner(model, example, cfg, steps)
    if log:
        log(f"[{cfg.dataset}] {len(train.ids)} train / {len(dev.ids)} dev sentences; force {cfg.force}; "
            f"{macs0 / 1e6:.1f} M MACs per {cfg.macs_seq_len}-token sentence")
    hist = train_classifier(
        model, train, epochs=cfg.epochs, lr=cfg.lr, weight_decay=cfg.weight_decay, warmup_ratio=cfg.warmup_ratio,
        max_grad_norm=cfg.max_grad_norm, pruner=pruner, max_steps=cfg.max_steps or None, log_every=cfg.log_every, log=log,
        force_mode=cfg.force_mode,
    )
    report["train"] = {k: hist[k] for k in ("steps", "seconds", "samples_per_s", "loss", "penalty", "units_zero")}
    report["acc_dev_before_removal"] = evaluate(model, dev)["accuracy"]
    dense_copy = copy.deepcopy(model).eval()
    if pruner is not None:
        report["unit_kinds"] = {us.name: us.kind for us in pruner.unit_sets}
        pruner.capture()
        prune_report = pruner.prune(widths=cfg.widths, calibration_inputs=calib)
        report["removal"] = prune_report.to_dict()
        report["budget"] = pruner.controller.describe() if pruner.controller is not None else None
        if log:
            log(prune_report.table())
    elif cfg.force == GROUP_NORM:
        base = build_pruner(model, example, dataclasses.replace(cfg, force="group_lasso", force_options={"beta": 0.0}))
        report["unit_kinds"] = {us.name: us.kind for us in base.unit_sets}
        report["removal"] = prune_by_group_norm(base, cfg.widths)
    if "removal" in report:
        report["acc_dev_after_removal"] = evaluate(model, dev)["accuracy"]
    if cfg.finetune_epochs:
        ft = train_classifier(
            model, train, epochs=cfg.finetune_epochs, lr=cfg.finetune_lr or cfg.lr / 2, weight_decay=cfg.weight_decay,
            warmup_ratio=cfg.warmup_ratio, max_grad_norm=cfg.max_grad_norm, max_steps=cfg.max_steps or None,
            log_every=cfg.log_every, log=log,
        )
        report["finetune"] = {k: ft[k] for k in ("steps", "seconds", "samples_per_s", "loss")}
    model.eval()
    report["acc_dev"] = evaluate(model, dev)["accuracy"]
    report["acc_test"] = evaluate(model, test)["accuracy"] if test is not None else None
    macs1, params1 = count_macs_params(model, example)
    shape1 = model_shape(model)
    report.update(
        macs_before=macs0, macs_after=macs1, params_before=params0, params_after=params1,
        encoder_macs_before=enc0, encoder_macs_after=encoder_macs(model, cfg.macs_seq_len),
        heads_before=shape0["heads"], heads_after=shape1["heads"], ffn_before=shape0["ffn"], ffn_after=shape1["ffn"],
    )
    # latency side by side in one process (shared CPUs drift): alternate dense / pruned, keep medians
    lat = {"before": [], "after": []}
    threads = torch.get_num_threads()
    if cfg.latency_threads:
        torch.set_num_threads(cfg.latency_threads)
    try:
        for _ in range(3):
            lat["before"].append(measure_latency(dense_copy, latency_inputs, repeats=cfg.latency_repeats, warmup=2))
            lat["after"].append(measure_latency(model, latency_inputs, repeats=cfg.latency_repeats, warmup=2))
    finally:
        torch.set_num_threads(threads)
    report["latency_threads"] = cfg.latency_threads or threads
    report["latency_batch"] = cfg.latency_batch
    report["latency_ms_before"] = sorted(lat["before"])[1]
    report["latency_ms_after"] = sorted(lat["after"])[1]
    report["seconds"] = time.perf_counter() - t_start
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=1, default=str))
    if cfg.save_model:
        model.save_pretrained(str(out_dir / "model"))
        tokenizer.save_pretrained(str(out_dir / "model"))
        report["model_dir"] = str(out_dir / "model")
    if log:
        log(summary_line(report))
    return report


def summary_line(r: dict) -> str:
    enc = ""
    if r.get("encoder_macs_before"):
        enc = f"; encoder MACs {r['encoder_macs_before'] / 1e6:.1f}M -> {r['encoder_macs_after'] / 1e6:.1f}M"
    test = f", test {100 * r['acc_test']:.2f}%" if r.get("acc_test") is not None else ""
    return (
        f"dev acc {100 * r['acc_dev']:.2f}%{test}{enc}; heads {r['heads_after']}; FFN {r['ffn_after']}; "
        f"latency {r['latency_ms_before']:.1f} -> {r['latency_ms_after']:.1f} ms (batch {r['latency_batch']})"
    )


def run_sst2(config: dict | TextRunConfig | None, output_dir: str | Path | None = None, log=print) -> dict:
    """SST-2 run (``dataset`` defaults to ``"sst2"``): see :func:`run_text_classification`."""
    if isinstance(config, TextRunConfig):
        return run_text_classification(config, output_dir, log)
    config = dict(config or {})
    config.setdefault("dataset", "sst2")
    return run_text_classification(config, output_dir, log)
