"""The vision suites: every method, the same budget, the same seeds.

``forceprune bench SUITE`` trains and prunes each method of the suite at each MACs level and
seed, under one training budget (same model, data, epochs, optimizer, seeds), through the run
pipeline (:mod:`forceprune.runs.pipeline`), and writes ``<out>/<suite>.json``,
``<out>/<suite>.md`` and ``<out>/<suite>.png`` (accuracy against MACs reduction). Force methods
reach each level through the budget controller (no beta search); Torch-Pruning's methods reach
it with their own progressive loop (:class:`forceprune.baselines.TorchPruningMethod`).
Accuracies are final-epoch test accuracies: nothing is selected on the test set.

Per point: accuracy dense / just before removal / just after removal / final, MACs and params,
CPU latency at batch 1 and 64 in eager PyTorch and ONNX Runtime (dense and pruned measured side
by side in one process, median of rounds), the force's step-time overhead, and the MACs reached
against the MACs requested.
"""
from __future__ import annotations

import copy
import math
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from forceprune.baselines import METHODS as TP_METHODS
from forceprune.errors import ForcePruneError, NonFiniteError

from .common import fmt_cell, machine, step_overhead, write_result

FORCE_METHODS = {
    "etp": ("etp", {"beta": 1e-2, "norm": "l2"}),
    "etp_official": ("etp-official", {}),
    "torque": ("torque", {"beta": 1e-2, "norm": "l2"}),
    "electrostatic": ("electrostatic", {"beta": 1e-2, "norm": "l2"}),
    "gravity": ("gravity", {"beta": 1e-2}),
}
ALL_METHODS = ("dense",) + TP_METHODS + tuple(FORCE_METHODS)


@dataclass(frozen=True)
class Suite:
    """One benchmark: model, data and the shared training budget."""

    name: str
    model: str
    dataset: str
    epochs: int  # total training epochs per point, for every method
    levels: tuple[float, ...]  # kept MACs fractions (0.1 = 10x fewer)
    seeds: tuple[int, ...] = (0,)
    methods: tuple[str, ...] = ALL_METHODS
    finetune_epochs: int = 1  # of `epochs`, spent fine-tuning by Torch-Pruning's methods
    lr: float = 0.05
    batch_size: int = 128
    weight_decay: float = 5e-4
    train_subset: int = 0
    test_subset: int = 0
    latency_batches: tuple[int, ...] = (1, 64)
    betas: tuple[float, ...] = ()  # also run each force method at these fixed betas, no target (a hand-tuning sweep)
    note: str = ""


