"""The ``forceprune`` command line: run, train, prune, eval, report, bench.

User errors (bad config, missing dataset, a run directory in the way, ...) print one
message without a traceback and exit with status 2; Ctrl-C exits with 130 after saying how
to resume.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any, Sequence

EPILOG = """\
examples:
  forceprune run configs/lenet5_mnist_etp.toml
  forceprune run configs/lenet5_mnist_etp.toml --set epochs=3 --set force_options.beta=1e-4
  forceprune run configs/resnet20_cifar10_etp.toml --data-dir /data --output-dir runs/r20 --resume
  forceprune train configs/lenet5_mnist_etp.toml --output-dir runs/lenet
  forceprune prune runs/lenet
  forceprune eval runs/lenet
  forceprune report runs/lenet
  forceprune bench quick

Every config key is documented in forceprune/config.py (RunConfig); `--set key=value`
takes TOML values (numbers, true/false, [lists], "strings"; bare words are strings).
Data are read from --data-dir, else $FORCEPRUNE_DATA, else ~/.cache/forceprune/data.
"""

EXIT_USAGE, EXIT_INTERRUPTED = 2, 130


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="forceprune", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Physics-inspired structured pruning: train with a force law, capture exact zeros, "
                    "remove them, report accuracy, MACs and latency.")
    parser.add_argument("--version", action="version", version=f"forceprune {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, epilog: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help, description=help, epilog=epilog,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)

    run = command("run", "Whole pipeline: (dense baseline), force training, removal, (fine-tuning), "
                         "latency; writes report.json, pictures, report.html and the pruned model.",
                  "example:\n  forceprune run configs/lenet5_mnist_etp.toml --set epochs=3")
    train = command("train", "Train with the force (and the dense baseline) and save checkpoints, "
                              "without removing units; finish with `forceprune prune RUN_DIR`.",
                    "example:\n  forceprune train configs/lenet5_mnist_etp.toml --output-dir runs/lenet")
    for sub in (run, train):
        sub.add_argument("config", metavar="CONFIG", help="TOML config file (see configs/)")
        sub.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="override a config key, e.g. --set epochs=3 --set force_options.beta=1e-4")
        _add_data_dir(sub)
        sub.add_argument("--download", action="store_true",
                         help="download the dataset (checksum-verified) if it is missing; needs internet")
        sub.add_argument("--output-dir", metavar="DIR", help="run directory (default: config output_dir)")
        _add_overwrite_resume(sub, "continue an interrupted run from its last checkpoint")
        _add_quiet(sub)

    prune = command("prune", "Load a trained run directory, remove the captured units (then fine-tune if "
                             "configured) and write the report.",
                    "example:\n  forceprune prune runs/lenet")
    prune.add_argument("run_dir", metavar="RUN_DIR", help="directory written by `forceprune train`")
    _add_data_dir(prune)
    _add_overwrite_resume(prune, "continue an interrupted fine-tuning")
    _add_quiet(prune)

    evaluate = command("eval", "Evaluate the final pruned model of a finished run on the test set.",
                       "example:\n  forceprune eval runs/lenet --data-dir /data")
    evaluate.add_argument("run_dir", metavar="RUN_DIR", help="directory of a finished run (holds pruned/)")
    _add_data_dir(evaluate)

    report = command("report", "Re-render the pictures and report.html of a run from its report.json.",
                     "example:\n  forceprune report runs/lenet")
    report.add_argument("run_dir", metavar="RUN_DIR", help="directory holding report.json")

    bench = command("bench", "Run a benchmark suite (forceprune.bench).",
                    "example:\n  forceprune bench quick --output-dir benchmarks/results")
    bench.add_argument("suite", metavar="SUITE",
                       help="benchmark suite: quick, headline, fmnist, cifar, beta_sweep, sst2, smoke; "
                            "for a GPU: cifar_resnet56, cifar_vgg19 (see forceprune.bench.SUITES)")
    _add_data_dir(bench)
    bench.add_argument("--output-dir", metavar="DIR", help="where the suite writes <suite>.json, .md and .png (default benchmarks/results)")
    bench.add_argument("--seeds", metavar="LIST", help="comma-separated seeds replacing the suite's, e.g. 0,1,2 (vision suites)")
    bench.add_argument("--methods", metavar="LIST", help="comma-separated methods replacing the suite's, e.g. dense,etp")
    return parser


def _add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", metavar="DIR", help="dataset root (default: $FORCEPRUNE_DATA, "
                                                          "then ~/.cache/forceprune/data)")


def _add_overwrite_resume(parser: argparse.ArgumentParser, resume_help: str) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--overwrite", action="store_true",
                       help="replace the results already in the run directory (only forceprune's own files)")
    group.add_argument("--resume", action="store_true", help=resume_help)


def _add_quiet(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or per-epoch lines")


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exception types whose message is enough: shown without a traceback."""
    from .config import ConfigError
    from .data import ChecksumError, DatasetNotFoundError
    from .errors import ForcePruneError
    from .models import UnknownModelError
    from .runner import RunDirError

    return ConfigError, RunDirError, DatasetNotFoundError, ChecksumError, ForcePruneError, UnknownModelError


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``forceprune`` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.command_line = shlex.join(["forceprune", *argv])
    handler = {"run": cmd_run, "train": cmd_train, "prune": cmd_prune, "eval": cmd_eval,
               "report": cmd_report, "bench": cmd_bench}[args.command]
    try:
        return handler(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except _user_errors() as exc:
        print(f"forceprune {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _load_config(args: argparse.Namespace) -> Any:
    from .config import load_config

    overrides = list(args.overrides)
    if args.data_dir is not None:
        overrides.append(f"data_dir={json.dumps(args.data_dir)}")
    if args.output_dir is not None:
        overrides.append(f"output_dir={json.dumps(args.output_dir)}")
    if getattr(args, "download", False):
        overrides.append("download=true")
    return load_config(args.config, overrides)


def _text_task(args: argparse.Namespace) -> dict | None:
    """Raw TOML of a text-classification config (``task = "text_classification"``), overrides
    applied; None for vision configs."""
    import tomllib

    try:
        with open(args.config, "rb") as f:
            raw = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError):
        return None  # load_config reports these with its own message
    if raw.get("task") != "text_classification":
        return None
    for item in args.overrides:
        key, _, value = item.partition("=")
        head, dot, tail = key.strip().partition(".")
        from .config import parse_literal

        if dot:
            raw.setdefault(head, {})[tail] = parse_literal(value.strip())
        else:
            raw[head] = parse_literal(value.strip())
    if args.data_dir is not None:
        raw["data_dir"] = args.data_dir
    return raw


def cmd_run(args: argparse.Namespace) -> int:
    from . import runner

    raw = _text_task(args)
    if raw is not None:  # transformers on text: forceprune.text
        from .text import run_text_classification

        out = args.output_dir or raw.get("output_dir")
        if out and Path(out, "report.json").exists() and not args.overwrite:
            raise runner.RunDirError(f"{out} already holds a run; pass --overwrite to replace it")
        report = run_text_classification(raw, out)
        print(json.dumps({k: report.get(k) for k in ("acc_dense", "acc_final", "macs_before", "macs_after")}, indent=1))
        return 0
    report = runner.run(_load_config(args), command=args.command_line, config_path=args.config,
                        overwrite=args.overwrite, resume=args.resume, progress=not args.quiet)
    print_report(report, Path(report["config"]["output_dir"]))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from . import runner

    config = _load_config(args)
    summary = runner.train(config, command=args.command_line, config_path=args.config,
                           overwrite=args.overwrite, resume=args.resume, progress=not args.quiet)
    rows = [("Dense baseline accuracy", _percent(summary["acc_dense"])),
            ("Accuracy after force training", _percent(summary["acc_before_removal"])),
            ("Captured units", f"{summary['units_zero']:,} / {summary['units_total']:,}"),
            ("MACs per sample", f"{summary['macs_dense']:,} -> {summary['macs_if_pruned']:,} if pruned")]
    _print_table(f"forceprune train: {config.model} / {config.dataset} / force {config.force}", rows,
                 f"checkpoints in {summary['output_dir']}/checkpoints; next: forceprune prune {summary['output_dir']}")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from . import runner

    report = runner.prune(args.run_dir, command=args.command_line, data_dir=args.data_dir,
                          overwrite=args.overwrite, resume=args.resume, progress=not args.quiet)
    print_report(report, Path(args.run_dir))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .metrics import count_macs_params
    from .runner import load_pruned_model
    from .train import evaluate

    model, session, channels_last = load_pruned_model(args.run_dir, args.data_dir)
    accuracy = evaluate(model, session.test_loader, session.device, channels_last)
    macs, params = count_macs_params(model, session.example_input.to(session.device))
    _print_table(f"forceprune eval: {args.run_dir}", [
        ("Test accuracy (top-1)", f"{accuracy:.2f} %"),
        ("Test images", f"{len(session.test_loader.dataset):,}"),
        ("MACs per sample", f"{macs:,}"), ("Parameters", f"{params:,}")], "")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .runner import REPORT_FILE, RunDirError
    from .visual import render_report

    path = Path(args.run_dir) / REPORT_FILE
    if not path.exists():
        raise RunDirError(f"{path} does not exist; finish the run first (forceprune run / forceprune prune)")
    outputs = render_report(json.loads(path.read_text(encoding="utf-8")), args.run_dir)
    for caption, file in outputs.items():
        print(f"{caption}: {file}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    try:
        from .bench import main as bench_main
    except ImportError:
        print("forceprune bench: error: benchmarks are not available in this installation "
              "(the forceprune.bench module is missing)", file=sys.stderr)
        return EXIT_USAGE
    from .errors import ForcePruneError

    overrides = {}
    if args.seeds:
        try:
            overrides["seeds"] = tuple(int(v) for v in args.seeds.split(",") if v.strip())
        except ValueError:
            print(f"forceprune bench: error: --seeds takes integers separated by commas, got {args.seeds!r}", file=sys.stderr)
            return EXIT_USAGE
    if args.methods:
        overrides["methods"] = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    try:
        bench_main(args.suite, data_dir=args.data_dir, output_dir=args.output_dir, **overrides)
    except ForcePruneError as exc:
        print(f"forceprune bench: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return 0


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} %"


def _times(before: float, after: float) -> str:
    return f"x{before / after:.2f}" if after else "-"


def print_report(report: dict[str, Any], out_dir: Path) -> None:
    """Final summary table of a run (rich)."""
    rows = [
        ("Accuracy: dense baseline", _percent(report["acc_dense"])),
        ("Accuracy: before removal", _percent(report["acc_before_removal"])),
        ("Accuracy: after removal", _percent(report["acc_after_removal"])),
        ("Accuracy: final", _percent(report["acc_final"])),
        ("Accuracy: best epoch (reference, not used)", _percent(report["acc_best"])),
        ("MACs per sample", f"{report['macs_before']:,} -> {report['macs_after']:,}  "
                            f"({_times(report['macs_before'], report['macs_after'])})"),
        ("Parameters", f"{report['params_before']:,} -> {report['params_after']:,}  "
                       f"({_times(report['params_before'], report['params_after'])})"),
    ]
    for batch, before in report["latency_ms_before"].items():
        after = report["latency_ms_after"][batch]
        rows.append((f"Latency, batch {batch}", f"{before:.3f} -> {after:.3f} ms  ({_times(before, after)})"))
    rows.append(("Max output error of removal", f"{report['max_output_error']:.2e}"))
    _print_table(f"forceprune: {report['model']} / {report['dataset']} / force {report['force']}", rows,
                 f"report: {out_dir / 'report.html'}")


def _print_table(title: str, rows: list[tuple[str, str]], caption: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, caption=caption or None, show_header=False, title_style="bold")
    table.add_column(style="cyan")
    table.add_column(justify="right")
    for name, value in rows:
        table.add_row(name, value)
    Console().print(table)


if __name__ == "__main__":
    sys.exit(main())
