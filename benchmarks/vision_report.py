"""The vision suites' tables and plot: per (method, variant) mean and spread over seeds, the
accuracy table, the speed table and the accuracy-against-MACs picture (:mod:`benchmarks.vision`)."""
from __future__ import annotations

import statistics
from pathlib import Path

from .common import fmt_cell

#: Runtime x batch of the latency measurements: eager in the run's format, eager NCHW, ONNX Runtime.
LATENCY_KEYS = ("eager_b1", "eager_b64", "nchw_b1", "nchw_b64", "ort_b1", "ort_b64")
RUNTIMES = {"eager": "eager, channels-last", "nchw": "eager, NCHW", "ort": "ONNX Runtime"}


def variant_key(p: dict) -> tuple:
    """``(method, level, beta, round_to)`` of a point: the row of the tables it belongs to."""
    return p["method"], p["level"], p.get("beta"), p.get("round_to", 1)


def summarise(points: list[dict]) -> list[dict]:
    """Mean and standard deviation over seeds, per row (:func:`variant_key`)."""
    groups: dict[tuple, list[dict]] = {}
    for p in points:
        groups.setdefault(variant_key(p), []).append(p)
    dense_acc = [p["acc_final"] for p in points if p["method"] == "dense"]
    dense_mean = statistics.mean(dense_acc) if dense_acc else None
    rows = []
    for (method, level, beta, round_to), ps in groups.items():
        row = {"method": method, "level": level, "beta": beta, "round_to": round_to, "seeds": len(ps)}
        for key in ("acc_before_removal", "acc_after_removal", "acc_final", "macs_reduction",
                    "macs_reached_vs_target", "step_overhead"):
            vals = [p[key] for p in ps if p.get(key) is not None]
            row[key] = statistics.mean(vals) if vals else None
            row[key + "_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0 if vals else None
        row["diverged"] = sum(1 for p in ps if p.get("diverged"))
        row["delta_vs_dense"] = (row["acc_final"] - dense_mean
                                 if dense_mean is not None and row["acc_final"] is not None else None)
        drops = [p["acc_before_removal"] - p["acc_after_removal"] for p in ps if p.get("acc_after_removal") is not None]
        row["removal_drop"] = statistics.mean(drops) if drops else None
        for lat in LATENCY_KEYS:
            got = [p["latency"][lat] for p in ps if p.get("latency") and lat in p["latency"]]
            row[f"speedup_{lat}"] = statistics.mean(v["speedup"] for v in got) if got else None
            for model in ("dense", "pruned"):
                row[f"{model}_ms_{lat}"] = statistics.mean(v[f"{model}_ms"] for v in got) if got else None
        rows.append(row)
    return rows


def _target_cell(r: dict) -> str:
    """What a row asked for: the MACs level, and a starting or fixed beta or a width rounding."""
    if r["method"] == "dense":
        return "dense"
    if r["level"] is None:
        return f"none (fixed β={r['beta']:g})"
    cell = f"{r['level']:.3g} ({1 / r['level']:.0f}×)"
    if r.get("beta") is not None:
        cell += f", from β={r['beta']:g}"
    if r.get("round_to", 1) > 1:
        cell += f", widths ×{r['round_to']}"
    return cell


def _final_cell(r: dict) -> str:
    """``mean ± std`` of the final accuracy, saying how many seeds diverged (NaN loss)."""
    cell = f"{fmt_cell(r['acc_final'])} ± {fmt_cell(r['acc_final_std'])}" if r["acc_final"] is not None else "–"
    return cell + (f" (diverged in {r['diverged']}/{r['seeds']} seeds)" if r.get("diverged") else "")


def markdown(result: dict) -> str:
    suite = result["suite"]
    lines = [
        f"### Suite `{suite['name']}`: {suite['note']}",
        "",
        f"`{result['command']}` — {result['date']}, {result['machine']}, wall time {result['wall_s'] / 60:.1f} min; "
        f"budget {suite['epochs']} epochs per point (Torch-Pruning methods: {suite['epochs'] - suite['finetune_epochs']} "
        f"+ {suite['finetune_epochs']} fine-tuning), seeds {list(suite['seeds'])}. Final-epoch test accuracy (%), "
        "mean ± std over seeds; nothing selected on the test set.",
        *([""] + [f"{result['reused']['points']} of the {len(result['points'])} points are kept from an earlier run "
                  f"(`{result['reused']['command']}`, {result['reused']['date']}; measured on "
                  f"{', '.join(result['reused']['dates'])}); the wall time adds theirs."] if result.get("reused") else []),
        "",
        "| method | target MACs | MACs ↓ | reached/target | acc before removal | acc after removal | final acc | Δ vs dense |"
        " removal drop | speed-up b1 / b64 (eager) | b1 / b64 (ORT) | force overhead |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["summary"]:
        lines.append(
            f"| {r['method']} | {_target_cell(r)} | {fmt_cell(r['macs_reduction'], '{:.1f}×')} | {fmt_cell(r['macs_reached_vs_target'])} "
            f"| {fmt_cell(r['acc_before_removal'])} | {fmt_cell(r['acc_after_removal'])} "
            f"| {_final_cell(r)} | {fmt_cell(r['delta_vs_dense'], '{:+.2f}')} "
            f"| {fmt_cell(r['removal_drop'], '{:+.2f}')} "
            f"| {fmt_cell(r['speedup_eager_b1'], '{:.2f}×')} / {fmt_cell(r['speedup_eager_b64'], '{:.2f}×')} "
            f"| {fmt_cell(r['speedup_ort_b1'], '{:.2f}×')} / {fmt_cell(r['speedup_ort_b64'], '{:.2f}×')} "
            f"| {fmt_cell(r['step_overhead'], '{:+.0%}')} |"
        )
    return "\n".join(lines + [""] + speed_markdown(result["summary"])) + "\n"


def speed_markdown(rows: list[dict]) -> list[str]:
    """The speed table: per batch size, the speed-up in each runtime (dense and pruned in the same
    one), and the deployment view: the dense model in its fastest runtime against the pruned
    model in its fastest, with that speed-up as a fraction of the MACs reduction (1.0 = as fast
    as the MACs say)."""
    lines = ["Speed-up per runtime (dense ms / pruned ms, same process, side by side): "
             + ", ".join(f"*{k}* = {v}" for k, v in RUNTIMES.items())
             + ". *Fastest*: each model in the runtime where it runs fastest; *÷ MACs* = that speed-up divided by "
               "the MACs reduction.", "",
             "| method | target MACs | MACs ↓ | b1: " + " / ".join(RUNTIMES) + " | b1 fastest: dense → pruned ms | ÷ MACs | b64: "
             + " / ".join(RUNTIMES) + " | b64 fastest: dense → pruned ms | ÷ MACs |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["method"] == "dense" or r["macs_reduction"] is None:
            continue
        cells = []
        for b in (1, 64):
            cells.append(" / ".join(fmt_cell(r.get(f"speedup_{k}_b{b}"), "{:.2f}×") for k in RUNTIMES))
            fastest = {m: min(((r[f"{m}_ms_{k}_b{b}"], k) for k in RUNTIMES if r.get(f"{m}_ms_{k}_b{b}") is not None),
                              default=None) for m in ("dense", "pruned")}
            if fastest["dense"] is None or fastest["pruned"] is None:
                cells += ["–", "–"]
                continue
            (d, dk), (p, pk) = fastest["dense"], fastest["pruned"]
            cells += [f"{d:.2f} ({dk}) → {p:.2f} ({pk})", f"{d / p / r['macs_reduction']:.2f}"]
        lines.append(f"| {r['method']} | {_target_cell(r)} | {r['macs_reduction']:.1f}× | " + " | ".join(cells) + " |")
    return lines


def plot(result: dict, path: Path) -> None:
    """Pareto plot: final accuracy against MACs reduction (log scale), one line per method."""
    from forceprune.visual.plots import curve_axes

    rows = result["summary"]
    suite = result["suite"]
    starts = [r for r in rows if r.get("beta") is not None and r["level"] is not None and r["acc_final"] is not None]
    if starts:  # a starting-strength suite: accuracy against the starting beta, one line per law
        with curve_axes(path, title=f"{suite['name']}: {suite['model']} / {suite['dataset']}, final accuracy by starting β",
                        logx=True, xlabel="starting β (log scale)", ylabel="final test accuracy (%)") as ax:
            for method in dict.fromkeys(r["method"] for r in starts):
                pts = sorted((r["beta"], r["acc_final"], r["acc_final_std"] or 0) for r in starts if r["method"] == method)
                xs, ys, es = zip(*pts)
                ax.errorbar(xs, ys, yerr=es, label=method, marker="o", capsize=3)
        return

    def series(r):
        if r.get("beta") is not None:
            return r["method"] + (" (fixed β)" if r["level"] is None else f" (from β={r['beta']:g})")
        return r["method"] + (f" (widths ×{r['round_to']})" if r.get("round_to", 1) > 1 else "")

    with curve_axes(path, title=f"{suite['name']}: {suite['model']} / {suite['dataset']}", logx=True,
                    xlabel="MACs reduction (dense MACs / pruned MACs, log scale)", ylabel="final test accuracy (%)") as ax:
        for name in dict.fromkeys(series(r) for r in rows):
            pts = sorted((r["macs_reduction"], r["acc_final"], r["acc_final_std"] or 0) for r in rows
                         if series(r) == name and r["acc_final"] is not None)
            if not pts:  # every point of this method diverged
                continue
            xs, ys, es = zip(*pts)
            if name == "dense":
                style = {"marker": "*", "markersize": 12, "linestyle": "none"}
            else:
                style = {"marker": "x", "linestyle": "--"} if name.endswith("(fixed β)") else {"marker": "o"}
            ax.errorbar(xs, ys, yerr=es, label=name, capsize=3, **style)