SUITES: dict[str, Suite] = {
    "quick": Suite("quick", "lenet5", "mnist", epochs=4, levels=(0.2, 0.1, 0.05), seeds=(0,),
                   note="LeNet-5 (Caffe 20-50-500), full MNIST, 4 epochs per point on 2 CPU cores"),
    "headline": Suite("headline", "lenet5", "mnist", epochs=20, levels=(0.05,), seeds=(0,),
                      methods=("dense", "tp_group_norm", "etp_official", "etp"), finetune_epochs=5,
                      note="LeNet-5 / MNIST, the 20-epoch budget of our headline target"),
    "fmnist": Suite("fmnist", "lenet5", "fashion_mnist", epochs=4, levels=(0.3, 0.15, 0.08), seeds=(0,),
                    note="LeNet-5 / Fashion-MNIST, 4 epochs per point"),
    "cifar": Suite("cifar", "resnet20", "cifar10", epochs=6, levels=(0.5, 0.3, 0.2), seeds=(0,),
                   methods=tuple(m for m in ALL_METHODS if m != "etp_official"), finetune_epochs=1, lr=0.1,
                   train_subset=10000,
                   note="ResNet-20 / CIFAR-10 (JPEG-derived copy: compare side by side only); reduced CPU budget: "
                        "10,000 training images, 6 epochs per point, full 10,000-image test set"),
    "cifar_resnet56": Suite("cifar_resnet56", "resnet56", "cifar10", epochs=160, levels=(0.5, 0.3, 0.2), seeds=(0, 1, 2),
                            methods=tuple(m for m in ALL_METHODS if m != "etp_official"), finetune_epochs=40, lr=0.1,
                            note="ResNet-56 / CIFAR-10 (JPEG-derived copy), the papers' 160-epoch budget: for a GPU"),
    "cifar_vgg19": Suite("cifar_vgg19", "vgg19_bn", "cifar10", epochs=160, levels=(0.5, 0.3, 0.2), seeds=(0, 1, 2),
                         methods=tuple(m for m in ALL_METHODS if m != "etp_official"), finetune_epochs=40, lr=0.1,
                         note="VGG-19-BN / CIFAR-10 (JPEG-derived copy), the papers' 160-epoch budget: for a GPU"),
    "beta_sweep": Suite("beta_sweep", "lenet5", "mnist", epochs=4, levels=(0.2, 0.1, 0.05), seeds=(0,), methods=("etp",),
                        betas=(5e-3, 1e-2, 2e-2, 4e-2, 8e-2),
                        note="LeNet-5 / MNIST, 4 epochs: ETP through the budget controller vs ETP at hand-picked fixed betas"),
    "smoke": Suite("smoke", "lenet5", "mnist", epochs=1, levels=(0.5,), seeds=(0,), methods=("tp_group_norm", "etp"),
                   finetune_epochs=0, train_subset=1024, test_subset=512, latency_batches=(1,), betas=(0.5,),
                   note="harness self-test: 1 epoch on 1k images"),
}


def main(suite: str, data_dir: str | None = None, output_dir: str | None = None, **overrides) -> dict:
    """Run the vision suite ``suite`` (a name from :data:`SUITES`) and write its JSON, markdown and plot."""
    if suite not in SUITES:
        raise ForcePruneError(f"unknown benchmark suite {suite!r}; available: {', '.join(SUITES)}, sst2.")
    spec = replace(SUITES[suite], **overrides) if overrides else SUITES[suite]
    unknown = sorted(set(spec.methods) - set(ALL_METHODS))
    if unknown:
        raise ForcePruneError(f"unknown methods {unknown}; available: {', '.join(ALL_METHODS)}.")
    started = time.perf_counter()
    command = f"forceprune bench {suite}"
    if data_dir:
        command += f" --data-dir {data_dir}"
    if "seeds" in overrides:
        command += f" --seeds {','.join(map(str, spec.seeds))}"
    if "methods" in overrides:
        command += f" --methods {','.join(spec.methods)}"
    points: list[dict] = []
    result: dict = {}
    for seed in spec.seeds:
        for method in spec.methods:
            runs = [(1.0, None)] if method == "dense" else [(level, None) for level in spec.levels]
            if method in FORCE_METHODS:
                runs += [(None, beta) for beta in spec.betas]
            for level, beta in runs:
                try:
                    point = run_point(spec, method, level, seed, data_dir, beta=beta)
                except NonFiniteError as exc:  # a diverged point is a result, not the end of the suite
                    point = {"method": method, "level": level, "seed": seed, "beta": beta, "diverged": str(exc)}
                points.append(point)
                print(_point_line(point), flush=True)
                result = {  # rewritten after every point: a stopped suite keeps what ran
                    "suite": asdict(spec), "points": points, "summary": summarise(points),
                    "wall_s": time.perf_counter() - started, "machine": machine(), "date": time.strftime("%Y-%m-%d"),
                    "command": command,
                }
                write_result(result, Path(output_dir or "benchmarks/results"), suite, markdown, plot)
    return result


# -- one point ------------------------------------------------------------------------------------


