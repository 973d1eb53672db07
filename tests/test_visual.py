"""Pictures and HTML report render from synthetic report data."""

from __future__ import annotations

import base64
import math
import random

from forceprune.visual import PICTURES, render_report


def synthetic_report(epochs: int = 6, finetune: int = 2) -> dict:
    """A report shaped like report.json of a LeNet-5 run, with a force that decays away from the pivot."""
    rng = random.Random(0)
    widths = {"conv1": 20, "conv2": 50, "fc1": 500}
    base = {name: [abs(rng.gauss(1.0, 0.4)) + 0.05 for _ in range(n)] for name, n in widths.items()}
    macs_before = 2_293_000

    def norms_at(epoch: int) -> dict[str, list[float]]:
        out = {}
        for name, values in base.items():
            out[name] = [0.0 if v * math.exp(-epoch * (1.6 - v)) < 0.05 else v * math.exp(-epoch * 0.3 * (1.6 - v))
                         for v in values]
        return out

    history = [{"phase": "dense", "epoch": e, "test_acc": 97.0 + e * 0.25, "train_loss": 0.3 / e} for e in range(1, epochs + 1)]
    for e in range(1, epochs + 1):
        norms = norms_at(e)
        zero = sum(v == 0 for vs in norms.values() for v in vs)
        history.append({"phase": "force", "epoch": e, "test_acc": 96.0 + e * 0.3, "train_loss": 0.4 / e,
                        "macs_if_pruned": int(macs_before * (1 - 0.12 * e)), "units_zero": zero,
                        "units_total": 570, "norms": norms})
    history += [{"phase": "finetune", "epoch": e, "test_acc": 98.6 + 0.1 * e, "train_loss": 0.05} for e in range(1, finetune + 1)]
    final = norms_at(epochs)
    force_field = []
    for name, values in final.items():
        pivot = max(values)
        distances = [abs(pivot - v) / pivot for v in values]
        force_field.append({"name": name, "norms": values, "distances": distances,
                            "weights": [math.exp(-d / 0.3) for d in distances], "zero": [v == 0 for v in values]})
    layers = [{"name": n, "width_before": w, "width_after": sum(v > 0 for v in final[n])} for n, w in widths.items()]
    return {
        "model": "lenet5", "dataset": "mnist", "dataset_note": "byte-identical to the LeCun files",
        "force": "etp", "force_options": {"beta": 5e-4, "norm": "l2"}, "seed": 0, "epochs": epochs,
        "acc_dense": 99.1, "acc_before_removal": 98.8, "acc_after_removal": 98.8, "acc_final": 98.9, "acc_best": 99.0,
        "macs_before": macs_before, "macs_after": int(macs_before * 0.3), "params_before": 431_080,
        "params_after": 60_000, "latency_ms_before": {"1": 0.41, "64": 6.2}, "latency_ms_after": {"1": 0.2, "64": 1.9},
        "max_output_error": 3e-6, "layers": layers, "history": history, "force_field": force_field,
        "wall_s": 83.2, "train_wall_s": 61.0, "command": "forceprune run configs/lenet5_mnist_etp.toml", "config": {"model": "lenet5"},
        "versions": {"torch": "2.13.0"},
    }


def test_render_report_writes_pictures_and_self_contained_html(tmp_path):
    outputs = render_report(synthetic_report(), tmp_path)
    for name in PICTURES.values():
        png = tmp_path / name
        assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    html = (tmp_path / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4
    assert base64.b64encode((tmp_path / "widths.png").read_bytes()).decode()[:200] in html
    assert "&times;7.18" in html and "not used for selection" in html and "lenet5_mnist_etp.toml" in html
    assert "<script" not in html and "src=\"http" not in html
    assert len(outputs) == 5


def test_render_without_pruning_data(tmp_path):
    report = synthetic_report()
    for key in ("force_field", "layers"):
        report.pop(key)
    report["history"] = [r for r in report["history"] if r["phase"] != "force"]
    outputs = render_report(report, tmp_path)
    assert set(outputs) == {"Accuracy and MACs over training", "HTML report"}
