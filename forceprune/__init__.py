"""forceprune: physics-inspired structured pruning for PyTorch.

    import forceprune as fp
    pruner = fp.ForcePruner(model, example_inputs, force="etp", beta=1e-4)
    loss = task_loss + pruner.penalty()
    optimizer.step(); pruner.step()
    report = pruner.prune()
"""
from . import forces
from . import attention  # noqa: F401  (registers the attention-head / FFN-neuron unit provider)
from .errors import ForcePruneError, NonFiniteError, UnknownForceError
from .removal import LossyRemovalError
from .metrics import count_macs_params, layer_macs, measure_latency
from .pruner import ForcePruner
from .report import PruneReport

from ._version import __version__

from . import distributed, optim_state, plan  # noqa: E402  (heavy dependencies load lazily)
from .budget import Budget  # noqa: E402
from .export import export_onnx  # noqa: E402
from .plan import load_pruned, make_plan, save_pruned  # noqa: E402

__all__ = [
    "ForcePruner",
    "PruneReport",
    "ForcePruneError",
    "NonFiniteError",
    "UnknownForceError",
    "LossyRemovalError",
    "count_macs_params",
    "layer_macs",
    "measure_latency",
    "forces",
    "Budget",
    "export_onnx",
    "make_plan",
    "save_pruned",
    "load_pruned",
    "__version__",
]
