"""The ``sst2`` benchmark suite: MiniLM-L6 on SST-2, an accuracy/MACs curve, every method on
the same fine-tuning budget.

    forceprune bench sst2                      # ~45 min on 2 CPU cores (3 levels)
    python benchmarks/sst2.py --smoke          # a plumbing check in ~2 min

Protocol (every method starts from the same pretrained all-MiniLM-L6-v2 weights, seed 0):

* budget: a random (seeded) subset of SST-2 train (default 8,000 of 67,349 sentences), ``E``
  epochs with the method (default 1) then ``F`` epochs of plain fine-tuning (0.5), AdamW, batch
  32, linear warm-up/decay; evaluation on the full dev set (872) and the labelled SentEval test
  set (1,821). Nothing is selected on either: final numbers only.
* dense: ``E + F`` epochs, nothing removed.
* ETP: the exponential-torque force on heads and FFN neurons (ranked pivot, applied as a
  proximal step after AdamW), with ``target_macs = level``: the budget controller scales the
  force until the captured units reach the level; they are removed losslessly; then ``F``.
* linear torque: the same recipe with the linear torque force, removed down to ETP's per-layer
  widths at that level (keeping the units with the largest force-weighted norms), then ``F``.
* torch-pruning group norm: dense fine-tuning for ``E`` epochs, then torch-pruning's
  ``GroupMagnitudeImportance`` (group L2 norm over Q/K/V/O or up/down projections) keeps the
  strongest units down to ETP's per-layer widths, then ``F``.

At each level the three pruned models have identical shapes (identical MACs): the comparison is
of *which* units each method keeps and how well the rest recovers. MACs are per 64-token
sentence with torch-pruning's counter plus the attention matmuls; latency is the median of a
batch of 32 such sentences, single-threaded, measured side by side with the unpruned model.
"""
from __future__ import annotations

import datetime
import time
from pathlib import Path
from typing import Any

from forceprune.baselines import GROUP_NORM
from forceprune.errors import ForcePruneError

from .common import fmt_cell, machine, write_result

METHODS = ("dense", "etp", "torque", "group_norm")


def _widths(report: dict) -> dict:
    return {r["name"]: r["width_after"] for r in report["layers"]}


def run_suite(
    levels: tuple[float, ...] = (0.7, 0.5, 0.35),
    methods: tuple[str, ...] = METHODS,
    *,
    train_subset: int = 8000,
    epochs: float = 1.0,
    finetune_epochs: float = 0.5,
    beta: float = 0.2,
    lr: float = 1e-4,
    threads: int = 1,
    data_dir: str | None = None,
    model: str = "minilm-l6",
    smoke: bool = False,
    output_dir: str | Path | None = None,
    work_dir: str | Path | None = None,
    config: dict | None = None,
    progress: bool = True,
) -> dict:
    """Run the suite; writes ``sst2.json``, ``sst2.md`` and ``sst2.png`` (``sst2_smoke.*``
    with ``smoke``) under ``output_dir`` (default ``benchmarks/results``), each run's own run
    directory under ``work_dir`` (default ``runs/bench_sst2``), and returns the result.
    ``config`` overrides keys of every run's :class:`~forceprune.runs.TextConfig` (e.g.
    ``batch_size``)."""
    from forceprune.runs import config_from_dict, run

    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ForcePruneError(f"unknown sst2 methods {unknown}; available: {', '.join(METHODS)}.")
    if any(not 0 < lv < 1 for lv in levels):
        raise ForcePruneError(f"levels are kept MACs fractions in (0, 1), got {list(levels)}.")
    common: dict[str, Any] = dict(
        task="text_classification", model=model, dataset="sst2", data_dir=data_dir, train_subset=train_subset, lr=lr,
        finetune_lr=lr / 2, batch_size=32, weight_decay=0.01, warmup_ratio=0.06, max_length=128, seed=0,
        macs_seq_len=64, latency_batch=32, latency_repeats=10, capture_every=5, log_every=50, threads=threads,
    )
    if smoke:
        common.update(train_subset=256, dev_subset=128, eval_test=False, latency_batch=4, latency_repeats=2,
                      log_every=4, warmup_ratio=0.0)
        beta = max(beta, 20.0)  # strong enough to remove units in a few steps
    common.update(config or {})
    force_opts = {"beta": beta, "pivot": "ranked", "norm": "l2"}
    work = Path(work_dir or Path("runs") / ("bench_sst2_smoke" if smoke else "bench_sst2"))
    E, F = epochs, finetune_epochs
    points: list[dict] = []
    t0 = time.perf_counter()

    def point(method: str, level: float, cfg: dict) -> dict:
        if progress:
            print(f"\n=== {method} @ {level:g} of the dense MACs ===", flush=True)
        out = work / f"{method}_{level:g}"
        report = run(config_from_dict({**common, **cfg, "name": f"{method}@{level:g}", "output_dir": str(out)}),
                     overwrite=True, progress=progress)
        points.append({"method": method, "level": level, "report": report})
        return report

    if "dense" in methods:
        point("dense", 1.0, {"force": "none", "epochs": E + F})
    for level in levels if set(methods) - {"dense"} else ():  # ETP always runs: its widths define the level
        etp = point("etp", level, {"force": "etp", "force_options": force_opts, "epochs": E, "finetune_epochs": F,
                                   "target_macs": level})
        widths = _widths(etp)
        if "torque" in methods:
            point("torque", level, {"force": "torque", "force_options": force_opts, "epochs": E, "finetune_epochs": F,
                                    "widths": widths})
        if "group_norm" in methods:
            point("group_norm", level, {"force": GROUP_NORM, "epochs": E, "finetune_epochs": F, "widths": widths})

    result = {
        "benchmark": "MiniLM-L6 / SST-2: accuracy against encoder MACs, matched per-layer widths at each level",
        "smoke": smoke,
        "command": "forceprune bench sst2" + (" --smoke" if smoke else ""),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(threads),
        "budget": {"train_subset": common["train_subset"], "epochs_method": E, "epochs_finetune": F, "beta_start": beta,
                   "dev": "128" if smoke else "full (872)", "test": "none" if smoke else "SentEval labelled (1,821)"},
        "seconds": time.perf_counter() - t0,
        "points": [_row(p) for p in points],
        "runs": {f"{p['method']}@{p['level']:g}": _summary(p["report"]) for p in points},
    }
    write_result(result, Path(output_dir or "benchmarks/results"), "sst2_smoke" if smoke else "sst2", markdown, plot)
    if progress:
        print("\n" + markdown(result))
    return result


