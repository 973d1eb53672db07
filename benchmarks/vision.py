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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from forceprune.baselines import METHODS as TP_METHODS
from forceprune.errors import ForcePruneError, NonFiniteError

from .common import machine, step_overhead, write_result
from .vision_report import markdown, plot, summarise, variant_key  # noqa: F401 (the suite's outputs)

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
    start_betas: tuple[float, ...] = ()  # run each force method at each level from each of these starting betas
    round_tos: tuple[int, ...] = ()  # also run each force method at each level with widths rounded to these multiples
    budget: dict = field(default_factory=dict)  # budget controller options of every force method (e.g. reach)
    note: str = ""


CIFAR_CPU = ("ResNet-20 / CIFAR-10 (JPEG-derived copy: compare side by side only); reduced CPU budget: "
             "10,000 training images, 6 epochs per point, full 10,000-image test set")

SUITES: dict[str, Suite] = {
    "quick": Suite("quick", "lenet5", "mnist", epochs=4, levels=(0.2, 0.1, 0.05), seeds=(0,),
                   note="LeNet-5 (Caffe 20-50-500), full MNIST, 4 epochs per point on 2 CPU cores"),
    "headline": Suite("headline", "lenet5", "mnist", epochs=20, levels=(0.05,), seeds=(0,),
                      methods=("dense", "tp_group_norm", "etp_official", "etp"), finetune_epochs=5,
                      note="LeNet-5 / MNIST, the 20-epoch budget of our headline target"),
    "fmnist": Suite("fmnist", "lenet5", "fashion_mnist", epochs=4, levels=(0.3, 0.15, 0.08), seeds=(0,),
                    note="LeNet-5 / Fashion-MNIST, 4 epochs per point"),
    "headline_reach": Suite("headline_reach", "lenet5", "mnist", epochs=20, levels=(0.05,), seeds=(0, 1, 2),
                            methods=("etp",), budget={"reach": 0.5},
                            note="LeNet-5 / MNIST, the headline's 20 epochs, ETP meeting the target by half of "
                                 "training (reach 0.5) instead of 70 %"),
    "cifar": Suite("cifar", "resnet20", "cifar10", epochs=6, levels=(0.3,), seeds=(0, 1, 2),
                   methods=tuple(m for m in ALL_METHODS if m != "etp_official"), finetune_epochs=1, lr=0.1,
                   train_subset=10000, note=CIFAR_CPU + ", 3.3x fewer MACs, 3 seeds"),
    "cifar_levels": Suite("cifar_levels", "resnet20", "cifar10", epochs=6, levels=(0.5, 0.3, 0.2), seeds=(0,),
                          methods=tuple(m for m in ALL_METHODS if m != "etp_official"), finetune_epochs=1, lr=0.1,
                          train_subset=10000, note=CIFAR_CPU + ", three levels, one seed"),
    "cifar_start": Suite("cifar_start", "resnet20", "cifar10", epochs=6, levels=(0.3,), seeds=(0,),
                         methods=("etp", "torque", "electrostatic", "gravity"), lr=0.1, train_subset=10000,
                         start_betas=(1e-3, 1e-2, 1e-1),
                         note=CIFAR_CPU + ": every force law at 3.3x from starting betas spread over 100x"),
    "cifar_speed": Suite("cifar_speed", "resnet20", "cifar10", epochs=6, levels=(0.3,), seeds=(0,), methods=("etp",),
                         lr=0.1, train_subset=10000, round_tos=(4, 8),
                         note=CIFAR_CPU + ": ETP at 3.3x with kept widths rounded to multiples of 1, 4 and 8 (16 cannot reach 3.3x on ResNet-20)"),
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


def main(suite: str, data_dir: str | None = None, output_dir: str | None = None, resume: bool = False,
         **overrides) -> dict:
    """Run the vision suite ``suite`` (a name from :data:`SUITES`) and write its JSON, markdown
    and plot. ``resume``: keep the points of the suite's existing JSON (same budget) and run only
    the missing ones (other seeds or methods, or what a stopped run did not reach)."""
    if suite not in SUITES:
        raise ForcePruneError(f"unknown benchmark suite {suite!r}; available: {', '.join(SUITES)}, sst2.")
    spec = replace(SUITES[suite], **overrides) if overrides else SUITES[suite]
    unknown = sorted(set(spec.methods) - set(ALL_METHODS))
    if unknown:
        raise ForcePruneError(f"unknown methods {unknown}; available: {', '.join(ALL_METHODS)}.")
    out = Path(output_dir or "benchmarks/results")
    earlier = _earlier_run(out / f"{suite}.json", spec) if resume else None
    done = {_point_key(p): p for p in earlier["points"]} if earlier else {}
    started = time.perf_counter()
    command = f"forceprune bench {suite}"
    if data_dir:
        command += f" --data-dir {data_dir}"
    if "seeds" in overrides:
        command += f" --seeds {','.join(map(str, spec.seeds))}"
    if "methods" in overrides:
        command += f" --methods {','.join(spec.methods)}"
    command += " --resume" if resume else ""
    points: list[dict] = []
    result: dict = {}
    for seed in spec.seeds:
        for method in spec.methods:
            for variant in variants(spec, method):
                point = done.get(_point_key({"method": method, "seed": seed, **variant}))
                if point is None:
                    try:
                        point = run_point(spec, method, seed=seed, data_dir=data_dir, **variant)
                    except NonFiniteError as exc:  # a diverged point is a result, not the end of the suite
                        point = {"method": method, "seed": seed, **variant, "diverged": str(exc)}
                    point["date"] = time.strftime("%Y-%m-%d")
                    print(_point_line(point), flush=True)
                points.append(point)
                result = {  # rewritten after every point: a stopped suite keeps what ran
                    "suite": asdict(spec), "points": points, "summary": summarise(points),
                    "wall_s": time.perf_counter() - started + (earlier["wall_s"] if earlier else 0.0),
                    "machine": machine(), "date": time.strftime("%Y-%m-%d"), "command": command,
                    "reused": _reused(points, done, earlier),
                }
                write_result(result, out, suite, markdown, plot)
    return result


def _point_key(p: dict) -> tuple:
    return (*variant_key(p), p["seed"])


#: Suite fields a resumed run may change: which points it has (seeds, methods, variants), not how
#: each point is trained.
RESUMABLE = ("seeds", "methods", "levels", "betas", "start_betas", "round_tos", "note")


def _earlier_run(path: Path, spec: Suite) -> dict | None:
    """The suite's earlier result at ``path`` (None when there is none), checked to be measured
    under the same budget, so that its points can stand next to new ones."""
    if not path.is_file():
        return None
    import json

    earlier = json.loads(path.read_text())
    now = asdict(spec)
    differs = sorted(k for k, v in earlier.get("suite", {}).items()
                     if k not in RESUMABLE and k in now and _listed(v) != _listed(now[k]))
    if differs:
        raise ForcePruneError(
            f"--resume: {path} was measured under another budget ({', '.join(differs)} differ), so its points cannot "
            "be mixed with new ones; move the file away or run without --resume")
    return earlier


def _listed(v):
    return list(v) if isinstance(v, (list, tuple)) else v


def _reused(points: list[dict], done: dict, earlier: dict | None) -> dict | None:
    """Which points a resumed run kept from the earlier one, and that run's command and date."""
    kept = [p for p in points if done.get(_point_key(p)) is p]
    if not kept:
        return None
    return {"points": len(kept), "command": earlier["command"], "date": earlier["date"],
            "dates": sorted({p.get("date", earlier["date"]) for p in kept})}


# -- one point ------------------------------------------------------------------------------------


def variants(spec: Suite, method: str) -> list[dict]:
    """The points one method runs per seed: ``{"level", "beta", "round_to"}`` each. ``level``
    None = no target (a fixed ``beta``); ``beta`` None = the method's own starting strength;
    ``round_to`` 1 = widths not rounded."""
    if method == "dense":
        return [{"level": 1.0, "beta": None, "round_to": 1}]
    if method not in FORCE_METHODS:
        return [{"level": level, "beta": None, "round_to": 1} for level in spec.levels]
    starts = spec.start_betas or (None,)
    out = [{"level": level, "beta": beta, "round_to": 1} for level in spec.levels for beta in starts]
    out += [{"level": level, "beta": None, "round_to": r} for level in spec.levels for r in spec.round_tos if r > 1]
    return out + [{"level": None, "beta": beta, "round_to": 1} for beta in spec.betas]


def _config(spec: Suite, method: str, level: float | None, seed: int, data_dir: str | None, beta: float | None = None,
            round_to: int = 1, output_dir: str = "fp-bench-point"):
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
        latency_batch_sizes=spec.latency_batches, latency_repeats=50, output_dir=output_dir,
        budget={**spec.budget, **({"round_to": round_to} if round_to > 1 else {})},
    )


