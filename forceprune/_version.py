"""The package version, in a module of its own so that any room can read it without importing
the package face (``forceprune/__init__.py``)."""

__version__ = "0.1.0"


def library_versions() -> dict[str, str]:
    """``{"forceprune", "torch", "torch_pruning"}``: the versions a saved plan records."""
    import torch
    import torch_pruning

    return {"forceprune": __version__, "torch": torch.__version__,
            "torch_pruning": str(getattr(torch_pruning, "__version__", "unknown"))}


def software_versions(device=None) -> dict[str, str]:
    """Versions of the software (and the device) a result was made with, for reports."""
    import platform

    import numpy as np
    import torch

    versions = {**library_versions(), "numpy": np.__version__, "python": platform.python_version(),
                "platform": platform.platform()}
    if device is not None:
        on_cuda = getattr(device, "type", str(device)) == "cuda"
        versions["device"] = torch.cuda.get_device_name(device) if on_cuda else platform.processor() or "cpu"
    return versions
