"""MiniLM-L6 on SST-2: dense fine-tuning vs ETP vs linear torque vs torch-pruning group norm,
at matched MACs, on a stated CPU budget.

    python benchmarks/sst2.py                 # ~15-25 min on 2 busy CPU cores
    python benchmarks/sst2.py --smoke         # < 2 min: 256 sentences, a few steps (a plumbing check)

Protocol (every method starts from the same pretrained all-MiniLM-L6-v2 weights, seed 0):

* budget: a random (seeded) subset of SST-2 train (default 8,000 of 67,349 sentences),
  ``E`` epochs with the method (default 1) then ``F`` epochs of plain fine-tuning (0.5),
  AdamW, batch 32, linear warm-up/decay; evaluation on the full dev set (872) and the
  labelled SentEval test set (1,821).
* dense: ``E + F`` epochs, nothing removed.
* ETP: exponential-torque force (ranked pivot, force decoupled from AdamW by a proximal step)
  on heads and FFN neurons for ``E`` epochs; the captured (exactly zero) units are removed
  losslessly; then ``F`` epochs. Its per-layer widths define the MACs target.
* linear torque: same recipe with the linear torque force, then removal down to ETP's
  per-layer widths (keeping the units with the largest force-weighted norms), then ``F``.
* torch-pruning group norm: dense fine-tuning for ``E`` epochs, then torch-pruning's
  ``GroupMagnitudeImportance`` (group L2 norm over Q/K/V/O or up/down projections) keeps
  the strongest units down to ETP's per-layer widths, then ``F``.

The three pruned models therefore have identical shapes (identical MACs): the comparison is
of *which* units each method keeps and how well the rest recovers. MACs are per 64-token
sentence with torch-pruning's counter plus the attention matmuls; latency is the median of a
batch of 32 such sentences, single-threaded, measured side by side with the dense model.

Writes ``benchmarks/results/sst2.json`` and ``sst2.md`` (``--smoke``: ``runs/bench_sst2_smoke/``).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from forceprune.text import run_sst2  # noqa: E402


def _widths(report: dict) -> dict:
    return {r["name"]: r["width_after"] for r in report["removal"]["layers"]}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny budget plumbing check (< 2 min)")
    ap.add_argument("--train-subset", type=int, default=8000)
    ap.add_argument("--epochs", type=float, default=1.0, help="epochs with the method (E)")
    ap.add_argument("--finetune-epochs", type=float, default=0.5, help="plain fine-tuning epochs after removal (F)")
    ap.add_argument("--beta", type=float, default=0.5, help="force strength (ETP and torque)")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for training (1: on a shared 2-core machine ~10x faster than 2, no OpenMP spinning)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--model", default="minilm-l6")
    ap.add_argument("--out", default=None, help="default: benchmarks/results (smoke: runs/bench_sst2_smoke)")
    ap.add_argument("--methods", default="dense,etp,torque,group_norm")
    args = ap.parse_args(argv)

    common = dict(
        model=args.model, dataset="sst2", data_dir=args.data_dir, train_subset=args.train_subset, lr=args.lr,
        finetune_lr=args.lr / 2, batch_size=32, weight_decay=0.01, warmup_ratio=0.06, max_length=128, seed=0,
        macs_seq_len=64, latency_batch=32, latency_repeats=10, capture_every=5, log_every=50, threads=args.threads,
    )
    if args.smoke:
        common.update(train_subset=256, dev_subset=128, eval_test=False, latency_batch=4, latency_repeats=2, log_every=4,
                      warmup_ratio=0.0)
    E, F = args.epochs, args.finetune_epochs
    beta = max(args.beta, 20.0) if args.smoke else args.beta  # smoke: strong enough to remove units in 8 steps
    force_opts = {"beta": beta, "pivot": "ranked", "norm": "l2"}
    root = Path(__file__).resolve().parents[1]
    out = Path(args.out) if args.out else (root / "runs" / "bench_sst2_smoke" if args.smoke else root / "benchmarks" / "results")
    out.mkdir(parents=True, exist_ok=True)
    work = root / "runs" / ("bench_sst2_smoke" if args.smoke else "bench_sst2")  # per-run reports (git-ignored)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    runs: dict[str, dict] = {}
    t0 = time.perf_counter()

    def run(name, cfg):
        print(f"\n=== {name} ===", flush=True)
        runs[name] = run_sst2({**common, **cfg, "name": name}, work / name)

    if "dense" in methods:
        run("dense", {"force": "none", "epochs": E + F})
    widths = None
    if "etp" in methods or any(m in methods for m in ("torque", "group_norm")):
        run("etp", {"force": "etp", "force_options": force_opts, "epochs": E, "finetune_epochs": F})
        widths = _widths(runs["etp"])
    if "torque" in methods:
        run("torque", {"force": "torque", "force_options": force_opts, "epochs": E, "finetune_epochs": F, "widths": widths})
    if "group_norm" in methods:
        run("group_norm", {"force": "tp-group-norm", "epochs": E, "finetune_epochs": F, "widths": widths})

    result = {
        "benchmark": "MiniLM-L6 / SST-2, matched per-layer widths (MACs)",
        "smoke": args.smoke,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
                   f"{args.threads or torch.get_num_threads()} training thread(s)",
        "budget": {"train_subset": common["train_subset"], "epochs_method": E, "epochs_finetune": F,
                   "dev": "full (872)" if not args.smoke else "128", "test": "SentEval labelled (1,821)" if not args.smoke else "none"},
        "seconds": time.perf_counter() - t0,
        "runs": runs,
    }
    suffix = "_smoke" if args.smoke else ""
    (out / f"sst2{suffix}.json").write_text(json.dumps(result, indent=1, default=str))
    (out / f"sst2{suffix}.md").write_text(markdown(result))
    print("\n" + markdown(result))
    return result


def markdown(result: dict) -> str:
    b = result["budget"]
    lines = [
        f"# {result['benchmark']}" + (" (SMOKE: plumbing check only, numbers meaningless)" if result["smoke"] else ""),
        "",
        f"Budget: {b['train_subset']} random SST-2 training sentences (seed 0), {b['epochs_method']} epoch(s) with the "
        f"method + {b['epochs_finetune']} epoch(s) plain fine-tuning after removal (dense: the sum); AdamW, batch 32. "
        f"Dev: {b['dev']}; test: {b['test']}. Machine: {result['machine']}. Total {result['seconds'] / 60:.1f} min; {result['date']}.",
        "MACs per 64-token sentence (torch-pruning counter + attention matmuls); encoder = the 6 transformer layers; "
        "latency = median ms of a batch of 32 such sentences, 1 thread, measured side by side with the unpruned model "
        "of the same run. Pruned models are cut to ETP's per-layer widths, so their MACs match.",
        "",
        "| method | dev acc | test acc | MACs (M) | encoder MACs (M) | x fewer | params (M) | heads per layer | FFN neurons per layer | latency ms (before -> after) | train s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in result["runs"].items():
        test = f"{100 * r['acc_test']:.2f}" if r.get("acc_test") is not None else "-"
        secs = r["train"]["seconds"] + r.get("finetune", {}).get("seconds", 0.0)
        lines.append(
            f"| {name} | {100 * r['acc_dev']:.2f} | {test} | {r['macs_after'] / 1e6:.1f} | {r['encoder_macs_after'] / 1e6:.1f} "
            f"| {r['macs_before'] / max(r['macs_after'], 1):.2f} | {r['params_after'] / 1e6:.2f} | {r['heads_after']} "
            f"| {r['ffn_after']} | {r['latency_ms_before']:.0f} -> {r['latency_ms_after']:.0f} | {secs:.0f} |"
        )
    lines += [
        "",
        "Latency columns compare each pruned model with its own unpruned copy, timed alternately in the same process; "
        "absolute times drift with the load of the shared CPU between rows (the dense row's two numbers are the same model).",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
