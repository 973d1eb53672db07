"""The report returned by :meth:`ForcePruner.prune`."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class PruneReport:
    """What removal did. MACs are per forward pass of the example inputs (batch of one =
    MACs per sample); ``max_output_error`` is max|y_after - y_before| / max|y_before| on the
    calibration inputs."""

    mode: str
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    max_output_error: float | None  # None: not measured (a baseline that cuts non-zero units)
    layers: list[dict] = field(default_factory=list)  # {"name", "width_before", "width_after"}
    layer_macs: list[dict] = field(default_factory=list)  # {"layer", "macs_before", "macs_after"}
    kept: dict[str, list[int]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def macs_reduction(self) -> float:
        """``macs_before / macs_after`` (the "x-fewer MACs" speed-up of the literature)."""
        return self.macs_before / max(self.macs_after, 1)

    @property
    def params_reduction(self) -> float:
        return self.params_before / max(self.params_after, 1)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["macs_reduction"] = self.macs_reduction
        d["params_reduction"] = self.params_reduction
        return d

    def table(self) -> str:
        """A plain-text per-layer width table with totals."""
        w = max([len(r["name"]) for r in self.layers] + [10])
        lines = [f"{'unit set':<{w}}  {'width':>13}  kept"]
        for r in self.layers:
            lines.append(
                f"{r['name']:<{w}}  {r['width_before']:>5} -> {r['width_after']:<5}  "
                f"{100 * r['width_after'] / max(r['width_before'], 1):5.1f}%"
            )
        lines.append(
            f"MACs {self.macs_before:,} -> {self.macs_after:,} ({self.macs_reduction:.2f}x fewer); "
            f"params {self.params_before:,} -> {self.params_after:,} ({self.params_reduction:.2f}x fewer)"
            + (f"; max output error {self.max_output_error:.2e}" if self.max_output_error is not None else "")
        )
        lines += [f"warning: {m}" for m in self.warnings]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()
