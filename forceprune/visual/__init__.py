"""Pictures and the HTML report of a run, rendered from the report dict (report.json)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .html import render_html
from .plots import plot_force_field, plot_force_history, plot_training, plot_widths

PICTURES = {
    "force_field": "force_field.png",
    "force_field_epochs": "force_field_epochs.png",
    "widths": "widths.png",
    "training": "training.png",
}


def render_pictures(report: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Draw every picture the report has data for; returns {caption: path}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    title = f"Force field at the end of training: {report.get('model')}, force {report.get('force')}"
    pictures = {}
    if report.get("force_field"):
        pictures["Force field at the end of training"] = plot_force_field(
            report["force_field"], out_dir / PICTURES["force_field"], title)
    if any(r.get("norms") for r in report.get("history", [])):
        pictures["Unit norms over epochs"] = plot_force_history(report["history"], out_dir / PICTURES["force_field_epochs"])
    if report.get("layers"):
        pictures["Kept width per layer"] = plot_widths(report["layers"], out_dir / PICTURES["widths"])
    if report.get("history"):
        pictures["Accuracy and MACs over training"] = plot_training(
            report["history"], out_dir / PICTURES["training"], acc_dense=report.get("acc_dense"),
            macs_before=report.get("macs_before"), macs_after=report.get("macs_after"),
            split=report.get("eval_split", "test"))
    return pictures


def render_report(report: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write the pictures and ``report.html`` into ``out_dir``; returns {name: path}."""
    pictures = render_pictures(report, out_dir)
    html_path = render_html(report, pictures, Path(out_dir) / "report.html")
    return {**pictures, "HTML report": html_path}


__all__ = ["PICTURES", "render_pictures", "render_report", "render_html",
           "plot_force_field", "plot_force_history", "plot_widths", "plot_training"]
