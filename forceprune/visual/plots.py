"""Matplotlib (Agg) pictures of a run, drawn from the plain data in report.json.

* :func:`plot_force_field` -- unit norm vs distance to the pivot, per unit set, with the
  force weight on a twin axis and captured (exactly zero) units marked.
* :func:`plot_force_history` -- unit norms over epochs as heatmaps for the largest unit sets.
* :func:`plot_widths` -- kept width per layer, before vs after removal.
* :func:`plot_training` -- evaluation accuracy and MACs over the epochs of the run.
* :func:`curve_axes` -- one accuracy-vs-compression panel, for the benchmark suites.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..checkpoint import atomic_write  # noqa: E402

KEPT_COLOR, ZERO_COLOR, WEIGHT_COLOR = "#1f77b4", "#d62728", "#ff7f0e"
BEFORE_COLOR, AFTER_COLOR, DENSE_COLOR = "#c7c7c7", "#2ca02c", "#7f7f7f"
STYLE = {"axes.spines.top": False, "axes.grid": True, "grid.alpha": 0.3, "font.size": 9,
         "axes.titlesize": 10, "axes.titleweight": "bold", "figure.titlesize": 12, "figure.titleweight": "bold"}
DPI = 130


class PlainLogFormatter(matplotlib.ticker.LogFormatter):
    """Log-axis labels as plain numbers (0.2, 3, 40) instead of 2e-01 or 10^x notation."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        return f"{x:g}" if super().__call__(x, pos) else ""


def _save(fig: plt.Figure, path: str | Path) -> Path:
    """Write the figure as a PNG, atomically (a reader never sees half a picture)."""
    try:
        return atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=DPI, facecolor="white"))
    finally:
        plt.close(fig)


@contextmanager
def curve_axes(path: str | Path, *, title: str, xlabel: str, ylabel: str, logx: bool = False) -> Iterator[plt.Axes]:
    """One 7x4.5 in panel to draw curves on; labelled, gridded, legended and saved to ``path`` on exit."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
        yield ax
        if logx:
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(PlainLogFormatter())
            ax.xaxis.set_minor_formatter(PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        _save(fig, path)


def _grid(n: int, max_cols: int, width: float, height: float, **kw) -> tuple[plt.Figure, list[plt.Axes]]:
    cols = min(max_cols, max(n, 1))
    rows = math.ceil(max(n, 1) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False,
                             layout="constrained", **kw)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def plot_force_field(force_field: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Per unit set: unit norm (log) vs distance to the pivot, force weight on a twin axis."""
    with plt.rc_context(STYLE):
        fig, axes = _grid(len(force_field), 3 if len(force_field) <= 12 else 5, 4.6, 3.3)
        for ax, unit_set in zip(axes, force_field):
            _force_panel(ax, unit_set)
        handles = [
            plt.Line2D([], [], marker="o", ls="", color=KEPT_COLOR, label="unit norm (kept)"),
            plt.Line2D([], [], marker="x", ls="", color=ZERO_COLOR, label="captured unit (norm = 0, drawn at the floor)"),
            plt.Line2D([], [], color=WEIGHT_COLOR, label="force weight (right axis)"),
        ]
        fig.legend(handles=handles, loc="outside lower center", ncols=3, frameon=False)
        fig.suptitle(title or "Force field at the end of training")
        return _save(fig, path)


