"""Export a (pruned) model to ONNX and check it against PyTorch with onnxruntime.

    info = fp.export_onnx(model, example_inputs, "model.onnx")   # {"max_abs_diff": ..., ...}

The export runs in eval mode on the example inputs' shapes (fixed shapes). The file is
written to a temporary name beside ``path``, checked, then renamed into place
(:func:`forceprune.checkpoint.atomic_path`), so an error leaves an existing file untouched;
an existing ``path`` is refused unless ``overwrite=True``.
Weights are embedded in the one ``.onnx`` file (no external-data side file).

Requires ``onnx`` (and ``onnxscript`` for the dynamo exporter); the check needs ``onnxruntime``.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from ._torch import eval_mode, flatten_tensors, run_model
from .checkpoint import atomic_path
from .errors import ForcePruneError

__all__ = ["export_onnx"]


def _split_inputs(example_inputs) -> tuple[tuple, dict]:
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (list, tuple)):
        return tuple(example_inputs), {}
    return (example_inputs,), {}


def _export(model, args, kwargs, tmp: Path, dynamo: bool, opset_version: int | None) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            program = torch.onnx.export(
                model, args, kwargs=kwargs or None, dynamo=True, opset_version=opset_version, verbose=False
            )
            program.save(str(tmp), external_data=False)
        else:
            torch.onnx.export(
                model, args, str(tmp), kwargs=kwargs or None, dynamo=False, opset_version=opset_version
            )


def _check(tmp: Path, args, kwargs, expected) -> float:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ForcePruneError("check=True needs onnxruntime: pip install onnxruntime (or pass check=False).") from exc
    session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    flat = [t for t in flatten_tensors(list(args) + list(kwargs.values())) if torch.is_tensor(t)]
    names = [i.name for i in session.get_inputs()]
    if len(names) != len(flat):  # the exporter may drop inputs the graph does not use
        by_name = {**{k: v for k, v in kwargs.items() if torch.is_tensor(v)}}
        feed = {n: by_name[n].detach().cpu().numpy() for n in names if n in by_name}
        if len(feed) != len(names):
            raise ForcePruneError(
                f"the ONNX graph takes inputs {names} but {len(flat)} example tensors were given; "
                "pass check=False to skip the onnxruntime comparison."
            )
    else:
        feed = {n: t.detach().cpu().numpy() for n, t in zip(names, flat)}
    outputs = session.run(None, feed)
    if len(outputs) != len(expected):
        raise ForcePruneError(f"the ONNX model has {len(outputs)} outputs but PyTorch returns {len(expected)}.")
    diff = 0.0
    for got, want in zip(outputs, expected):
        got_t = torch.as_tensor(got)
        if tuple(got_t.shape) != tuple(want.shape):
            raise ForcePruneError(
                f"an ONNX output has shape {tuple(got_t.shape)} but PyTorch's has {tuple(want.shape)}."
            )
        if want.numel():
            diff = max(diff, float((got_t.double() - want.detach().cpu().double()).abs().max()))
    return diff


def export_onnx(
    model: nn.Module,
    example_inputs,
    path: str | os.PathLike,
    check: bool = True,
    overwrite: bool = False,
    dynamo: bool | None = None,
    opset_version: int | None = None,
    rtol: float = 1e-4,
    atol: float = 1e-5,
) -> dict:
    """Export ``model`` to ONNX at ``path`` and (``check=True``) compare onnxruntime's outputs
    with PyTorch's on ``example_inputs``.

    Args:
        example_inputs: a tensor, a tuple of positional args or a dict of keyword args.
        dynamo: ``True``: the torch.export-based exporter; ``False``: the legacy TorchScript
            exporter; ``None`` (default): dynamo, falling back to legacy if it fails.
        rtol, atol: the check fails (nothing is written) when
            ``max_abs_diff > atol + rtol * max|y|``.

    Returns ``{"path", "exporter", "max_abs_diff", "max_abs_output"}`` (diffs are ``None``
    without the check).
    """
    if not isinstance(model, nn.Module):
        raise ForcePruneError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    path = Path(path)
    if path.exists() and not overwrite:
        raise ForcePruneError(f"{str(path)!r} already exists; pass overwrite=True to replace it or choose another path.")
    if path.exists() and not path.is_file():
        raise ForcePruneError(f"{str(path)!r} exists and is not a file; choose another path.")
    try:
        import onnx  # noqa: F401
    except ImportError as exc:
        raise ForcePruneError("ONNX export needs the onnx package: pip install onnx onnxscript onnxruntime.") from exc
    args, kwargs = _split_inputs(example_inputs)
    with eval_mode(model), torch.no_grad():
        try:
            expected = flatten_tensors(run_model(model, example_inputs))
        except Exception as exc:
            raise ForcePruneError(
                f"the model does not run on the given example_inputs ({type(exc).__name__}: {str(exc)[:200]}); pass "
                "inputs it accepts: a tensor, a tuple of positional args or a dict of keyword args, with the shapes "
                "the model was built for."
            ) from exc
    if not expected:
        raise ForcePruneError("the model returned no tensor on the example_inputs; ONNX export needs tensor outputs.")
    with eval_mode(model), atomic_path(path) as tmp:
        order = [dynamo] if dynamo is not None else [True, False]
        errors = []
        exporter = None
        for use_dynamo in order:
            try:
                _export(model, args, kwargs, tmp, use_dynamo, opset_version)
                exporter = "dynamo" if use_dynamo else "legacy"
                break
            except Exception as exc:  # the exporters raise many kinds; report them all
                errors.append(f"{'dynamo' if use_dynamo else 'legacy'}: {type(exc).__name__}: {str(exc)[:300]}")
                tmp.unlink(missing_ok=True)
        if exporter is None:
            raise ForcePruneError("ONNX export failed (" + "; ".join(errors) + ").")
        info = {"path": str(path), "exporter": exporter, "max_abs_diff": None, "max_abs_output": None}
        if check:
            diff = _check(tmp, args, kwargs, expected)
            scale = max((float(t.detach().abs().max()) for t in expected if t.numel()), default=0.0)
            info.update(max_abs_diff=diff, max_abs_output=scale)
            if not diff <= atol + rtol * scale:
                raise ForcePruneError(
                    f"the exported ONNX model differs from PyTorch by up to {diff:.3g} (outputs up to {scale:.3g}); "
                    "nothing was written. Try dynamo=False/True or another opset_version."
                )
    return info
