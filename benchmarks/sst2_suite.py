"""The ``sst2`` benchmark suite: MiniLM-L6 on SST-2, an accuracy/MACs curve, every method on the
same data, steps and teacher.

    forceprune bench sst2                      # full SST-2: ~3 h on 2 CPU cores (2 runs at a time)
    python benchmarks/sst2.py --smoke          # a plumbing check in ~2 min

Protocol (every method starts from the same pretrained all-MiniLM-L6-v2 weights):

* data: all 67,349 SST-2 training sentences (``train_subset`` lowers it); evaluation on the full
  dev set (872) and the labelled SentEval test set (1,821). Nothing is selected on either:
  final numbers only.
* per seed, a dense fine-tune of ``D`` epochs (AdamW, batch 32, linear warm-up/decay) is the
  teacher and the starting point of every method; the **dense** row continues it for ``E + F``
  more epochs (the same total steps as every method);
* **ETP**: ``E`` epochs with the exponential-torque force on heads and FFN neurons (ranked pivot,
  proximal step after AdamW, the planning budget controller with ``target_macs = level``, the
  force on the units the target needs gone only: ``spare_keepers``), distilled from the teacher;
  removal (exact zeros); ``F`` epochs of distilled recovery;
* **linear torque**: the same recipe with the linear torque force, cut to ETP's per-layer widths;
* **torch-pruning group norm**: ``E`` epochs of distilled fine-tuning, then Torch-Pruning's
  ``GroupMagnitudeImportance`` keeps the strongest units down to ETP's widths, then ``F``;
* **Fisher mask search** (Kwon et al. 2022 style, post-training): ``E`` epochs of distilled
  fine-tuning, then the Fisher mask search with rearrangement to ``target_macs = level`` on 2,048
  training sentences, then ``F`` (its accuracy just after removal is the no-retraining number);
* **ETP + Fisher** (``etp_fisher``): ETP's recipe with ``importance = "fisher"``: the Fisher mask
  search on the teacher fixes the units the force pushes (different numbers per layer), so removal
  stays exact.

MACs are per 64-token sentence with torch-pruning's counter plus the attention matmuls (encoder =
the 6 transformer layers); latency is the median of a batch of 32 such sentences, one thread,
pruned vs its own unpruned copy side by side.
"""
from __future__ import annotations

import datetime
import json
import shutil
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from forceprune.baselines import FISHER, GROUP_NORM
from forceprune.errors import ForcePruneError

from .common import fmt_cell, machine, write_result

METHODS = ("dense", "etp", "etp_fisher", "torque", "group_norm", "fisher")
FORCE = {"etp": "etp", "etp_fisher": "etp", "torque": "torque", "group_norm": GROUP_NORM, "fisher": FISHER}


def _widths(report: dict) -> dict:
    return {r["name"]: r["width_after"] for r in report["layers"]}


def _one(config: dict, dense_checkpoint: str | None, progress: bool, reuse: bool = False) -> dict:
    """One run (in a worker process): its directory is seeded with the seed's dense fine-tune,
    which the pipeline then resumes from instead of training it again. With ``reuse``, a run
    that already finished there with the same config is read back instead of trained."""
    import torch

    from forceprune.runs import config_from_dict, run

    torch.set_num_threads(config.get("threads") or 1)
    out = Path(config["output_dir"])
    if reuse and _finished(out, config_from_dict(config).to_dict()):
        return json.loads((out / "report.json").read_text())
    if out.exists():
        shutil.rmtree(out)
    if dense_checkpoint is not None:
        (out / "checkpoints").mkdir(parents=True)
        shutil.copy(dense_checkpoint, out / "checkpoints" / "dense.pt")
    return run(config_from_dict(config), resume=dense_checkpoint is not None, progress=progress)


