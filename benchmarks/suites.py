"""Which suite a name means: the vision suites (:mod:`benchmarks.vision`), ``sst2``
(:mod:`benchmarks.sst2_suite`) or ``llm`` (:mod:`benchmarks.llm_suite`)."""
from __future__ import annotations

from forceprune.errors import ForcePruneError


def main(suite: str, data_dir: str | None = None, output_dir: str | None = None, **overrides) -> dict:
    """Run ``suite`` and write its JSON, markdown and plot."""
    from . import vision

    if suite == "sst2":
        from .sst2_suite import run_suite

        return run_suite(data_dir=data_dir, output_dir=output_dir, **overrides)
    if suite == "llm":
        from .llm_suite import run_suite as run_llm

        return run_llm(data_dir=data_dir, output_dir=output_dir, **overrides)
    if suite not in vision.SUITES:
        raise ForcePruneError(f"unknown benchmark suite {suite!r}; available: {', '.join(vision.SUITES)}, sst2, llm.")
    return vision.main(suite, data_dir=data_dir, output_dir=output_dir, **overrides)