def _config(spec: Suite, method: str, level: float | None, seed: int, data_dir: str | None, beta: float | None = None):
    from forceprune.runs import VisionConfig

    force, options = FORCE_METHODS.get(method, ("none", {}))
    if method == "electrostatic" and level is not None:  # positional charges: the repelled side must be large enough
        options = {**options, "keep_ratio": round(max(0.05, 0.8 * math.sqrt(level)), 3)}
    if beta is not None:
        options = {**options, "beta": beta}
    is_tp = method in TP_METHODS
    return VisionConfig(
        model=spec.model, dataset=spec.dataset, force=force, force_options=options, data_dir=data_dir,
        epochs=spec.epochs - (spec.finetune_epochs if is_tp else 0), lr=spec.lr, batch_size=spec.batch_size,
        weight_decay=spec.weight_decay, seed=seed, train_subset=spec.train_subset, test_subset=spec.test_subset,
        target_macs=level if method in FORCE_METHODS else None, finetune_epochs=spec.finetune_epochs if is_tp else 0,
        latency_batch_sizes=spec.latency_batches, latency_repeats=50, output_dir=tempfile.mkdtemp(prefix="fp-bench-"),
    )


def run_point(spec: Suite, method: str, level: float | None, seed: int, data_dir: str | None,
              beta: float | None = None) -> dict:
    """Train and prune one (method, MACs level, seed) under the suite's budget; with ``beta``
    (and ``level=None``) a force method runs at that fixed strength with no target."""
    from forceprune.baselines import TorchPruningMethod
    from forceprune.runs.pipeline import Run, prune_stage, train_stage
    from forceprune.runs.vision import VisionTask

    config = _config(spec, method, level, seed, data_dir, beta)
    task = VisionTask(config)
    run = Run(Path(config.output_dir), progress=False, checkpoints=False)
    def tp_method(task_, model, total_steps):
        return TorchPruningMethod(model, task_.example_inputs, method, target_macs=level, **task_.method_options(model))

    factory = tp_method if method in TP_METHODS else None
    kept: dict[str, Any] = {}

    def before_removal(model, pruner) -> None:
        if method in FORCE_METHODS:
            kept["overhead"] = step_overhead(model, pruner, task)
        kept["dense"] = copy.deepcopy(model)

    trained = train_stage(task, run, method_factory=factory)
    report = prune_stage(task, run, trained, write=False, before_removal=before_removal)  # prunes trained.model in place
    point: dict[str, Any] = {
        "method": method, "level": level, "beta": beta, "seed": seed,
        "acc_before_removal": report["acc_before_removal"], "acc_after_removal": report["acc_after_removal"],
        "acc_final": report["acc_final"], "train_s": report["train_wall_s"],
        "macs_before": report["macs_before"], "macs_after": report["macs_after"],
        "params_before": report["params_before"], "params_after": report["params_after"],
        "max_output_error": report["max_output_error"], "macs_reduction": report["macs_reduction"],
        "macs_reached_vs_target": report["macs_after"] / report["macs_before"] / level if level and method != "dense" else None,
        "step_overhead": kept.get("overhead"),
    }
    point["latency"] = None if method == "dense" else latencies(report, kept["dense"], trained.model, task)
    return point


def latencies(report: dict, dense, pruned, task) -> dict:
    """Median ms per forward pass, dense vs pruned: eager (the report's, measured side by side)
    and ONNX Runtime (on test images)."""
    out: dict[str, Any] = {}
    images = task.calibration_inputs
    for b, d in report["latency_ms_before"].items():
        p = report["latency_ms_after"][b]
        out[f"eager_b{b}"] = {"dense_ms": d, "pruned_ms": p, "speedup": d / p}
        ort = _ort_latency(dense, pruned, images[torch.arange(int(b)) % len(images)])
        if ort is not None:
            out[f"ort_b{b}"] = ort
    return out


