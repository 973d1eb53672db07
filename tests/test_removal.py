"""Removing exactly-zero units leaves every zoo model's outputs unchanged."""
import copy

import pytest
import torch

import forceprune as fp
import zoo


def _zero_tails(pruner, include, fraction=0.5):
    for us in pruner.unit_sets:
        mask = torch.zeros(us.size, dtype=torch.bool)
        mask[max(1, int(us.size * (1 - fraction))):] = True
        us.zero_(mask, include)


def _prune_and_compare(model, x, pruner):
    """``(outputs before, outputs after, report)`` of removal on the same inputs."""
    with torch.no_grad():
        before = model(x)
    report = pruner.prune(calibration_inputs=x)
    with torch.no_grad():
        after = model(x)
    return before, after, report


@pytest.mark.parametrize("name", list(zoo.ZOO))
def test_removing_zero_units_keeps_outputs_to_1e5(name):
    model, x = zoo.build(name)
    pruner = fp.ForcePruner(model, x[:1])
    _zero_tails(pruner, "all")
    before, after, report = _prune_and_compare(model, x, pruner)
    assert report.macs_after < report.macs_before
    assert report.params_after < report.params_before
    assert all(r["width_after"] < r["width_before"] for r in report.layers)
    rel = (after - before).abs().max() / before.abs().max()
    assert rel < 1e-5, f"{name}: relative output change {rel:.2e}"
    assert report.max_output_error < 1e-5


@pytest.mark.parametrize("name", list(zoo.ZOO))
def test_a_model_in_training_mode_keeps_its_batchnorm_statistics(name):
    """Building the pruner and removing units inside a training loop (model.train()) must not
    run the model in training mode: that would move BatchNorm running statistics toward the
    example input's and change the trained model (it cost ResNet-20 up to 1 pt at removal)."""
    model, x = zoo.build(name)
    model.train()
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    pruner = fp.ForcePruner(model, x[:1])
    assert all(torch.equal(buffers[k], v) for k, v in model.named_buffers()), "construction changed a buffer"
    _zero_tails(pruner, "all")
    model.eval()
    with torch.no_grad():
        before = model(x)
    model.train()
    pruner.prune(calibration_inputs=x)
    assert model.training, "prune() restores the training mode"
    model.eval()
    with torch.no_grad():
        after = model(x)
    rel = (after - before).abs().max() / before.abs().max()
    assert rel < 1e-5, f"{name}: removal in training mode changed the outputs by {rel:.2e}"


@pytest.mark.parametrize("name", ["plain_cnn", "residual", "inverted_residual", "mlp"])
def test_zero_producer_weights_with_live_bn_and_bias_are_folded(name):
    """Only conv/linear weights zeroed (ETP's official capture): the channel still emits
    act(BN beta) or act(bias); the fold into consumers must keep outputs unchanged where the
    consumer has no zero padding, and the report must say where it is approximate."""
    model, x = zoo.build(name)
    pruner = fp.ForcePruner(model, x[:1], force="etp-official")
    _zero_tails(pruner, "weights")
    before, after, report = _prune_and_compare(model, x, pruner)
    rel = ((after - before).abs().max() / before.abs().max()).item()
    assert report.macs_after < report.macs_before
    if report.warnings:  # folded into a zero-padded conv: approximate at the border, and said so
        assert any("border" in w for w in report.warnings)
    else:
        assert rel < 1e-5, f"{name}: {rel:.2e}"
    assert report.max_output_error == pytest.approx(rel, rel=1e-3, abs=1e-7)


