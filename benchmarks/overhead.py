"""The force's step overhead with the force active, per model and force law.

    python -m benchmarks.overhead [--steps 60] [--threads 2] [--models lenet5,resnet20[,smollm2]] [--output-dir benchmarks/results]

A suite's "force overhead" column is one 20-step measurement at the end of each point's
training; this is the same measurement (:func:`benchmarks.common.step_overhead`: a plain SGD
step against one with ``penalty()`` + ``pruner.step()``, interleaved, medians) with more steps,
repeated, on the models of the suites: LeNet-5 (MNIST shape, batch 128, the headline's 20x
target) and ResNet-20 (CIFAR-10 shape, batch 128, the 3.3x target), channels-last as the
suites train on CPU, for every force law with its suite options; and with ``--models smollm2``
the LLM of ``configs/smollm2_etp.toml`` (its proximal force, activation ranking and batch of 4 x
128 tokens; needs the LLM extra, README). Inputs are random: the compute
of a training step does not depend on the data. The pruner sits mid-training (after the
warm-up, the force on, captures every 10 steps and controller updates where they fall).
Writes ``overhead.json`` and ``overhead.md`` under the output directory and prints the table.
Run it on a quiet machine: it times milliseconds.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from benchmarks.common import machine, step_overhead, write_result
from benchmarks.vision import FORCE_METHODS

ROOT = Path(__file__).resolve().parent
#: model -> (input shape, MACs target, training steps of its suite)
MODELS = {"lenet5": ((1, 28, 28), 0.05, 9380), "resnet20": ((3, 32, 32), 0.3, 474)}


def measure(model_name: str, method: str, steps: int, repeats: int, batch: int = 128) -> dict:
    """Median over ``repeats`` of :func:`step_overhead` (``steps`` steps each) for one model and law."""
    import forceprune as fp
    from forceprune.models import create_model, output_layers

    shape, target, total = MODELS[model_name]
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=10, in_channels=shape[0]).to(memory_format=torch.channels_last)
    x = torch.randn(batch, *shape).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    force, options = FORCE_METHODS[method]
    pruner = fp.ForcePruner(model, x[:1], force, ignored_layers=output_layers(model), target_macs=target,
                            total_steps=total, optimizer=torch.optim.SGD(model.parameters(), lr=0.0), **options)
    pruner.steps = total // 3  # mid-training: past the warm-up, the force on
    task = SimpleNamespace(train_batches=[(x, y)], objective=lambda m, b: (F.cross_entropy(m(b[0]), b[1]),))
    runs = [step_overhead(model, pruner, task, steps=steps) for _ in range(repeats)]
    t0 = time.perf_counter()
    for _ in range(5):
        F.cross_entropy(model(x), y).backward()
    return {"model": model_name, "method": method, "overhead": statistics.median(runs), "runs": runs,
            "unit_sets": len(pruner.unit_sets), "step_ms": (time.perf_counter() - t0) / 5 * 1e3}


def measure_lm(steps: int, repeats: int, config: Path = ROOT.parent / "configs" / "smollm2_etp.toml") -> dict:
    """:func:`measure` for the decoder LM of ``config``: its proximal step (``prox=True``) with the
    pruner calibrated and mid-training, on the config's first training batch."""
    from forceprune.runs import load_config
    from forceprune.runs.lm import LMTask
    from forceprune.runs.stages import build_method, calibrate_method

    cfg = load_config(config)
    task = LMTask(cfg)
    model = task.build_model()
    total = len(task.train_batches)
    pruner = build_method(task, model, total, calibrate=False)
    calibrate_method(task, pruner)
    pruner.attach_optimizer(torch.optim.SGD(model.parameters(), lr=0.0))
    pruner.steps = total // 3
    runs = [step_overhead(model, pruner, task, steps=steps, prox=True) for _ in range(repeats)]
    batch = next(iter(task.train_batches))
    t0 = time.perf_counter()
    for _ in range(3):
        task.objective(model, batch)[0].backward()
    return {"model": "smollm2", "method": f"{cfg.force} ({cfg.force_mode})", "overhead": statistics.median(runs),
            "runs": runs, "unit_sets": len(pruner.unit_sets), "step_ms": (time.perf_counter() - t0) / 3 * 1e3}


def markdown(result: dict) -> str:
    lines = [f"### Force step overhead, force active: `{result['command']}`", "",
             f"{result['date']}, {result['machine']}, {result['steps']} interleaved steps (smollm2: "
             f"{result.get('lm_steps', '-')}) x {result['repeats']} "
             "repeats per row (median of the repeats; each repeat: median forced step / median plain step - 1).", "",
             "| model | method | unit sets | forward + backward ms | overhead | repeats |", "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        runs = " / ".join(f"{v:+.1%}" for v in r["runs"])
        lines.append(f"| {r['model']} | {r['method']} | {r['unit_sets']} | {r['step_ms']:.1f} | "
                     f"**{r['overhead']:+.1%}** | {runs} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--lm-steps", type=int, default=10, help="steps per repeat for smollm2 (~1.5 s a step)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--methods", default=",".join(FORCE_METHODS))
    parser.add_argument("--output-dir", default=str(ROOT / "results"))
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [measure_lm(args.lm_steps, args.repeats) if m == "smollm2" else measure(m, method, args.steps, args.repeats)
            for m in args.models.split(",") for method in (["etp"] if m == "smollm2" else args.methods.split(","))]
    result = {"rows": rows, "steps": args.steps, "lm_steps": args.lm_steps, "repeats": args.repeats, "machine": machine(args.threads),
              "date": time.strftime("%Y-%m-%d"), "command": " ".join(["python -m benchmarks.overhead", *argv])}
    print(write_result(result, Path(args.output_dir), "overhead", markdown))
    return result


if __name__ == "__main__":
    main()