def run_point(spec: Suite, method: str, level: float | None, seed: int, data_dir: str | None,
              beta: float | None = None, round_to: int = 1) -> dict:
    """Train and prune one (method, MACs level, seed) under the suite's budget. ``beta``: a force
    method's starting strength (with ``level=None``: its fixed strength, no target);
    ``round_to``: kept widths rounded up to a multiple of it."""
    with tempfile.TemporaryDirectory(prefix="fp-bench-") as out:  # the point's run directory, removed after
        config = _config(spec, method, level, seed, data_dir, beta, round_to, output_dir=out)
        return _run_point(config, method, level, seed, beta, round_to)


def _run_point(config, method: str, level: float | None, seed: int, beta: float | None, round_to: int) -> dict:
    from forceprune.baselines import TorchPruningMethod
    from forceprune.runs.pipeline import Run, prune_stage, train_stage
    from forceprune.runs.vision import VisionTask

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
        "method": method, "level": level, "beta": beta, "round_to": round_to, "seed": seed,
        "acc_before_removal": report["acc_before_removal"], "acc_after_removal": report["acc_after_removal"],
        "acc_final": report["acc_final"], "train_s": report["train_wall_s"],
        "macs_before": report["macs_before"], "macs_after": report["macs_after"],
        "params_before": report["params_before"], "params_after": report["params_after"],
        "max_output_error": report["max_output_error"], "macs_reduction": report["macs_reduction"],
        "macs_reached_vs_target": report["macs_after"] / report["macs_before"] / level if level and method != "dense" else None,
        "step_overhead": kept.get("overhead"),
        "widths": {layer["name"]: layer["width_after"] for layer in report.get("layers", [])},  # kept, per unit set
    }
    point["latency"] = None if method == "dense" else latencies(report, kept["dense"], trained.model, task)
    return point


