"""Capture makes exact zeros, and they stay zero through training."""
import pytest
import torch
import torch.nn.functional as F

import forceprune as fp
import zoo


def _train(model, x, pruner, optimizer, steps):
    model.train()
    target = torch.zeros(len(x), dtype=torch.long)
    for _ in range(steps):
        out = model(x)
        loss = F.cross_entropy(out, target % out.shape[1]) + pruner.penalty()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        pruner.step()


@pytest.mark.parametrize("opt_name", ["sgd", "adamw"])
@pytest.mark.parametrize("name", ["plain_cnn", "residual", "mlp"])
def test_captured_units_are_exact_zeros_that_stay_zero(name, opt_name):
    model, x = zoo.build(name)
    if opt_name == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-2)
    pruner = fp.ForcePruner(model, x[:1], force="etp", beta=1.0, threshold=0.05, optimizer=opt)
    _train(model, x, pruner, opt, steps=60)
    dead = {us.name: us.dead.clone() for us in pruner.unit_sets}
    assert sum(int(d.sum()) for d in dead.values()) > 0, "the force should have captured some units"
    _train(model, x, pruner, opt, steps=20)
    for us in pruner.unit_sets:
        assert (us.dead >= dead[us.name]).all(), "captured units never come back"
        for s in us.select("all"):
            rows = s.elements()[us.dead[s.unit]]
            assert rows.numel() == 0 or (rows == 0).all(), f"{s.module_name}.{s.param_name} not exactly zero"
            state = opt.state[s.param]
            for v in state.values():
                if torch.is_tensor(v) and v.shape == s.param.shape:
                    st = s.elements(v)[us.dead[s.unit]]
                    assert st.numel() == 0 or (st == 0).all(), "optimizer state of captured units is cleared"


def test_force_creates_a_tail_of_zeros_far_from_the_pivot():
    torch.manual_seed(0)
    model, x = zoo.build("mlp")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pruner = fp.ForcePruner(model, x[:1], force="etp", beta=0.5, threshold=0.02, optimizer=opt)
    _train(model, x, pruner, opt, steps=150)
    for us in pruner.unit_sets:
        dead = us.dead.int().tolist()
        assert sum(dead) > 0
        first = dead.index(1)
        assert all(dead[first:]), f"{us.name}: zeros are not a contiguous tail: {dead}"


def test_element_capture_clips_like_etp_official_code():
    model, x = zoo.build("mlp")
    pruner = fp.ForcePruner(model, x[:1], force="etp-official", capture_every=0)
    with torch.no_grad():
        model.fc1.weight[3, :] = 4e-4  # all below 5e-4 -> the whole neuron is clipped
        model.fc1.weight[4, 0] = 4e-4  # a single small element is clipped, the neuron lives
    new = pruner.capture()
    assert new == 1
    assert (model.fc1.weight[3] == 0).all() and model.fc1.weight[4, 0] == 0
    assert pruner.unit_sets[0].dead.tolist()[3] and not pruner.unit_sets[0].dead.tolist()[4]


def test_state_dict_round_trip_restores_masks():
    model, x = zoo.build("mlp")
    pruner = fp.ForcePruner(model, x[:1])
    with torch.no_grad():
        model.fc1.weight[10:] = 0
        model.fc1.bias[10:] = 0
        model.fc2.weight[:, 10:] = 0
    pruner.capture()
    state = pruner.state_dict()
    model2, _ = zoo.build("mlp", seed=1)
    pruner2 = fp.ForcePruner(model2, x[:1])
    pruner2.load_state_dict(state)
    assert pruner2.unit_sets[0].dead.tolist() == pruner.unit_sets[0].dead.tolist()
    assert (model2.fc1.weight[10:] == 0).all(), "loading the state re-applies the zeros"