def test_mlp_fold_is_exact_and_macs_fall_by_hand_count():
    model, x = zoo.build("mlp")
    pruner = fp.ForcePruner(model, x[:1], force="etp-official")
    with torch.no_grad():  # fc1 keeps 6 of 16 neurons; their biases stay (ReLU(bias) != 0)
        model.fc1.weight[6:] = 0
        model.fc1.bias[6:] = torch.linspace(0.1, 1.0, 10)
        model.fc2.weight[4:] = 0  # fc2 keeps 4 of 12
    with torch.no_grad():
        before = model(x)
    report = pruner.prune(calibration_inputs=x)
    with torch.no_grad():
        after = model(x)
    assert torch.allclose(before, after, rtol=1e-5, atol=1e-6)
    # torch-pruning's counter: linear = in*out + out (bias); functional F.relu is not a module
    dense = (10 * 16 + 16) + (16 * 12 + 12) + (12 * 3 + 3)
    pruned = (10 * 6 + 6) + (6 * 4 + 4) + (4 * 3 + 3)
    assert (report.macs_before, report.macs_after) == (dense, pruned)
    params = lambda a, b: (10 * a + a) + (a * b + b) + (b * 3 + 3)
    assert (report.params_before, report.params_after) == (params(16, 12), params(6, 4))
    assert [r["width_after"] for r in report.layers] == [6, 4]


def test_all_zero_layer_keeps_one_unit_and_says_so():
    model, x = zoo.build("mlp")
    pruner = fp.ForcePruner(model, x[:1])
    with torch.no_grad():
        model.fc1.weight.zero_()
        model.fc1.bias.zero_()
    report = pruner.prune()
    assert model.fc1.out_features == 1
    assert any("kept one" in w for w in report.warnings)


def test_units_that_are_not_zero_are_never_removed():
    model, x = zoo.build("plain_cnn")
    pruner = fp.ForcePruner(model, x[:1])
    report = pruner.prune()
    assert report.macs_after == report.macs_before
    assert report.max_output_error == 0.0


def test_width_mode_drops_the_weakest_tail_and_reports_the_error():
    model, x = zoo.build("mlp")
    pruner = fp.ForcePruner(model, x[:1], force="etp")
    report = pruner.prune(widths={"fc1": 5}, calibration_inputs=x)
    assert model.fc1.out_features == 5 and model.fc2.out_features == 12
    assert report.mode == "width" and report.max_output_error > 0
    with pytest.raises(fp.ForcePruneError, match="unknown unit sets"):
        pruner.prune(widths={"nope": 1})


def test_pruner_keeps_working_after_removal():
    model, x = zoo.build("residual")
    pruner = fp.ForcePruner(model, x[:1])
    _zero_tails(pruner, "all")
    pruner.prune()
    assert torch.isfinite(pruner.penalty())
    assert pruner.summary()["units_total"] == sum(us.size for us in pruner.unit_sets)


class _ChaoticBlock(torch.nn.Module):
    """A residual tanh MLP block with gain 4: float32 rounding doubles every layer or so."""

    def __init__(self, d=32, f=1536):
        super().__init__()
        self.up, self.down = torch.nn.Linear(d, f), torch.nn.Linear(f, d)
        torch.nn.init.normal_(self.up.weight, std=4 / d**0.5)
        torch.nn.init.normal_(self.down.weight, std=4 / f**0.5)

    def forward(self, x):
        return x + self.down(torch.tanh(self.up(x)))


def test_float32_rounding_through_depth_is_told_apart_from_a_lossy_removal():
    """Removing 500 of 1536 zero neurons in 16 chaotic blocks moves float32 outputs far above
    1e-5 (the sums are blocked differently), float64 outputs by ~1e-12: accepted with a warning."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[_ChaoticBlock() for _ in range(16)], torch.nn.Linear(32, 4))
    x = torch.randn(16, 32)
    pruner = fp.ForcePruner(model, x[:1])
    g = torch.Generator().manual_seed(1)
    wide = [us for us in pruner.unit_sets if us.size == 1536]
    for us in wide:
        mask = torch.zeros(us.size, dtype=torch.bool)
        mask[torch.randperm(us.size, generator=g)[:500]] = True
        us.zero_(mask, "all")
    before64 = copy.deepcopy(model).double()(x.double())
    report = pruner.prune(calibration_inputs=x)
    assert report.max_output_error > 1e-5, "the float32 change must exceed the bound for this test to mean anything"
    assert any("float64" in w and "rounding" in w for w in report.warnings), report.warnings
    assert all(r["width_after"] == 1036 for r in report.layers if r["width_before"] == 1536)
    rel64 = (model.double()(x.double()) - before64).abs().max() / before64.abs().max()
    assert rel64 < 1e-9, "in float64 the pruned model computes the same function"