def run_suite(
    levels: tuple[float, ...] = (0.667, 0.5, 0.333),
    methods: tuple[str, ...] = METHODS,
    *,
    seeds: tuple[int, ...] = (0,),
    seeds_at: float = 0.5,
    extra_seeds: tuple[int, ...] = (1, 2),
    train_subset: int = 0,
    dense_epochs: float = 1.0,
    epochs: float = 0.5,
    finetune_epochs: float = 0.25,
    beta: float = 0.2,
    lr: float = 1e-4,
    distill: dict | None = None,
    threads: int = 1,
    workers: int = 2,
    data_dir: str | None = None,
    model: str = "minilm-l6",
    smoke: bool = False,
    output_dir: str | Path | None = None,
    work_dir: str | Path | None = None,
    config: dict | None = None,
    progress: bool = True,
    command: str | None = None,
    resume: bool = False,
) -> dict:
    """Run the suite; writes ``sst2.json``, ``sst2.md`` and ``sst2.png`` (``sst2_smoke.*`` with
    ``smoke``) under ``output_dir`` (default ``benchmarks/results``), each run's directory under
    ``work_dir`` (default ``runs/bench_sst2``), and returns the result. ETP, the Fisher search and
    etp_fisher run at ``seeds`` at every level and also at ``extra_seeds`` at level ``seeds_at``;
    ``config`` overrides keys of every run's config (e.g. ``batch_size``); ``command`` is what the result records as the command
    that made it (default ``forceprune bench sst2``); with ``resume`` every run that finished in
    ``work_dir`` with the same config (a stopped suite's, or one with fewer methods) is reused."""
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ForcePruneError(f"unknown sst2 methods {unknown}; available: {', '.join(METHODS)}.")
    if any(not 0 < lv < 1 for lv in levels):
        raise ForcePruneError(f"levels are kept MACs fractions in (0, 1), got {list(levels)}.")
    distill = {"alpha": 0.5, "temperature": 2.0} if distill is None else distill
    common: dict[str, Any] = dict(
        task="text_classification", model=model, dataset="sst2", data_dir=data_dir, train_subset=train_subset, lr=lr,
        finetune_lr=lr / 2, batch_size=32, weight_decay=0.01, warmup_ratio=0.06, max_length=128,
        macs_seq_len=64, latency_batch=32, latency_repeats=10, capture_every=5, log_every=50, threads=threads,
        dense_epochs=dense_epochs, init_from_dense=True,
    )
    if smoke:
        common.update(train_subset=256, dev_subset=128, eval_test=False, latency_batch=4, latency_repeats=2,
                      log_every=4, warmup_ratio=0.0)
        beta = max(beta, 20.0)  # strong enough to remove units in a few steps
    common.update(config or {})
    force_opts = {"beta": beta, "pivot": "ranked", "norm": "l2"}
    work = Path(work_dir or Path("runs") / ("bench_sst2_smoke" if smoke else "bench_sst2"))
    E, F = epochs, finetune_epochs
    all_seeds = tuple(dict.fromkeys([*seeds, *extra_seeds]))
    started = time.perf_counter()
    points: list[dict] = []

    def cfg(method: str, level: float, seed: int, **extra) -> dict:
        out = work / f"{method}_{level:g}_seed{seed}"
        base = {**common, "seed": seed, "name": f"{method}@{level:g}/seed{seed}", "output_dir": str(out)}
        if method == "dense":
            return {**base, "force": "none", "epochs": E + F}
        return {**base, "force": FORCE[method], "epochs": E, "finetune_epochs": F, "distill": dict(distill), **extra}

    def batch(jobs: list[tuple[str, float, int, dict]], dense: dict[int, str] | None) -> list[dict]:
        if progress:
            print(f"\n=== {', '.join(f'{m}@{lv:g}/seed{s}' for m, lv, s, _ in jobs)} ===", flush=True)
        args = [(cfg(m, lv, s, **extra), dense.get(s) if dense else None, progress and workers == 1, resume)
                for m, lv, s, extra in jobs]
        if workers > 1 and len(args) > 1:
            with ProcessPoolExecutor(max_workers=min(workers, len(args))) as pool:
                reports = list(pool.map(_one, *zip(*args)))
        else:
            reports = [_one(*a) for a in args]
        for (m, lv, s, _), r in zip(jobs, reports):
            points.append({"method": m, "level": lv, "seed": s, "report": r})
        return reports

    batch([("dense", 1.0, s, {}) for s in all_seeds], None)
    dense = {s: str(work / f"dense_1_seed{s}" / "checkpoints" / "dense.pt") for s in all_seeds}
    matched_methods = {"torque", "group_norm"} & set(methods)
    def seeds_of(level: float) -> tuple[int, ...]:
        return all_seeds if level == seeds_at else seeds

    etp_jobs = [("etp", lv, s, {"target_macs": lv, "spare_keepers": True, "force_options": force_opts})
                for lv in levels for s in seeds_of(lv)] if "etp" in methods or matched_methods else []
    planned = {"spare_keepers": True, "importance": "fisher", "force_options": force_opts}
    fisher_jobs = [("fisher", lv, s, {"target_macs": lv}) for lv in levels for s in seeds_of(lv)] if "fisher" in methods else []
    fisher_jobs += [("etp_fisher", lv, s, dict(planned, target_macs=lv)) for lv in levels
                    for s in seeds_of(lv)] if "etp_fisher" in methods else []
    etp = batch(etp_jobs + fisher_jobs, dense)
    widths = {lv: _widths(r) for (_, lv, s, _), r in zip(etp_jobs, etp) if s == seeds[0]}
    matched = [("torque", lv, seeds[0], {"widths": widths[lv], "force_options": force_opts}) for lv in levels if "torque" in methods]
    matched += [("group_norm", lv, seeds[0], {"widths": widths[lv]}) for lv in levels if "group_norm" in methods]
    if matched:
        batch(matched, dense)

    result = {
        "benchmark": "MiniLM-L6 / SST-2: accuracy against encoder MACs, same data, steps and teacher for every method",
        "smoke": smoke,
        "command": command or "forceprune bench sst2" + (" --smoke" if smoke else ""),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(threads) + f", {workers} run(s) at a time",
        "budget": {"train_subset": common["train_subset"] or "all (67,349)", "dense_epochs": dense_epochs,
                   "epochs_method": E, "epochs_finetune": F, "beta_start": beta, "distill": distill,
                   "dev": "128" if smoke else "full (872)", "test": "none" if smoke else "SentEval labelled (1,821)"},
        "seconds": time.perf_counter() - started,
        "points": [_row(p) for p in points],
        "summary": summarise([_row(p) for p in points]),
        "runs": {f"{p['method']}@{p['level']:g}/seed{p['seed']}": _summary(p["report"]) for p in points},
    }
    write_result(result, Path(output_dir or "benchmarks/results"), "sst2_smoke" if smoke else "sst2", markdown, plot)
    if progress:
        print("\n" + markdown(result))
    return result


