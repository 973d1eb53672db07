"""Which reading of the inverse-square laws yields a structured tail of zeros?

The gravity and electrostatic papers say far units are pushed to zero, but a literal 1/d^2 is
strongest next to the anchor. This experiment trains LeNet-5 on a 10k-image MNIST subset with
each reading, the same fixed beta and epochs, and measures where the zeros land:

* ``zero``: captured units per unit set;
* ``tail``: the fraction of captured units that form one contiguous block at the far end of the
  channel order (1.0 = a clean tail, removable without any ranking step);
* test accuracy before removal and removal error.

    python benchmarks/force_readings.py [--data-dir D] [--epochs 3] [--subset 10000]

Writes benchmarks/results/force_readings.{json,md}.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import write_result

#: Strengths are set per law so that each zeroes a comparable share of units (gravity's L1 masses
#: make it ~10x stronger than the L2 laws at equal beta); readings of one law share their beta.
READINGS = {
    "etp (reference)": ("etp", {"beta": 0.05}),
    "gravity, from_tail (default)": ("gravity", {"beta": 0.004, "distance": "from_tail"}),
    "gravity, literal 1/d^2": ("gravity", {"beta": 0.004, "distance": "index"}),
    "electrostatic, positional charges (default)": ("electrostatic", {"beta": 0.15, "keep_ratio": 0.3}),
    "electrostatic, positional, literal 1/d^2": ("electrostatic", {"beta": 0.15, "keep_ratio": 0.3, "distance": "index"}),
    "electrostatic, signed-mean charges": ("electrostatic", {"beta": 0.15, "charge": "signed_mean"}),
}


def tail_fraction(zero: list[bool]) -> float:
    """Fraction of zero units inside the longest all-zero block ending at the last index."""
    total = sum(zero)
    if total == 0:
        return float("nan")
    run = 0
    for z in reversed(zero):
        if not z:
            break
        run += 1
    return run / total


def run(name: str, force: str, options: dict, args) -> dict:
    from forceprune.runs import VisionConfig, evaluate
    from forceprune.runs.pipeline import Run, train_stage
    from forceprune.runs.vision import VisionTask

    config = VisionConfig(model="lenet5", dataset="mnist", force=force, force_options=options, data_dir=args.data_dir,
                          epochs=args.epochs, train_subset=args.subset, seed=0, output_dir=tempfile.mkdtemp())
    task = VisionTask(config)
    trained = train_stage(task, Run(Path(config.output_dir), progress=False, checkpoints=False))
    pruner = trained.method
    field = pruner.force_field()
    acc = evaluate(trained.model, task.eval_batches, task.objective).accuracy
    report = pruner.prune(calibration_inputs=task.calibration_inputs)
    return {
        "reading": name, "force": force, "options": options, "acc_before_removal": acc,
        "layers": {f["name"]: {"size": f["size"], "zero": sum(f["zero"]), "tail": tail_fraction(f["zero"]),
                               "zero_pattern": "".join("0" if z else "#" for z in f["zero"])} for f in field},
        "macs_reduction": report.macs_reduction, "max_output_error": report.max_output_error,
    }


def markdown(rows: list[dict], args) -> str:
    lines = [
        "### Which inverse-square reading gives a tail of zeros?",
        "",
        f"`python benchmarks/force_readings.py --epochs {args.epochs} --subset {args.subset}` — LeNet-5, "
        f"{args.subset} MNIST training images, {args.epochs} epochs, seed 0, {time.strftime('%Y-%m-%d')}; beta per law "
        "in `READINGS` (equal across the readings of one law). "
        "`tail` = share of the zeroed units that sit in one contiguous block at the far end; patterns show "
        "conv1 / conv2 units in channel order (`#` kept, `0` zero).",
        "",
        "| reading | zero units conv1 / conv2 / fc1 | tail conv1 / conv2 / fc1 | conv1 pattern | conv2 pattern | acc % | MACs ↓ |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        layers = list(r["layers"].values())
        zeros = " / ".join(f"{l['zero']}/{l['size']}" for l in layers)
        tails = " / ".join("–" if l["tail"] != l["tail"] else f"{l['tail']:.2f}" for l in layers)
        lines.append(f"| {r['reading']} | {zeros} | {tails} | `{layers[0]['zero_pattern']}` | `{layers[1]['zero_pattern']}` "
                     f"| {r['acc_before_removal']:.2f} | {r['macs_reduction']:.1f}× |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--subset", type=int, default=10000)
    parser.add_argument("--output-dir", default="benchmarks/results")
    args = parser.parse_args(argv)
    rows = []
    for name, (force, options) in READINGS.items():
        rows.append(run(name, force, options, args))
        print(f"{name}: {[(k, v['zero'], v['tail']) for k, v in rows[-1]['layers'].items()]}", flush=True)
    print(write_result(rows, Path(args.output_dir), "force_readings", lambda r: markdown(r, args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
