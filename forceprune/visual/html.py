"""Self-contained HTML report: summary, pictures (embedded as base64 PNG), widths, config, command."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from ..checkpoint import atomic_write

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2rem auto;padding:0 1rem;color:#222}
h1{font-size:1.5rem;margin-bottom:.2rem} h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
.sub{color:#666;margin-top:0} table{border-collapse:collapse;margin:.5rem 0} td,th{padding:.25rem .8rem;border-bottom:1px solid #eee;text-align:right}
td:first-child,th:first-child{text-align:left} th{background:#f6f6f6} .good{color:#2a7d2a;font-weight:600}
img{max-width:100%;border:1px solid #eee;margin:.5rem 0} pre{background:#f6f6f6;padding:.8rem;overflow-x:auto;font-size:.85rem}
.note{color:#666;font-size:.85rem} table.text td{text-align:left}
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _fmt(value: Any, digits: int = 2, suffix: str = "") -> str:
    if value is None:
        return "&ndash;"
    if isinstance(value, float):
        return f"{value:,.{digits}f}{suffix}"
    if isinstance(value, int):
        return f"{value:,}{suffix}"
    return _e(value)


def _ratio(before: float | None, after: float | None) -> str:
    if not before or not after:
        return "&ndash;"
    ratio = before / after
    return f'<span class="good">&times;{ratio:.2f}</span>' if ratio > 1 else f"&times;{ratio:.2f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def summary_rows(report: dict[str, Any]) -> list[list[str]]:
    """Rows (quantity, before, after, change) of the summary table."""
    rows = [
        ["Parameters", _fmt(report.get("params_before")), _fmt(report.get("params_after")),
         _ratio(report.get("params_before"), report.get("params_after"))],
        ["MACs per sample", _fmt(report.get("macs_before")), _fmt(report.get("macs_after")),
         _ratio(report.get("macs_before"), report.get("macs_after"))],
    ]
    if "nonembedding_params_before" in report:
        rows.append(["Non-embedding parameters", _fmt(report["nonembedding_params_before"]),
                     _fmt(report.get("nonembedding_params_after")),
                     _ratio(report["nonembedding_params_before"], report.get("nonembedding_params_after"))])
    after = report.get("latency_ms_after") or {}
    for batch, before in (report.get("latency_ms_before") or {}).items():
        rows.append([f"Latency, batch {_e(batch)} (ms)", _fmt(before, 3), _fmt(after.get(batch), 3),
                     _ratio(before, after.get(batch))])
    decode = (report.get("comparison") or {}).get("decode_tokens_per_s")
    if decode:  # more is better: the ratio is after / before
        rows.append(["Decode tokens/s, batch 1", _fmt(decode.get("dense"), 1), _fmt(decode.get("pruned"), 1),
                     _ratio(decode.get("pruned"), decode.get("dense"))])
    return rows


def quality_section(report: dict[str, Any]) -> str:
    """The quality table: held-out perplexity for a language model, top-1 accuracy otherwise."""
    split = _e(report.get("eval_split", "test"))
    if "ppl_dense" not in report:
        return f"<h2>Accuracy ({split} set, top-1)</h2>" + _table(["Stage", "Accuracy"], accuracy_rows(report))
    stages = [("Dense baseline", "ppl_dense"), ("Force-trained, before removal", "ppl_before_removal"),
              ("After removal (no recovery)", "ppl_after_removal"), (f"Final ({split})", "ppl_final"),
              *[(f"Final ({name})", f"ppl_{name}") for name in report.get("extra_splits", [])]]
    rows = [[label, _fmt(report.get(key), 2)] for label, key in stages if report.get(key) is not None]
    gens = (report.get("comparison") or {}).get("generations") or []
    generations = _table(["Prompt", "Before removal", "Final"],
                         [[_e(g["prompt"]), _e(g.get("dense", "")), _e(g.get("pruned", ""))] for g in gens])
    return ("<h2>Held-out perplexity</h2>" + _table(["Stage", "Perplexity"], rows)
            + ("<h2>Greedy generations</h2>" + generations.replace("<table>", "<table class='text'>", 1) if gens else ""))


def accuracy_rows(report: dict[str, Any]) -> list[list[str]]:
    """Rows (stage, accuracy) of the accuracy table."""
    stages = [("Dense baseline", "acc_dense"), ("Force-trained, before removal", "acc_before_removal"),
              ("After removal (no fine-tuning)", "acc_after_removal"), ("Final", "acc_final"),
              *[(f"Final, on the {name} split", f"acc_{name}") for name in report.get("extra_splits", [])],
              ("Best epoch (reference only, not used for selection)", "acc_best")]
    return [[label, _fmt(report.get(key), 2, " %")] for label, key in stages if report.get(key) is not None]


def render_html(report: dict[str, Any], pictures: dict[str, Path], path: str | Path) -> Path:
    """Write ``report.html`` with every picture embedded; returns its path."""
    title = f"forceprune: {report.get('model')} on {report.get('dataset')}, force {report.get('force')}"
    images = "".join(
        f'<h3>{_e(caption)}</h3><img alt="{_e(caption)}" src="data:image/png;base64,'
        f'{base64.b64encode(Path(file).read_bytes()).decode()}">'
        for caption, file in pictures.items())
    layers = [[_e(l["name"]), _fmt(l["width_before"]), _fmt(l["width_after"]),
               _fmt(100.0 * l["width_after"] / l["width_before"] if l["width_before"] else 0.0, 1, " %")]
              for l in report.get("layers", [])]
    note = report.get("dataset_note")
    error = f"{report['max_output_error']:.3g}" if report.get("max_output_error") is not None else "&ndash;"
    parts = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f"<p class='sub'>force options {_e(json.dumps(report.get('force_options', {})))} &middot; seed {_e(report.get('seed'))}"
        f" &middot; {_e(report.get('epochs'))} force epochs &middot; training time {_fmt(report.get('train_wall_s'), 0, ' s')}"
        f" (sum over epochs) &middot; this command {_fmt(report.get('wall_s'), 0, ' s')}</p>",
        f"<p class='note'>Dataset note: {_e(note)}</p>" if note else "",
        quality_section(report),
        "<h2>Size and speed</h2>", _table(["Quantity", "Before", "After", "Reduction"], summary_rows(report)),
        f"<p class='note'>Max output error of removal (pruned vs unpruned model, same weights): {error}. "
        "Latency: median over repeats, dense and pruned models measured side by side in one process.</p>",
        "<h2>Pictures</h2>", images,
        "<h2>Width per layer</h2>", _table(["Layer", "Before", "After", "Kept"], layers),
        "<h2>Command</h2>", f"<pre>{_e(report.get('command', ''))}</pre>",
        "<h2>Configuration</h2>", f"<pre>{_e(json.dumps(report.get('config', {}), indent=2))}</pre>",
        "<h2>Versions</h2>", f"<pre>{_e(json.dumps(report.get('versions', {}), indent=2))}</pre>",
        "</body></html>",
    ]
    text = "\n".join(p for p in parts if p)
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))