def _finished(out: Path, config: dict) -> bool:
    """Whether ``out`` holds a finished run (its report) of exactly ``config``."""
    try:
        return json.loads((out / "config.json").read_text()) == config and (out / "report.json").is_file()
    except (OSError, ValueError):
        return False


def _summary(report: dict) -> dict:
    """A run's report without its per-epoch history and force field (they stay in the run's own report.json)."""
    return {k: v for k, v in report.items() if k not in ("history", "force_field")}


def _row(point: dict) -> dict:
    r = point["report"]
    budget = r.get("budget") or {}
    (batch, before), = r["latency_ms_before"].items()
    return {
        "method": point["method"], "level": point["level"], "seed": point["seed"], "acc_dev": r["acc_final"],
        "acc_test": r.get("acc_test"), "acc_dense_teacher": r["acc_dense"],
        "acc_dev_before_removal": r["acc_before_removal"], "acc_dev_after_removal": r["acc_after_removal"],
        "macs_before": r["macs_before"], "macs_after": r["macs_after"],
        "encoder_macs_before": r["encoder_macs_before"], "encoder_macs_after": r["encoder_macs_after"],
        "encoder_reduction": r["encoder_macs_before"] / max(r["encoder_macs_after"], 1),
        "reached_vs_target": (r["macs_after"] / r["macs_before"] / budget["target"]) if budget.get("target") else None,
        "params_after": r["params_after"], "heads_after": r["heads_after"], "ffn_after": r["ffn_after"],
        "latency_ms_before": before, "latency_ms_after": r["latency_ms_after"][batch],
        "max_output_error": r["max_output_error"], "train_s": r["train_wall_s"], "wall_s": r["wall_s"],
    }


