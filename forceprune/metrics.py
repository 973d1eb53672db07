"""MACs, parameters and latency, counted the way torch-pruning counts them.

MACs per sample come from ``torch_pruning.utils.count_ops_and_params`` (module hooks, the
DepGraph convention) plus what it does not see: the matrix products that no module owns --
attention's ``q @ k^T`` and ``attn @ v`` written with ``torch.matmul`` or
``F.scaled_dot_product_attention``, counted with ``torch.utils.flop_counter`` (grouped-query
attention counts every query head: the shared keys and values are read once per query head)
-- and Hugging Face's ``Conv1D`` projections (GPT-2), counted like ``nn.Linear``
(``tokens * in * out`` plus ``out`` for the bias).
"""
from __future__ import annotations

import contextlib
import copy
import io
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch_pruning as tp
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from ._torch import eval_mode, run_model
from .attention.slicing import is_conv1d
from .tracing import no_kv_cache

_aten = torch.ops.aten
#: Ops that appear in attention without an owning nn.Linear/Conv (2 FLOPs per MAC).
_FUNCTIONAL_OPS = {
    _aten.bmm,
    _aten.baddbmm,
    _aten._scaled_dot_product_efficient_attention,
    _aten._scaled_dot_product_flash_attention,
    _aten._scaled_dot_product_cudnn_attention,
    _aten._scaled_dot_product_flash_attention_for_cpu,
}


def _cpu_flash_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of the CPU fused attention kernel, which flop_counter does not register."""
    return sdpa_flop_count(query, key, value)


_CUSTOM_FLOPS = {_aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_flops}


def functional_macs(model: nn.Module, example_inputs) -> int:
    """MACs of batched matrix products and fused attention not owned by a counted module
    (``nn.MultiheadAttention`` is counted by torch-pruning's hook, so it is excluded)."""
    with _uncounted_macs(model) as uncounted, torch.no_grad():
        run_model(model, example_inputs)
    return uncounted()[0]


@contextlib.contextmanager
def _uncounted_macs(model: nn.Module):
    """While the block runs the model (or a deep copy of it: the hooks travel with it) once,
    count what torch-pruning's counter does not; yields a function returning ``(functional
    MACs, {Conv1D name: MACs})``."""
    mha_names = [n for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
    conv1d: dict[str, int] = {}

    def count(name):
        def hook(mod, args, out):
            tokens = args[0].numel() // max(mod.nx, 1)
            conv1d[name] = conv1d.get(name, 0) + tokens * mod.nx * mod.nf + mod.nf
        return hook

    hooks = [m.register_forward_hook(count(n)) for n, m in model.named_modules() if is_conv1d(m)]
    counter = FlopCounterMode(display=False, custom_mapping=_CUSTOM_FLOPS)

    def result() -> tuple[int, dict[str, int]]:
        counts = counter.get_flop_counts()
        total = sum(v for op, v in counts.get("Global", {}).items() if op in _FUNCTIONAL_OPS)
        for name, ops in counts.items():
            if any(name.endswith(n) for n in mha_names if n):
                total -= sum(v for op, v in ops.items() if op in _FUNCTIONAL_OPS)
        return int(total // 2), conv1d

    try:
        with counter:
            yield result
    finally:
        for h in hooks:
            h.remove()


class _WithoutLine(io.TextIOBase):
    """A text stream passing everything to ``target`` except lines starting with ``prefix``."""

    def __init__(self, target, prefix: str):
        self.target, self.prefix, self._dropping = target, prefix, False

    def write(self, text: str) -> int:
        if text.startswith(self.prefix):
            self._dropping = True
        elif not (self._dropping and text == "\n"):
            self._dropping = False
            self.target.write(text)
        else:
            self._dropping = False
        return len(text)

    def flush(self) -> None:
        self.target.flush()


@contextlib.contextmanager
def _torch_pruning_counter():
    """torch-pruning's op counter prints a warning for every module called with keyword inputs
    only (every Hugging Face layer): dozens of lines per count that say nothing about the result
    (they concern its batch counter, which we do not use). Keep the console clean of them."""
    with contextlib.redirect_stdout(_WithoutLine(sys.stdout, "Warning! No positional inputs found")):
        yield


def count_macs_params(model: nn.Module, example_inputs) -> tuple[int, int]:
    """``(MACs, params)`` for one forward pass on ``example_inputs``.

    MACs are per forward pass of the given batch; pass a batch of one for MACs per sample.
    """
    with eval_mode(model), no_kv_cache(model), _torch_pruning_counter():
        with _uncounted_macs(model) as uncounted:  # the same forward pass (of torch-pruning's copy)
            macs, params = tp.utils.count_ops_and_params(model, example_inputs)
        functional, conv1d = uncounted()
    return int(macs + functional + sum(conv1d.values())), int(params)


def layer_macs(model: nn.Module, example_inputs) -> dict[str, int]:
    """MACs per named conv/linear (and ``Conv1D``) layer (torch-pruning's per-layer counts)."""
    with eval_mode(model), no_kv_cache(model), _torch_pruning_counter():
        _, _, per_layer, _ = tp.utils.count_ops_and_params(model, example_inputs, layer_wise=True)
        conv1d = {}
        if any(is_conv1d(m) for m in model.modules()):
            with _uncounted_macs(model) as uncounted, torch.no_grad():
                run_model(model, example_inputs)
            conv1d = uncounted()[1]
    names = {m: n for n, m in model.named_modules()}
    out = {
        names[m]: int(v)
        for m, v in per_layer.items()
        if v is not None and isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))
    }
    return {**out, **conv1d}


@torch.inference_mode()
def measure_latency(
    model: nn.Module, example_inputs, repeats: int = 30, warmup: int = 5, copy_model: bool = False
) -> float:
    """Median wall time of one forward pass, in milliseconds (eval mode, no grad).

    Measure models you compare side by side in one process: on a shared CPU, absolute
    times drift; ratios measured together do not.
    """
    m = copy.deepcopy(model) if copy_model else model
    with eval_mode(m):
        for _ in range(warmup):
            run_model(m, example_inputs)
        times = []
        for _ in range(repeats):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            run_model(m, example_inputs)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def side_by_side_latency(dense: nn.Module, pruned: nn.Module, inputs, *, rounds: int = 5, repeats: int = 10,
                         warmup: int = 3, threads: int | None = None) -> tuple[float, float]:
    """``(dense_ms, pruned_ms)``: median ms per forward pass of two models on the same inputs,
    timed in alternating rounds (``rounds`` x ``repeats`` passes each) so that a machine whose
    speed drifts (a shared CPU) affects both alike; optionally with ``threads`` torch threads."""
    saved = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        pairs = [(measure_latency(dense, inputs, repeats=repeats, warmup=warmup),
                  measure_latency(pruned, inputs, repeats=repeats, warmup=warmup)) for _ in range(rounds)]
    finally:
        torch.set_num_threads(saved)
    return statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)
