"""The package version, in a module of its own so that any room can read it without importing
the package face (``forceprune/__init__.py``)."""

__version__ = "0.1.0"


def software_versions(device=None) -> dict[str, str]:
    """Versions of the software (and the device) a result was made with, for reports and plans."""
    import platform

    import numpy as np
    import torch
    import torch_pruning

    versions = {"forceprune": __version__, "torch": torch.__version__,
                "torch_pruning": str(getattr(torch_pruning, "__version__", "unknown")), "numpy": np.__version__,
                "python": platform.python_version(), "platform": platform.platform()}
    if device is not None:
        on_cuda = getattr(device, "type", str(device)) == "cuda"
        versions["device"] = torch.cuda.get_device_name(device) if on_cuda else platform.processor() or "cpu"
    return versions
