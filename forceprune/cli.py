"""The ``forceprune`` command line: run, train, prune, eval, report, config, bench.

User errors (bad config, missing dataset, a run directory in the way, ...) print one
message without a traceback and exit with status 2; Ctrl-C exits with 130 after saying which
checkpoint is intact and how to resume. This is the only module that speaks in flags: the
library's errors say what is wrong, this module adds the command that fixes it.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

EPILOG = """\
examples:
  forceprune run configs/lenet5_mnist_etp.toml
  forceprune run configs/lenet5_mnist_etp.toml --set epochs=3 --set force_options.beta=1e-4
  forceprune run configs/resnet20_cifar10_etp.toml --data-dir /data --output-dir runs/r20 --resume
  forceprune run configs/minilm_sst2_etp.toml
  forceprune train configs/lenet5_mnist_etp.toml --output-dir runs/lenet
  forceprune prune runs/lenet
  forceprune eval runs/lenet
  forceprune report runs/lenet
  forceprune config text_classification
  forceprune bench quick

`forceprune config [TASK]` lists every config key with its default and help;
`--set key=value` takes TOML values (numbers, true/false, [lists], "strings"; bare words are
strings). Data are read from --data-dir, else $FORCEPRUNE_DATA, else ../shared/data beside the
checkout, else ~/.cache/forceprune/data.
"""

EXIT_USAGE, EXIT_INTERRUPTED = 2, 130


def build_parser() -> argparse.ArgumentParser:
    from ._version import __version__

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

    evaluate = command("eval", "Evaluate the final pruned model of a finished run on its evaluation split.",
                       "example:\n  forceprune eval runs/lenet --data-dir /data")
    evaluate.add_argument("run_dir", metavar="RUN_DIR", help="directory of a finished run (holds pruned/)")
    _add_data_dir(evaluate)

    report = command("report", "Re-render the pictures and report.html of a run from its report.json.",
                     "example:\n  forceprune report runs/lenet")
    report.add_argument("run_dir", metavar="RUN_DIR", help="directory holding report.json")

    config = command("config", "List every key of a task's config with its default and help text.",
                     "example:\n  forceprune config text_classification")
    config.add_argument("task", metavar="TASK", nargs="?", default="image_classification",
                        help="image_classification (default), text_classification or language_modeling")

    bench = command("bench", "Run a benchmark suite (benchmarks/ in the source checkout).",
                    "example:\n  forceprune bench quick --output-dir benchmarks/results")
    bench.add_argument("suite", metavar="SUITE",
                       help="benchmark suite: quick, headline, headline_reach, fmnist, cifar, cifar_levels, cifar_start, cifar_speed, "
                            "beta_sweep, sst2, llm, smoke; "
                            "for a GPU: cifar_resnet56, cifar_vgg19 (see benchmarks/vision.py)")
    _add_data_dir(bench)
    bench.add_argument("--output-dir", metavar="DIR", help="where the suite writes <suite>.json, .md and .png (default benchmarks/results)")
    bench.add_argument("--seeds", metavar="LIST", help="comma-separated seeds replacing the suite's, e.g. 0,1,2 (vision suites)")
    bench.add_argument("--methods", metavar="LIST", help="comma-separated methods replacing the suite's, e.g. dense,etp")
    bench.add_argument("--resume", action="store_true",
                       help="vision suites: keep the points of the suite's existing results (same budget) and run only "
                            "the missing ones")
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``forceprune`` command; returns the exit status."""
    from .errors import ForcePruneError

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.command_line = shlex.join(["forceprune", *argv])
    handler: Callable[[argparse.Namespace], int] = {
        "run": cmd_run, "train": cmd_train, "prune": cmd_prune, "eval": cmd_eval, "report": cmd_report,
        "config": cmd_config, "bench": cmd_bench}[args.command]
    try:
        return handler(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except ForcePruneError as exc:
        print(f"forceprune {args.command}: error: {exc}{_hint(exc, args)}", file=sys.stderr)
        return EXIT_USAGE


def _hint(exc: Exception, args: argparse.Namespace) -> str:
    """The command that fixes a run-directory error, in this command line's words."""
    from .runs import RunDirError

    if not isinstance(exc, RunDirError):
        return ""
    where = f"--output-dir {exc.path}"
    return {
        "exists": "; pass --resume to continue it, --overwrite to replace it, or choose another --output-dir",
        "not_a_run": f"; create one with: forceprune train CONFIG {where}",
        "incomplete": f"; continue it with: forceprune train CONFIG {where} --resume",
        "no_checkpoint": f"; train it with: forceprune train CONFIG {where}",
        "not_pruned": f"; remove its units with: forceprune prune {exc.path}",
        "is_file": "; choose a directory with --output-dir",
        "protected": "; choose another --output-dir",
        "not_writable": "; choose another --output-dir",
        "nothing_to_resume": "; start it without --resume",
    }.get(exc.reason, "")


def _load_config(args: argparse.Namespace) -> Any:
    from .runs import load_config

    overrides = list(args.overrides)
    if args.data_dir is not None:
        overrides.append(f"data_dir={json.dumps(args.data_dir)}")
    if args.output_dir is not None:
        overrides.append(f"output_dir={json.dumps(args.output_dir)}")
    if getattr(args, "download", False):
        overrides.append("download=true")
    return load_config(args.config, overrides)


def _interruptible(args: argparse.Namespace, out_dir: str | Path, work: Callable[[], Any]) -> Any:
    """Run ``work()``; on Ctrl-C say which checkpoint is intact and how to resume, then re-raise."""
    from .runs import has_checkpoint, last_checkpoint

    try:
        return work()
    except KeyboardInterrupt:
        words = [w for w in shlex.split(args.command_line) if w not in ("--overwrite", "--resume")]
        if has_checkpoint(out_dir):
            advice = f"Resume with: {shlex.join(words + ['--resume'])}"
        else:
            advice = f"The directory is as it was before. Start again with: {shlex.join(words)}"
        print(f"\nInterrupted. {last_checkpoint(out_dir)}\n{advice}", file=sys.stderr, flush=True)
        raise


def cmd_run(args: argparse.Namespace) -> int:
    from .runs import run

    config = _load_config(args)
    report = _interruptible(args, config.output_dir, lambda: run(
        config, command=args.command_line, config_path=args.config, overwrite=args.overwrite, resume=args.resume,
        progress=not args.quiet))
    print_report(report, Path(config.output_dir))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .runs import train

    config = _load_config(args)
    summary = _interruptible(args, config.output_dir, lambda: train(
        config, command=args.command_line, config_path=args.config, overwrite=args.overwrite, resume=args.resume,
        progress=not args.quiet))
    rows = [("Dense baseline accuracy", _percent(summary["acc_dense"])),
            ("Accuracy after force training", _percent(summary["acc_before_removal"]))]
    if "units_total" in summary:
        rows += [("Captured units", f"{summary['units_zero']:,} / {summary['units_total']:,}"),
                 ("MACs per sample", f"{summary['macs_dense']:,} -> {summary['macs_if_pruned']:,} if pruned")]
    _print_table(f"forceprune train: {config.model} / {config.dataset} / force {config.force}", rows,
                 f"checkpoints in {summary['output_dir']}/checkpoints; next: forceprune prune {summary['output_dir']}")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from .runs import prune

    report = _interruptible(args, args.run_dir, lambda: prune(
        args.run_dir, command=args.command_line, data_dir=args.data_dir, overwrite=args.overwrite,
        resume=args.resume, progress=not args.quiet))
    print_report(report, Path(args.run_dir))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .runs import evaluate_run

    result = evaluate_run(args.run_dir, args.data_dir)
    split = result["eval_split"].replace("_", " ").capitalize()
    rows = [(f"{split} perplexity", f"{result['perplexity']:.3f}")] if "perplexity" in result else []
    _print_table(f"forceprune eval: {args.run_dir}", rows + [
        (f"{split} accuracy (top-1)", f"{result['accuracy']:.2f} %"),
        (f"{split} {'tokens' if 'perplexity' in result else 'samples'}", f"{result['count']:,}"),
        ("MACs per sample", f"{result['macs']:,}"), ("Parameters", f"{result['params']:,}")], "")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .checkpoint import read_json
    from .errors import ForcePruneError
    from .runs.rundir import REPORT_FILE
    from .visual import render_report

    path = Path(args.run_dir) / REPORT_FILE
    if not path.exists():
        raise ForcePruneError(f"{path} does not exist; finish the run first (forceprune run / forceprune prune)")
    report = read_json(path, f"re-create it with: forceprune prune {args.run_dir} --overwrite")
    if not isinstance(report, dict):
        raise ForcePruneError(f"{path} does not hold a report; re-create it with: forceprune prune {args.run_dir} --overwrite")
    for caption, file in render_report(report, args.run_dir).items():
        print(f"{caption}: {file}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    import dataclasses

    from .runs import config_class

    cls = config_class(args.task)
    for f in dataclasses.fields(cls):
        default = "(required)" if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING \
            else repr(f.default if f.default is not dataclasses.MISSING else f.default_factory())
        print(f"{f.name} = {default}\n    {f.metadata['help']}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .errors import ForcePruneError

    suites = _benchmark_suites()
    overrides: dict[str, Any] = {}
    if args.seeds:
        try:
            overrides["seeds"] = tuple(int(v) for v in args.seeds.split(",") if v.strip())
        except ValueError:
            raise ForcePruneError(f"--seeds takes integers separated by commas, got {args.seeds!r}") from None
    if args.methods:
        overrides["methods"] = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    if args.resume:
        if args.suite in ("sst2", "llm"):
            raise ForcePruneError(f"--resume is for the vision suites; the {args.suite} suite starts afresh (run it "
                                  "without --resume)")
        overrides["resume"] = True
    suites.main(args.suite, data_dir=args.data_dir, output_dir=args.output_dir, **overrides)
    return 0


def _benchmark_suites():
    """The ``benchmarks`` package of the source checkout this forceprune runs from."""
    import importlib

    from .errors import ForcePruneError

    root = Path(__file__).resolve().parent.parent
    if not (root / "benchmarks" / "suites.py").is_file():
        raise ForcePruneError("the benchmark suites live in the source checkout (benchmarks/), which this installation "
                              "does not have: clone the repository, pip install -e it, and run forceprune bench there")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return importlib.import_module("benchmarks.suites")


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} %"


def _times(before: float, after: float) -> str:
    return f"x{before / after:.2f}" if after else "-"


def print_report(report: dict[str, Any], out_dir: Path) -> None:
    """Final summary table of a run (rich)."""
    rows = _quality_rows(report) + [
        ("MACs per sample", f"{report['macs_before']:,} -> {report['macs_after']:,}  "
                            f"({_times(report['macs_before'], report['macs_after'])})"),
        ("Parameters", f"{report['params_before']:,} -> {report['params_after']:,}  "
                       f"({_times(report['params_before'], report['params_after'])})"),
    ]
    if "nonembedding_params_before" in report:
        before, after = report["nonembedding_params_before"], report["nonembedding_params_after"]
        rows.append(("Non-embedding parameters", f"{before:,} -> {after:,}  ({_times(before, after)})"))
    decode = (report.get("comparison") or {}).get("decode_tokens_per_s")
    if decode:
        rows.append(("Decode tokens/s, batch 1", f"{decode['dense']:.1f} -> {decode['pruned']:.1f}"))
    for batch, before in report["latency_ms_before"].items():
        after = report["latency_ms_after"][batch]
        rows.append((f"Latency, batch {batch}", f"{before:.3f} -> {after:.3f} ms  ({_times(before, after)})"))
    if report["max_output_error"] is not None:
        rows.append(("Max output error of removal", f"{report['max_output_error']:.2e}"))
    _print_table(f"forceprune: {report['model']} / {report['dataset']} / force {report['force']}", rows,
                 f"report: {out_dir / 'report.html'}")


def _quality_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    """Perplexity rows for a language model, accuracy rows otherwise."""
    split, extra = report.get("eval_split", "test"), report.get("extra_splits", [])
    if "ppl_dense" in report:
        def ppl(v):
            return "-" if v is None else f"{v:.2f}"
        return [("Perplexity: dense baseline", ppl(report["ppl_dense"])),
                ("Perplexity: before removal", ppl(report["ppl_before_removal"])),
                ("Perplexity: after removal", ppl(report["ppl_after_removal"])),
                (f"Perplexity: final ({split})", ppl(report["ppl_final"])),
                *[(f"Perplexity: final ({name})", ppl(report[f"ppl_{name}"])) for name in extra]]
    return [("Accuracy: dense baseline", _percent(report["acc_dense"])),
            ("Accuracy: before removal", _percent(report["acc_before_removal"])),
            ("Accuracy: after removal", _percent(report["acc_after_removal"])),
            (f"Accuracy: final ({split})", _percent(report["acc_final"])),
            *[(f"Accuracy: final ({name})", _percent(report[f"acc_{name}"])) for name in extra],
            ("Accuracy: best epoch (reference, not used)", _percent(report["acc_best"]))]


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
