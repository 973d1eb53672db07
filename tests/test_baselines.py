"""The width-given baselines: Torch-Pruning's group-magnitude ranking and structured Wanda, checked
against scores computed by hand and against a model with the dropped units masked out."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from forceprune.baselines import GroupNormWidths, WandaSp
from forceprune.errors import ForcePruneError


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def _calibration() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    scale = torch.linspace(0.1, 3.0, 6)  # input features of very different sizes
    return [torch.randn(5, 6, generator=g) * scale for _ in range(3)]


def _masked(model: nn.Sequential, keep: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    mask = torch.zeros(8)
    mask[keep] = 1
    return model[2](model[1](model[0](x)) * mask)


def test_wanda_sp_scores_are_weight_times_activation_norm_of_the_reading_columns():
    model, batches = _mlp(), _calibration()
    method = WandaSp(model, batches[0][:1], {"0": 3}, batches, run_batch=lambda m, b: m(b))
    (us,) = method.unit_sets
    with torch.no_grad():
        hidden = torch.cat([model[1](model[0](b)) for b in batches])  # what fc2 reads, every token
        expected = model[2].weight.abs().sum(0) * hidden.norm(dim=0)
    assert torch.allclose(method.scores(us), expected, rtol=1e-5)
    keep = torch.argsort(expected, descending=True)[:3]
    x = torch.randn(4, 6)
    masked = _masked(model, keep, x)
    report = method.prune()
    assert model[0].out_features == 3 and report.layers[0]["width_after"] == 3
    assert torch.allclose(model(x), masked, atol=1e-6), "the kept units are the 3 best-scored ones"


def test_wanda_sp_differs_from_magnitude_when_activations_disagree_with_weights():
    """A neuron with big weights that never fires has no Wanda score: magnitude keeps it, Wanda not."""
    model, batches = _mlp(), _calibration()
    with torch.no_grad():
        model[0].weight[5] = 0.0
        model[0].bias[5] = -1.0  # ReLU(-1) = 0 on every token
        model[2].weight[:, 5] = 10.0
    wanda = WandaSp(model, batches[0][:1], {"0": 4}, batches, run_batch=lambda m, b: m(b))
    magnitude = GroupNormWidths(model, batches[0][:1], {"0": 4})
    (us,) = wanda.unit_sets
    assert wanda.scores(us)[5] == 0
    assert int(torch.argsort(magnitude.scores(magnitude.unit_sets[0]), descending=True)[0]) == 5


def test_group_norm_widths_keep_the_largest_group_norms():
    model = _mlp()
    method = GroupNormWidths(model, torch.randn(1, 6), {"0": 2})
    (us,) = method.unit_sets
    with torch.no_grad():  # Torch-Pruning's group L2 magnitude: fc1's rows and fc2's columns (biases left out)
        parts = [model[0].weight.pow(2).sum(1), model[2].weight.pow(2).sum(0)]
    order = torch.argsort(method.scores(us), descending=True)
    assert torch.equal(order, torch.argsort(sum(parts), descending=True))
    x = torch.randn(4, 6)
    masked = _masked(model, order[:2], x)
    method.prune()
    assert torch.allclose(model(x), masked, atol=1e-6)


def test_wanda_sp_needs_batches_that_run_the_model():
    model = _mlp()
    method = WandaSp(model, torch.randn(1, 6), {"0": 2}, [], run_batch=lambda m, b: m(b))
    with pytest.raises(ForcePruneError, match="calibration batches ran no layer"):
        method.prune()
