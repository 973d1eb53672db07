"""Activation-aware importance (``ForcePruner.calibrate``): the force pushes and removal takes the
units with the smallest ``|W| x ||X||``, not the smallest weights."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import forceprune as fp
from forceprune.runs import config_from_dict
from forceprune.runs.config import ConfigError

HEAVY_SILENT = 5  # a neuron with big weights that never fires


def _mlp() -> nn.Sequential:
    """6 -> 8 -> 3; neuron 5 never fires (its ReLU input is about -10 on every token) but is
    written out with the largest weights: magnitude ranks it first, activations last."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        model[0].weight[HEAVY_SILENT] *= 0.1
        model[0].bias[HEAVY_SILENT] = -10.0
        model[2].weight[:, HEAVY_SILENT] = 3.0
    return model


def _batches(n=4):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(16, 6, generator=g) * torch.linspace(0.2, 2.0, 6) for _ in range(n)]


def test_calibrated_scores_follow_weight_times_activation_norm():
    model, batches = _mlp(), _batches()
    pruner = fp.ForcePruner(model, batches[0][:1], force="etp", pivot="ranked")
    magnitude = pruner.unit_scores()[0]
    pruner.calibrate(batches, lambda m, b: m(b))
    (activation,) = pruner.unit_scores()
    with torch.no_grad():
        hidden = torch.cat([model[1](model[0](b)) for b in batches])  # what the second layer reads
        expected = model[2].weight.abs().sum(0) * hidden.norm(dim=0)
    assert torch.equal(torch.argsort(activation), torch.argsort(expected)), "a ranked pivot ranks by |W| x ||X||"
    assert int(torch.argmax(magnitude)) == HEAVY_SILENT and float(activation[HEAVY_SILENT]) == 0.0


def _train_and_prune(calibrate: bool) -> tuple[list[int], fp.ForcePruner]:
    model, batches = _mlp(), _batches()
    steps = 60
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    pruner = fp.ForcePruner(model, batches[0][:1], force="etp", pivot="ranked", norm="l2", beta=0.01,
                            target_params=0.85, total_steps=steps, spare_keepers=True, capture_every=1, optimizer=opt)
    if calibrate:
        pruner.calibrate(batches, lambda m, b: m(b))
    target = torch.nn.Linear(6, 3)
    for i in range(steps):
        x = batches[i % len(batches)]
        loss = (model(x) - target(x).detach()).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        pruner.proximal_step()
        pruner.step()
    report = pruner.prune(calibration_inputs=batches[0])
    assert report.max_output_error < 1e-5 and model[0].out_features < 8
    return report.kept["0"], pruner


def test_the_force_pushes_the_silent_neuron_only_when_calibrated():
    kept_magnitude, _ = _train_and_prune(calibrate=False)
    kept_activation, pruner = _train_and_prune(calibrate=True)
    assert HEAVY_SILENT in kept_magnitude, "by weight norm the heavy neuron is the last to go"
    assert HEAVY_SILENT not in kept_activation, "by |W| x ||X|| it is the first"
    assert pruner._input_norms is None, "a removal changes the widths: the calibration ends"
    assert len(pruner.unit_scores()[0]) == pruner.model[0].out_features


def test_importance_is_a_checked_config_key():
    base = {"task": "language_modeling", "force": "etp", "target_nonembedding": 0.8}
    assert config_from_dict({**base, "importance": "activation"}).importance == "activation"
    with pytest.raises(ConfigError, match="importance"):
        config_from_dict({**base, "importance": "wanda"})
