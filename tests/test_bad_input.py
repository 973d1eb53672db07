"""Every bad input raises an error that names the cause and the fix."""
import pytest
import torch
import torch.nn as nn

import forceprune as fp
import zoo


@pytest.fixture
def mlp():
    return zoo.build("mlp")


def test_unknown_force_suggests_the_nearest(mlp):
    model, x = mlp
    with pytest.raises(fp.UnknownForceError, match="Did you mean 'etp'"):
        fp.ForcePruner(model, x, force="etq")


def test_unknown_option_lists_valid_ones(mlp):
    model, x = mlp
    with pytest.raises(fp.ForcePruneError, match="no option 'bta'.*Did you mean 'beta'"):
        fp.ForcePruner(model, x, force="etp", bta=1e-4)


@pytest.mark.parametrize("bad", [-1e-4, float("nan"), float("inf")])
def test_bad_beta(mlp, bad):
    model, x = mlp
    with pytest.raises(fp.ForcePruneError, match="beta must be a finite number >= 0"):
        fp.ForcePruner(model, x, beta=bad)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"norm": "l3"}, "norm='l3' is not supported"),
        ({"pivot": "left"}, "pivot='left' is not supported"),
        ({"pivot": -1}, "pivot must be"),
        ({"reduction": "max"}, "reduction='max'"),
        ({"capture": "magic"}, "capture='magic'"),
        ({"threshold": -1.0}, "threshold must be"),
        ({"scale": 0.0}, "scale must be"),
    ],
)
def test_bad_options(mlp, options, message):
    model, x = mlp
    with pytest.raises(fp.ForcePruneError, match=message):
        fp.ForcePruner(model, x, force="etp", **options)


def test_model_without_prunable_units():
    model = nn.Sequential(nn.Linear(4, 3))  # only an output layer
    with pytest.raises(fp.ForcePruneError, match="no prunable unit"):
        fp.ForcePruner(model, torch.randn(1, 4))


def test_example_inputs_that_do_not_run(mlp):
    model, _ = mlp
    with pytest.raises(fp.ForcePruneError, match="does not run on the given example_inputs"):
        fp.ForcePruner(model, torch.randn(1, 7))


def test_not_a_module():
    with pytest.raises(fp.ForcePruneError, match="must be a torch.nn.Module"):
        fp.ForcePruner(lambda x: x, torch.randn(1, 3))


def test_nan_weights_are_refused_by_penalty_and_prune(mlp):
    model, x = mlp
    pruner = fp.ForcePruner(model, x)
    with torch.no_grad():
        model.fc1.weight[0, 0] = float("nan")
    with pytest.raises(fp.NonFiniteError, match="Lower the learning rate"):
        pruner.penalty()
    with pytest.raises(fp.NonFiniteError, match="fc1.weight"):
        pruner.prune()


def test_options_with_a_force_object_are_refused(mlp):
    model, x = mlp
    with pytest.raises(fp.ForcePruneError, match="set them on the object"):
        fp.ForcePruner(model, x, force=fp.forces.ExponentialTorque(beta=1e-4), beta=1e-3)


def test_model_is_untouched_until_step_or_prune(mlp):
    model, x = mlp
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruner = fp.ForcePruner(model, x, force="etp", beta=1.0)
    pruner.penalty()
    pruner.summary()
    pruner.force_field()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_ignored_layers_are_not_pruned(mlp):
    model, x = mlp
    pruner = fp.ForcePruner(model, x, ignored_layers=[model.fc1])
    assert [us.name for us in pruner.unit_sets] == ["fc2"]


def test_width_request_below_one_is_refused(mlp):
    model, x = mlp
    pruner = fp.ForcePruner(model, x)
    with pytest.raises(fp.ForcePruneError, match="at least one unit"):
        pruner.prune(widths={"fc1": 0})