def _force_panel(ax: plt.Axes, unit_set: dict[str, Any]) -> None:
    norms = np.asarray(unit_set["norms"], dtype=float)
    distances = np.asarray(unit_set["distances"], dtype=float)
    weights = np.asarray(unit_set["weights"], dtype=float)
    zero = np.asarray(unit_set["zero"], dtype=bool) | (norms <= 0)
    positive = norms[~zero]
    floor = positive.min() / 3 if positive.size else 1e-8
    ax.scatter(distances[~zero], norms[~zero], s=10, color=KEPT_COLOR, alpha=0.75, linewidths=0)
    ax.scatter(distances[zero], np.full(zero.sum(), floor), s=16, marker="x", color=ZERO_COLOR, linewidths=0.9)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(PlainLogFormatter())
    ax.yaxis.set_minor_formatter(PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(1.5, 0.6)))
    ax.set_xlabel("distance to pivot")
    ax.set_ylabel("unit norm (log scale)")
    ax.set_title(f"{unit_set['name']}  ({(~zero).sum()}/{norms.size} kept)", loc="left")
    twin = ax.twinx()
    order = np.argsort(distances, kind="stable")
    twin.plot(distances[order], weights[order], color=WEIGHT_COLOR, lw=1.6)
    twin.set_ylabel("force weight", color=WEIGHT_COLOR)
    twin.tick_params(axis="y", colors=WEIGHT_COLOR)
    twin.grid(False)
    twin.spines["top"].set_visible(False)


def plot_force_history(history: list[dict[str, Any]], path: str | Path, max_sets: int = 6) -> Path:
    """Heatmaps of log10 unit norm (unit x epoch) for the largest unit sets of the force phase.

    Units are sorted by final norm (captured ones by capture epoch); captured units (norm 0) are black.
    """
    records = [r for r in history if r.get("phase") == "force" and r.get("norms")]
    names = list(records[-1]["norms"]) if records else []
    largest = sorted(names, key=lambda n: -len(records[-1]["norms"][n]))[:max_sets]
    names = [n for n in names if n in largest]
    with plt.rc_context(STYLE):
        fig, axes = _grid(len(names), 3, 4.2, 3.4)
        cmap = plt.get_cmap("viridis").with_extremes(bad="black")
        epochs = [r["epoch"] for r in records]
        for ax, name in zip(axes, names):
            matrix = np.array([r["norms"][name] for r in records], dtype=float).T  # units x epochs
            matrix = matrix[np.lexsort([-column for column in matrix.T])]  # final norm, then capture epoch
            logs = np.ma.masked_less_equal(matrix, 0.0)
            image = ax.imshow(np.ma.log10(logs), aspect="auto", cmap=cmap, interpolation="nearest",
                              extent=(epochs[0] - 0.5, epochs[-1] + 0.5, matrix.shape[0] - 0.5, -0.5))
            fig.colorbar(image, ax=ax, label="log10 unit norm", shrink=0.9)
            ax.set_xlabel("epoch")
            ax.set_ylabel("unit (sorted by final norm)")
            ax.set_title(f"{name}  ({int((matrix[:, -1] > 0).sum())}/{matrix.shape[0]} kept)", loc="left")
            ax.grid(False)
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        if not names:
            fig.text(0.5, 0.5, "no force-phase history recorded", ha="center", va="center")
        fig.suptitle("Unit norms over the epochs of force training (black = captured, exactly 0)")
        return _save(fig, path)


def plot_widths(layers: list[dict[str, Any]], path: str | Path) -> Path:
    """Horizontal bars of width (units) per layer: before removal (grey) vs kept (green)."""
    names = [layer["name"] for layer in layers]
    before = np.array([layer["width_before"] for layer in layers], dtype=float)
    after = np.array([layer["width_after"] for layer in layers], dtype=float)
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.32 * max(len(layers), 1)), layout="constrained")
        y = np.arange(len(layers))
        ax.barh(y, before, color=BEFORE_COLOR, label="before removal", height=0.7)
        ax.barh(y, after, color=AFTER_COLOR, label="kept", height=0.7)
        for yi, b, a in zip(y, before, after):
            ax.text(b, yi, f"  {a:.0f}/{b:.0f} ({100 * a / b if b else 0:.0f}%)", va="center", fontsize=8)
        ax.set_yticks(y, names)
        ax.invert_yaxis()
        ax.set_xlim(0, (before.max() if before.size else 1) * 1.3)
        ax.set_xlabel("width (units: channels or neurons)")
        ax.grid(axis="y", visible=False)
        fig.legend(loc="outside lower center", ncols=2, frameon=False)
        ax.set_title(f"Kept width per layer: {after.sum():.0f} of {before.sum():.0f} units", loc="left")
        return _save(fig, path)