def _ort_latency(dense, pruned, x) -> dict | None:
    try:
        import onnxruntime as ort

        from forceprune.export import export_onnx
    except ImportError:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        sessions = {}
        for name, model in (("dense", dense), ("pruned", pruned)):
            path = os.path.join(tmp, f"{name}.onnx")
            export_onnx(copy.deepcopy(model).float().to(memory_format=torch.contiguous_format).cpu(), x.cpu(), path,
                        check=False, dynamo=False)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = torch.get_num_threads()
            sessions[name] = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        feed = x.cpu().numpy()
        for sess in sessions.values():
            inp = sess.get_inputs()[0].name
            for _ in range(5):
                sess.run(None, {inp: feed})
        rounds: dict[str, list[float]] = {"dense": [], "pruned": []}
        for _ in range(5):
            for name, sess in sessions.items():
                inp = sess.get_inputs()[0].name
                ts = []
                for _ in range(10):
                    t0 = time.perf_counter()
                    sess.run(None, {inp: feed})
                    ts.append((time.perf_counter() - t0) * 1e3)
                rounds[name].append(statistics.median(ts))
        times = {k: statistics.median(v) for k, v in rounds.items()}
    return {"dense_ms": times["dense"], "pruned_ms": times["pruned"], "speedup": times["dense"] / times["pruned"]}


# -- aggregation and output -----------------------------------------------------------------------


def summarise(points: list[dict]) -> list[dict]:
    """Mean and standard deviation over seeds, per (method, level)."""
    groups: dict[tuple, list[dict]] = {}
    for p in points:
        groups.setdefault((p["method"], p["level"], p.get("beta")), []).append(p)
    dense_acc = [p["acc_final"] for p in points if p["method"] == "dense"]
    dense_mean = statistics.mean(dense_acc) if dense_acc else None
    rows = []
    for (method, level, beta), ps in groups.items():
        row = {"method": method, "level": level, "beta": beta, "seeds": len(ps)}
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
        for lat in ("eager_b1", "eager_b64", "ort_b1", "ort_b64"):
            vals = [p["latency"][lat]["speedup"] for p in ps if p.get("latency") and lat in p["latency"]]
            row[f"speedup_{lat}"] = statistics.mean(vals) if vals else None
        rows.append(row)
    return rows


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
        "",
        "| method | target MACs | MACs ↓ | reached/target | acc before removal | acc after removal | final acc | Δ vs dense |"
        " removal drop | speed-up b1 / b64 (eager) | b1 / b64 (ORT) | force overhead |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["summary"]:
        if r.get("beta") is not None:
            target = f"none (fixed β={r['beta']:g})"
        else:
            target = "dense" if r["method"] == "dense" else f"{r['level']:.3g} ({1 / r['level']:.0f}×)"
        lines.append(
            f"| {r['method']} | {target} | {fmt_cell(r['macs_reduction'], '{:.1f}×')} | {fmt_cell(r['macs_reached_vs_target'])} "
            f"| {fmt_cell(r['acc_before_removal'])} | {fmt_cell(r['acc_after_removal'])} "
            f"| {_final_cell(r)} | {fmt_cell(r['delta_vs_dense'], '{:+.2f}')} "
            f"| {fmt_cell(r['removal_drop'], '{:+.2f}')} "
            f"| {fmt_cell(r['speedup_eager_b1'], '{:.2f}×')} / {fmt_cell(r['speedup_eager_b64'], '{:.2f}×')} "
            f"| {fmt_cell(r['speedup_ort_b1'], '{:.2f}×')} / {fmt_cell(r['speedup_ort_b64'], '{:.2f}×')} "
            f"| {fmt_cell(r['step_overhead'], '{:+.0%}')} |"
        )
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    """Pareto plot: final accuracy against MACs reduction (log scale), one line per method."""
    from forceprune.visual.plots import curve_axes

    rows = result["summary"]

    def series(r):
        return r["method"] + (" (fixed β)" if r.get("beta") is not None else "")

    suite = result["suite"]
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


def _point_line(p: dict) -> str:
    at = f"beta {p['beta']:<6g}" if p.get("beta") is not None else f"level {p['level']:<5}"
    if p.get("diverged"):
        return f"{p['method']:>14} {at} seed {p['seed']}: diverged ({p['diverged']})"
    return (f"{p['method']:>14} {at} seed {p['seed']}: final {p['acc_final']:.2f}%  "
            f"MACs {p['macs_reduction']:.1f}x  ({p['train_s']:.0f}s)")