def latencies(report: dict, dense, pruned, task) -> dict:
    """Median ms per forward pass, dense vs pruned: eager in the run's memory format (the
    report's, measured side by side; channels-last for conv models on CPU), eager in the default
    contiguous (NCHW) format when that differs, and ONNX Runtime (on test images)."""
    from forceprune.metrics import side_by_side_latency

    out: dict[str, Any] = {}
    images = task.calibration_inputs
    nchw = [copy.deepcopy(m).to(memory_format=torch.contiguous_format) for m in (dense, pruned)] \
        if task.channels_last else None
    for b, d in report["latency_ms_before"].items():
        p = report["latency_ms_after"][b]
        out[f"eager_b{b}"] = {"dense_ms": d, "pruned_ms": p, "speedup": d / p}
        x = images[torch.arange(int(b)) % len(images)]
        if nchw is not None and x.ndim == 4:
            dn, pn = side_by_side_latency(*nchw, x.contiguous(), **task.latency_settings())
            out[f"nchw_b{b}"] = {"dense_ms": dn, "pruned_ms": pn, "speedup": dn / pn}
        ort = _ort_latency(dense, pruned, x)
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


def _point_line(p: dict) -> str:
    at = f"level {p['level']}" if p.get("level") is not None else "no target"
    if p.get("beta") is not None:
        at += f" beta {p['beta']:g}"
    if p.get("round_to", 1) > 1:
        at += f" widths x{p['round_to']}"
    if p.get("diverged"):
        return f"{p['method']:>14} {at} seed {p['seed']}: diverged ({p['diverged']})"
    return (f"{p['method']:>14} {at} seed {p['seed']}: final {p['acc_final']:.2f}%  "
            f"MACs {p['macs_reduction']:.1f}x  ({p['train_s']:.0f}s)")