def _accuracy(record: dict[str, Any]) -> float:
    """A history record's evaluation accuracy (``test_acc`` in reports written before 0.2)."""
    return record["eval_acc"] if "eval_acc" in record else record["test_acc"]


def plot_training(history: list[dict[str, Any]], path: str | Path, *, acc_dense: float | None = None,
                  macs_before: float | None = None, macs_after: float | None = None, split: str = "test") -> Path:
    """Accuracy on the evaluation ``split`` (left, %) and MACs if pruned (right) over force
    training and fine-tuning."""
    force = [r for r in history if r.get("phase") == "force"]
    finetune = [r for r in history if r.get("phase") == "finetune"]
    dense = [r for r in history if r.get("phase") == "dense"]
    x_force = [r["epoch"] for r in force]
    x_tune = [len(force) + r["epoch"] for r in finetune]
    scale, unit = _macs_scale(max([macs_before or 0] + [r.get("macs_if_pruned", 0) for r in force]))
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(8, 4.8), layout="constrained")
        if dense:
            ax.plot([r["epoch"] for r in dense], [_accuracy(r) for r in dense], color=DENSE_COLOR, lw=1.2,
                    marker=".", label=f"dense baseline: {split} accuracy")
        if acc_dense is not None:
            ax.axhline(acc_dense, color=DENSE_COLOR, ls=":", lw=1, label=f"dense final {acc_dense:.2f}%")
        ax.plot(x_force, [_accuracy(r) for r in force], color=KEPT_COLOR, marker="o", ms=3,
                label=f"force training: {split} accuracy")
        if finetune:
            ax.plot(x_tune, [_accuracy(r) for r in finetune], color=AFTER_COLOR, marker="o", ms=3,
                    label=f"fine-tuning: {split} accuracy")
        if force:
            ax.axvline(len(force) + 0.5, color="black", ls="--", lw=0.8)
            ax.annotate("units removed", (len(force) + 0.5, 1.0), xycoords=("data", "axes fraction"),
                        ha="right", va="top", rotation=90, fontsize=8)
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{split} accuracy (%)")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        twin = ax.twinx()
        twin.plot(x_force, [r.get("macs_if_pruned", np.nan) / scale for r in force], color=WEIGHT_COLOR,
                  drawstyle="steps-mid", lw=1.6, marker="s", ms=3, label="MACs if pruned (right axis)")
        if macs_after is not None and x_tune:
            twin.plot(x_tune, [macs_after / scale] * len(x_tune), color=WEIGHT_COLOR, lw=1.6, ls="--",
                      marker="s", ms=3, label="MACs after removal")
        if macs_before:
            twin.axhline(macs_before / scale, color=WEIGHT_COLOR, ls=":", lw=0.8, label="dense MACs")
        twin.set_ylim(bottom=0)
        twin.set_ylabel(f"MACs per sample ({unit})", color=WEIGHT_COLOR)
        twin.tick_params(axis="y", colors=WEIGHT_COLOR)
        twin.grid(False)
        lines = ax.get_legend_handles_labels()
        twin_lines = twin.get_legend_handles_labels()
        fig.legend(lines[0] + twin_lines[0], lines[1] + twin_lines[1], loc="outside lower center", ncols=3,
                   fontsize=8, frameon=False)
        ax.set_title("Accuracy and compute over training", loc="left")
        return _save(fig, path)


def _macs_scale(macs: float) -> tuple[float, str]:
    if macs >= 1e9:
        return 1e9, "GMACs"
    if macs >= 1e6:
        return 1e6, "MMACs"
    return 1e3, "KMACs"
