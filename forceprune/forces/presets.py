"""Named presets: a force plus the capture settings that reproduce a published recipe.

* ``"etp-official"``: the official ETP code (AnonNIPS2025/ETP, ``utils/soloss.py``): L1 norm of
  each conv/linear layer's output rows, per-layer mean, pivot 0, base ``1.01**(500/C)``
  (= exp(4.975/C)), beta 1e-5, and element-wise clipping of |w| < 5e-4 as the only zeroing.
* ``"etp-paper"``: the paper's text: squared L2 norm, ``lambda = exp(5/G)``.
"""
from __future__ import annotations

PRESETS: dict[str, dict] = {
    "etp-official": {
        "force": "etp",
        "force_options": dict(
            beta=1e-5, norm="l1", reduction="mean", pivot=0, include="weights", distance_norm="G", scale=4.975
        ),
        "capture": "element",
        "threshold": 5e-4,
    },
    "etp-paper": {
        "force": "etp",
        "force_options": dict(beta=1e-5, norm="l2sq", reduction="sum", pivot=0, include="weights", distance_norm="G"),
        "capture": "element",
        "threshold": 5e-4,
    },
}
