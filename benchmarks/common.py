"""What every suite shares: the machine line, table cells and the result files."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch

from forceprune.checkpoint import atomic_write, write_json


def fmt_cell(v, spec="{:.2f}", none="–") -> str:
    """A table cell: ``v`` formatted with ``spec``, or ``none`` when it is missing."""
    return none if v is None else spec.format(v)


def machine(threads: int | None = None) -> str:
    """The machine a suite ran on, for its table header."""
    import platform

    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
            f"{threads or torch.get_num_threads()} thread(s)")


def write_result(result: dict, out: Path, name: str, markdown: Callable[[dict], str],
                 plot: Callable[[dict, Path], None]) -> None:
    """``<name>.json`` (atomic), ``<name>.md`` and ``<name>.png`` under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(result, out / f"{name}.json")
    text = markdown(result)
    atomic_write(out / f"{name}.md", lambda handle: handle.write(text.encode("utf-8")))
    plot(result, out / f"{name}.png")
