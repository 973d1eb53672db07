"""Models forceprune cannot handle as given get a clear ForcePruneError or warning, never a raw
torch error or a silent no-op: shared (tied) weights, tensors on the meta device, modules
replaced after the pruner was built."""
import pytest
import torch
import torch.nn as nn

import forceprune as fp
from forceprune.units import SharedWeightWarning


class TiedMLP(nn.Module):
    """fc1 and fc3 share one weight: removing an fc1 neuron would have to remove fc3's too."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc3, self.out = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 2)
        self.fc2, self.fc4 = nn.Linear(8, 6), nn.Linear(6, 2)
        self.fc3.weight = self.fc1.weight

    def forward(self, x):
        return self.out(torch.relu(self.fc3(torch.relu(self.fc1(x))))) + self.fc4(torch.relu(self.fc2(x)))


def _tied():
    torch.manual_seed(0)
    return TiedMLP().eval(), torch.randn(1, 8)


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval(), torch.randn(1, 8)


def _meta():
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    return model, torch.randn(1, 8)


def _replace_hidden_layer(pruner):
    pruner.model[0] = nn.Linear(8, 16)


def _delete_hidden_layer(pruner):
    del pruner.model[0]
    pruner.model.insert(0, nn.Identity())


CASES = {
    # case: (build, action on the pruner (None: building it is the action), error, words the message must hold)
    "meta device": (_meta, None, fp.ForcePruneError, "meta device"),
    "replaced, then penalty()": (_mlp, lambda p: (_replace_hidden_layer(p), p.penalty()), fp.ForcePruneError,
                                 "module '0' was replaced by a Linear"),
    "replaced, then step()": (_mlp, lambda p: (_replace_hidden_layer(p), p.step()), fp.ForcePruneError,
                              "Build a new ForcePruner"),
    "replaced, then prune()": (_mlp, lambda p: (_replace_hidden_layer(p), p.prune()), fp.ForcePruneError,
                               "replaced by a Linear"),
    "removed, then capture()": (_mlp, lambda p: (_delete_hidden_layer(p), p.capture()), fp.ForcePruneError,
                                "module '0' was replaced by a Identity"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_refused_with_a_clear_error(case):
    build, action, error, words = CASES[case]
    model, x = build()
    with pytest.raises(error, match=words):
        pruner = fp.ForcePruner(model, x)
        action(pruner)


def test_tied_weights_leave_their_units_unpruned_with_a_warning():
    model, x = _tied()
    with pytest.warns(SharedWeightWarning, match=r"fc1 \(shares fc1.weight = fc3.weight\)"):
        pruner = fp.ForcePruner(model, x)
    assert "fc1" not in {us.name for us in pruner.unit_sets} and "fc2" in {us.name for us in pruner.unit_sets}
    with torch.no_grad():
        model.fc1.weight[3] = 0  # zero rows of the shared weight stay: nothing touching it is removed
    pruner.prune()
    assert model.fc3.weight is model.fc1.weight and model.fc1.out_features == 8


def test_a_model_untied_before_building_prunes():
    model, x = _tied()
    model.fc3.weight = nn.Parameter(model.fc1.weight.detach().clone())
    pruner = fp.ForcePruner(model, x)
    assert "fc1" in {us.name for us in pruner.unit_sets}