def _summary(report: dict) -> dict:
    """A run's report without its per-epoch history and force field (they stay in the run's own report.json)."""
    return {k: v for k, v in report.items() if k not in ("history", "force_field")}


def _row(point: dict) -> dict:
    r = point["report"]
    budget = r.get("budget") or {}
    (batch, before), = r["latency_ms_before"].items()
    return {
        "method": point["method"], "level": point["level"], "acc_dev": r["acc_final"], "acc_test": r.get("acc_test"),
        "acc_dev_before_removal": r["acc_before_removal"], "acc_dev_after_removal": r["acc_after_removal"],
        "macs_before": r["macs_before"], "macs_after": r["macs_after"],
        "encoder_macs_before": r["encoder_macs_before"], "encoder_macs_after": r["encoder_macs_after"],
        "encoder_reduction": r["encoder_macs_before"] / max(r["encoder_macs_after"], 1),
        "reached_vs_target": (r["macs_after"] / r["macs_before"] / budget["target"]) if budget.get("target") else None,
        "params_after": r["params_after"], "heads_after": r["heads_after"], "ffn_after": r["ffn_after"],
        "latency_ms_before": before, "latency_ms_after": r["latency_ms_after"][batch],
        "max_output_error": r["max_output_error"], "train_s": r["train_wall_s"],
    }


def markdown(result: dict) -> str:
    b = result["budget"]
    dense = next((p for p in result["points"] if p["method"] == "dense"), None)
    lines = [
        f"### {result['benchmark']}" + (" (SMOKE: plumbing check only, numbers meaningless)" if result["smoke"] else ""),
        "",
        f"`{result['command']}` — {result['date']}, {result['machine']}, total {result['seconds'] / 60:.1f} min. "
        f"Budget: {b['train_subset']} random SST-2 training sentences (seed 0), {b['epochs_method']} epoch(s) with the "
        f"method + {b['epochs_finetune']} epoch(s) plain fine-tuning after removal (dense: the sum); AdamW, batch 32; "
        f"force beta starts at {b['beta_start']} and the budget controller scales it. Dev: {b['dev']}; test: {b['test']}; "
        "final numbers, nothing selected on either.",
        "MACs per 64-token sentence (torch-pruning counter + attention matmuls); encoder = the 6 transformer layers. "
        "At each level torque and group norm are cut to ETP's per-layer widths, so their MACs match ETP's. "
        "Latency: median ms of a batch of 32 sentences, 1 thread, pruned vs its own unpruned copy side by side.",
        "",
        "| level | method | dev acc before removal | after removal | final dev acc | Δ dev vs dense | test acc | "
        "encoder MACs (M) | × fewer | reached/target | heads per layer | FFN neurons per layer | removal error | "
        "latency ms (before → after) | train s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in result["points"]:
        test, before, after = (fmt_cell(p.get(k)) for k in ("acc_test", "acc_dev_before_removal", "acc_dev_after_removal"))
        delta = f"{p['acc_dev'] - dense['acc_dev']:+.2f}" if dense else "–"
        reached = fmt_cell(p.get("reached_vs_target") or None, "{:.3f}")
        err = fmt_cell(p.get("max_output_error"), "{:.1e}")
        level = "dense" if p["method"] == "dense" else f"{p['level']:g}"
        lines.append(
            f"| {level} | {p['method']} | {before} | {after} | {p['acc_dev']:.2f} | {delta} | {test} "
            f"| {p['encoder_macs_after'] / 1e6:.1f} "
            f"| {p['encoder_reduction']:.2f} | {reached} | {p['heads_after']} | {p['ffn_after']} | {err} "
            f"| {p['latency_ms_before']:.0f} → {p['latency_ms_after']:.0f} | {p['train_s']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    """Dev accuracy against the encoder MACs reduction, one line per method."""
    from forceprune.visual.plots import curve_axes

    with curve_axes(path, title="MiniLM-L6 / SST-2", xlabel="encoder MACs reduction (dense / pruned)",
                    ylabel="SST-2 dev accuracy (%)") as ax:
        for method in dict.fromkeys(p["method"] for p in result["points"]):
            pts = sorted((p["encoder_reduction"], p["acc_dev"]) for p in result["points"] if p["method"] == method)
            xs, ys = zip(*pts)
            if method == "dense":
                ax.axhline(ys[0], color="k", lw=1, ls="--", label="dense")
                ax.axhline(ys[0] - 1.0, color="k", lw=0.8, ls=":", label="dense − 1 pt")
            else:
                ax.plot(xs, ys, marker="o", label=method)
