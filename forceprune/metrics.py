"""MACs, parameters and latency, counted the way torch-pruning counts them.

MACs per sample come from ``torch_pruning.utils.count_ops_and_params`` (module hooks, the
DepGraph convention) plus the matrix products that no module owns -- attention's
``q @ k^T`` and ``attn @ v`` written with ``torch.matmul`` or
``F.scaled_dot_product_attention`` -- counted with ``torch.utils.flop_counter``.
"""
from __future__ import annotations

import copy
import statistics
import time

import torch
import torch.nn as nn
import torch_pruning as tp
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from ._torch import eval_mode, run_model

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
    mha_names = [n for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_CUSTOM_FLOPS) as counter:
        run_model(model, example_inputs)
    counts = counter.get_flop_counts()
    total = sum(v for op, v in counts.get("Global", {}).items() if op in _FUNCTIONAL_OPS)
    for name, ops in counts.items():
        if any(name.endswith(n) for n in mha_names if n):
            total -= sum(v for op, v in ops.items() if op in _FUNCTIONAL_OPS)
    return int(total // 2)


def count_macs_params(model: nn.Module, example_inputs) -> tuple[int, int]:
    """``(MACs, params)`` for one forward pass on ``example_inputs``.

    MACs are per forward pass of the given batch; pass a batch of one for MACs per sample.
    """
    with eval_mode(model):
        macs, params = tp.utils.count_ops_and_params(model, example_inputs)
        macs += functional_macs(model, example_inputs)
    return int(macs), int(params)


def layer_macs(model: nn.Module, example_inputs) -> dict[str, int]:
    """MACs per named conv/linear layer (torch-pruning's per-layer counts)."""
    with eval_mode(model):
        _, _, per_layer, _ = tp.utils.count_ops_and_params(model, example_inputs, layer_wise=True)
    names = {m: n for n, m in model.named_modules()}
    return {
        names[m]: int(v)
        for m, v in per_layer.items()
        if v is not None and isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))
    }


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