def summarise(rows: list[dict]) -> list[dict]:
    """Mean and standard deviation over seeds, per (method, level)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["level"]), []).append(r)
    out = []
    for (method, level), rs in groups.items():
        row = {"method": method, "level": level, "seeds": [r["seed"] for r in rs]}
        for key in ("acc_dev", "acc_test", "acc_dev_before_removal", "acc_dev_after_removal", "encoder_reduction",
                    "reached_vs_target", "max_output_error", "train_s", "wall_s"):
            vals = [r[key] for r in rs if r.get(key) is not None]
            row[key] = statistics.mean(vals) if vals else None
            row[key + "_std"] = statistics.stdev(vals) if len(vals) > 1 else None
        row.update(heads_after=rs[0]["heads_after"], ffn_after=rs[0]["ffn_after"],
                   encoder_macs_after=rs[0]["encoder_macs_after"])
        out.append(row)
    return out


def markdown(result: dict) -> str:
    b = result["budget"]
    dense_rows = [p for p in result["points"] if p["method"] == "dense"]
    dense_dev = statistics.mean(p["acc_dev"] for p in dense_rows) if dense_rows else None
    lines = [
        f"### {result['benchmark']}" + (" (SMOKE: plumbing check only, numbers meaningless)" if result["smoke"] else ""),
        "",
        f"`{result['command']}` — {result['date']}, {result['machine']}, total {result['seconds'] / 60:.1f} min. "
        f"Data: {b['train_subset']} SST-2 training sentences; per seed a dense fine-tune of {b['dense_epochs']} epoch(s) "
        f"is the teacher and the start of every method; then {b['epochs_method']} epoch(s) with the method and "
        f"{b['epochs_finetune']} epoch(s) of recovery after removal, both distilled from the teacher ({b['distill']}); "
        "the dense row continues the fine-tune for the same steps. AdamW, batch 32; force beta starts at "
        f"{b['beta_start']} and the budget controller plans it. Dev: {b['dev']}; test: {b['test']}; final numbers, "
        "nothing selected on either. Mean ± std over the seeds listed.",
        "MACs per 64-token sentence (torch-pruning counter + attention matmuls); encoder = the 6 transformer layers. "
        "Torque and group norm are cut to ETP's per-layer widths (of its first seed), so their MACs match ETP's; Fisher search "
        "meets the same MACs target by its own search.",
        "",
        "| level | method | seeds | dev acc before removal | after removal | final dev acc | Δ dev vs dense | test acc | "
        "encoder MACs (M) | × fewer | reached/target | heads per layer | FFN neurons per layer | removal error | "
        "train s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    if result.get("sources"):
        lines[4:4] = ["", "Combined from " + "; ".join(f"`{s['command']}` ({s['date']}, {s['machine']}, "
                                                   f"{s['seconds'] / 60:.1f} min: {', '.join(s['points'])})"
                                                   for s in result["sources"]) + "."]
    for r in result["summary"]:
        pm = lambda k: fmt_cell(r.get(k)) + (f" ± {r[k + '_std']:.2f}" if r.get(k + "_std") is not None else "")  # noqa: E731
        delta = f"{r['acc_dev'] - dense_dev:+.2f}" if dense_dev is not None else "–"
        level = "dense" if r["method"] == "dense" else f"{r['level']:g}"
        lines.append(
            f"| {level} | {r['method']} | {','.join(map(str, r['seeds']))} | {pm('acc_dev_before_removal')} "
            f"| {pm('acc_dev_after_removal')} | {pm('acc_dev')} | {delta} | {pm('acc_test')} "
            f"| {r['encoder_macs_after'] / 1e6:.1f} | {fmt_cell(r['encoder_reduction'])} "
            f"| {fmt_cell(r.get('reached_vs_target'), '{:.3f}')} | {r['heads_after']} | {r['ffn_after']} "
            f"| {fmt_cell(r.get('max_output_error'), '{:.1e}')} | {fmt_cell(r.get('train_s'), '{:.0f}')} |"
        )
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    """Dev accuracy against the encoder MACs reduction, one line per method (error bars: seeds)."""
    from forceprune.visual.plots import curve_axes

    with curve_axes(path, title="MiniLM-L6 / SST-2", xlabel="encoder MACs reduction (dense / pruned)",
                    ylabel="SST-2 dev accuracy (%)") as ax:
        for method in dict.fromkeys(r["method"] for r in result["summary"]):
            rows = sorted((r["encoder_reduction"], r["acc_dev"], r.get("acc_dev_std") or 0)
                          for r in result["summary"] if r["method"] == method)
            xs, ys, es = zip(*rows)
            if method == "dense":
                ax.axhline(ys[0], color="k", lw=1, ls="--", label="dense")
                ax.axhline(ys[0] - 1.0, color="k", lw=0.8, ls=":", label="dense − 1 pt")
            else:
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=method)


def combine(results: list[dict], command: str) -> dict:
    """One result from several invocations of the suite with the same budget (e.g. seed 0 on one
    day, seeds 1 and 2 on another): their points side by side, summarised again. A (method,
    level, seed) measured more than once keeps the later result's point; ``sources`` records
    each invocation's command, date, machine and the points it contributed."""
    if not results:
        raise ForcePruneError("nothing to combine: pass the sst2.json files of the invocations.")
    budgets = {json.dumps(r["budget"], sort_keys=True) for r in results}
    if len(budgets) > 1 or any(r["smoke"] for r in results):
        raise ForcePruneError("these sst2 results have different budgets (or one is a smoke run): only runs of the "
                              "same protocol can share a table; re-run them with the same options.")
    points: dict[tuple, dict] = {}
    source_of: dict[tuple, int] = {}
    for i, r in enumerate(results):
        for p in r["points"]:
            key = (p["method"], p["level"], p["seed"])
            points[key], source_of[key] = p, i
    kept = sorted(points.values(), key=lambda p: (METHODS.index(p["method"]), -p["level"], p["seed"]))
    runs = {k: v for r in results for k, v in r["runs"].items()}
    sources = [{"command": r["command"], "date": r["date"], "machine": r["machine"], "seconds": r["seconds"],
                "points": [f"{k[0]}@{k[1]:g}/seed{k[2]}" for k, i_ in source_of.items() if i_ == i]}
               for i, r in enumerate(results)]
    names = [f"{p['method']}@{p['level']:g}/seed{p['seed']}" for p in kept]
    return {**results[-1], "command": command, "machine": " + ".join(dict.fromkeys(r["machine"] for r in results)),
            "seconds": sum(r["seconds"] for r in results), "points": kept, "summary": summarise(kept),
            "runs": {name: runs.get(name) for name in names}, "sources": sources}


def combine_files(paths: list[Path], output_dir: Path, command: str) -> dict:
    """:func:`combine` the ``sst2.json`` files at ``paths``; writes ``sst2.{json,md,png}`` under
    ``output_dir`` (checked to be readable results first, so nothing is overwritten on bad input)."""
    results = []
    for path in paths:
        try:
            results.append(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as exc:
            raise ForcePruneError(f"cannot read sst2 result {path}: {exc}; pass the sst2.json a suite wrote.") from exc
        if not {"points", "budget", "runs"} <= set(results[-1]):
            raise ForcePruneError(f"{path} is not an sst2 suite result (no points / budget / runs).")
    result = combine(results, command)
    write_result(result, Path(output_dir), "sst2", markdown, plot)
    return result
