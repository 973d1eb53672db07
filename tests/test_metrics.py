"""MACs and parameter counts against hand calculations."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import forceprune as fp


def test_conv_and_linear_macs_by_hand():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, bias=False), nn.Flatten(), nn.Linear(4 * 6 * 6, 5, bias=False))
    macs, params = fp.count_macs_params(model, torch.randn(1, 1, 8, 8))
    assert macs == 4 * 9 * 6 * 6 + 144 * 5
    assert params == 4 * 9 + 144 * 5


class Attention(nn.Module):
    """Functional attention: the q@k^T and attn@v products belong to no module."""

    def __init__(self, dim=16, heads=2):
        super().__init__()
        self.qkv, self.heads = nn.Linear(dim, 3 * dim, bias=False), heads

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return F.scaled_dot_product_attention(q, k, v)


def test_attention_matmuls_are_counted():
    t, d = 7, 16
    macs, _ = fp.count_macs_params(Attention(d), torch.randn(1, t, d))
    linear = t * d * 3 * d
    attention = 2 * t * t * d  # q@k^T and attn@v over all heads
    assert macs == linear + attention


def test_layer_macs_names_layers():
    model = nn.Sequential(nn.Linear(3, 4, bias=False), nn.ReLU(), nn.Linear(4, 2, bias=False))
    assert fp.layer_macs(model, torch.randn(1, 3)) == {"0": 12, "2": 8}


def test_latency_is_a_positive_median():
    model = nn.Linear(8, 8)
    ms = fp.measure_latency(model, torch.randn(4, 8), repeats=5, warmup=1)
    assert 0 < ms < 1000


class Printing(nn.Module):
    """A model called with keyword inputs (as Hugging Face models are) that prints."""

    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(4, 4, bias=False)

    def forward(self, x):
        print("the model's own output")
        return self.inner(x)


def test_counting_keeps_the_console_clean_but_for_the_model_s_own_prints(capsys):
    macs, _ = fp.count_macs_params(Printing(), {"x": torch.randn(1, 4)})
    assert macs == 16
    out = capsys.readouterr().out
    assert "No positional inputs" not in out and "the model's own output" in out


def test_side_by_side_latency_times_both_models():
    from forceprune.metrics import side_by_side_latency

    dense = nn.Sequential(nn.Linear(8, 512), *[nn.Linear(512, 512) for _ in range(8)])  # ~2 M MACs per sample
    dense_ms, pruned_ms = side_by_side_latency(dense, nn.Linear(8, 8), torch.randn(64, 8), rounds=3, repeats=3)
    assert dense_ms > pruned_ms > 0
