"""Optimizer state follows removal: SGD momentum and Adam moments are sliced to the new shapes."""
import copy
import warnings

import pytest
import torch
import torch.nn as nn

import forceprune as fp
from forceprune.optim_state import prune_with_optimizer

import zoo

KEEP1 = [0, 2, 3, 5, 8, 9, 13]  # fc1: 7 of 16 neurons
KEEP2 = [1, 4, 6, 7, 11]  # fc2: 5 of 12


def _mask(size, keep):
    m = torch.ones(size, dtype=torch.bool)
    m[keep] = False
    return m


def _data(n=4):
    g = torch.Generator().manual_seed(3)
    return [(torch.randn(8, 10, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(n)]


def _train(model, opt, batches):
    for x, y in batches:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def _make(kind, params):
    if kind == "sgd":
        return torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-4)
    return torch.optim.Adam(params, lr=1e-2)


def _by_hand(model, opt, kind):
    """The reference: the pruned MLP and its optimizer state, sliced by hand."""
    k1, k2 = torch.tensor(KEEP1), torch.tensor(KEEP2)
    ref = copy.deepcopy(model)
    old = dict(model.named_parameters())
    cuts = {
        "fc1.weight": lambda t: t[k1],
        "fc1.bias": lambda t: t[k1],
        "fc2.weight": lambda t: t[k2][:, k1],
        "fc2.bias": lambda t: t[k2],
        "out.weight": lambda t: t[:, k2],
        "out.bias": lambda t: t,
    }
    for name, cut in cuts.items():
        module, pname = name.split(".")
        setattr(getattr(ref, module), pname, nn.Parameter(cut(old[name].detach()).clone()))
    new = dict(ref.named_parameters())
    ref_opt = _make(kind, [new[n] for n in cuts])
    for name, cut in cuts.items():
        ref_opt.state[new[name]] = {
            k: (cut(v).clone() if torch.is_tensor(v) and v.dim() else v.clone() if torch.is_tensor(v) else v)
            for k, v in opt.state[old[name]].items()
        }
    return ref, ref_opt


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_training_after_removal_equals_hand_sliced_reference(kind):
    model, x = zoo.build("mlp")
    model.train()
    opt = _make(kind, model.parameters())
    _train(model, opt, _data(3))  # build momentum / Adam moments
    pruner = fp.ForcePruner(model, x[:1], optimizer=opt)
    for us, keep in zip(pruner.unit_sets, (KEEP1, KEEP2)):
        us.zero_(_mask(us.size, keep), "all", opt)
    ref, ref_opt = _by_hand(model, opt, kind)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is reset
        report = prune_with_optimizer(pruner, opt)
    assert report.kept == {"fc1": KEEP1, "fc2": KEEP2}
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in model.parameters()}
    for (n, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        assert torch.equal(p, q), n
        for key, v in opt.state[p].items():
            assert torch.equal(v, ref_opt.state[q][key]), (n, key)
    batches = _data(5)
    _train(model, opt, batches)
    _train(ref, ref_opt, batches)
    for (n, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        assert torch.equal(p, q), n


def test_requires_grad_flags_survive_removal():
    model, x = zoo.build("mlp")
    model.fc2.bias.requires_grad_(False)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    pruner = fp.ForcePruner(model, x[:1], optimizer=opt)
    for us, keep in zip(pruner.unit_sets, (KEEP1, KEEP2)):
        us.zero_(_mask(us.size, keep), "all", opt)
    prune_with_optimizer(pruner, opt)
    assert model.fc2.bias.shape == (len(KEEP2),)
    assert not model.fc2.bias.requires_grad  # torch-pruning would have reset it to True
    assert all(p.requires_grad for n, p in model.named_parameters() if n != "fc2.bias")
    assert all(p is not model.fc2.bias for g in opt.param_groups for p in g["params"])


def test_parameters_outside_the_optimizer_stay_outside():
    model, x = zoo.build("mlp")
    opt = torch.optim.Adam(model.fc2.parameters(), lr=1e-2)  # fine-tune fc2 only
    _train(model, opt, _data(1))
    pruner = fp.ForcePruner(model, x[:1], optimizer=opt)
    for us, keep in zip(pruner.unit_sets, (KEEP1, KEEP2)):
        us.zero_(_mask(us.size, keep), "all", opt)
    prune_with_optimizer(pruner, opt)
    held = [p for g in opt.param_groups for p in g["params"]]
    assert len(held) == 2 and held[0] is model.fc2.weight and held[1] is model.fc2.bias
    assert opt.state[model.fc2.weight]["exp_avg"].shape == (len(KEEP2), len(KEEP1))


def _zero_halves(pruner, include, opt):
    for us in pruner.unit_sets:
        m = torch.zeros(us.size, dtype=torch.bool)
        m[1::2] = True
        us.zero_(m, include, opt)


@pytest.mark.parametrize("name", ["residual", "dense_concat", "inverted_residual", "plain_cnn"])
def test_coupled_models_keep_consistent_state(name):
    model, x = zoo.build(name)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(2):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    pruner = fp.ForcePruner(model, x[:1], optimizer=opt)
    _zero_halves(pruner, "all", opt)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = prune_with_optimizer(pruner, opt)
    assert report.params_after < report.params_before
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in model.parameters()}
    for p in model.parameters():
        assert opt.state[p]["exp_avg"].shape == p.shape and opt.state[p]["exp_avg_sq"].shape == p.shape
    opt.zero_grad()
    model(x).pow(2).mean().backward()
    opt.step()


def test_bias_created_by_folding_joins_the_optimizer():
    model, x = zoo.build("plain_cnn")
    assert model.conv2.bias is None
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    pruner = fp.ForcePruner(model, x[:1], force="etp-official", optimizer=opt)
    _zero_halves(pruner, "weights", opt)  # conv1's zeroed filters still emit act(BN beta): folded into conv2
    prune_with_optimizer(pruner, opt, calibration_inputs=x)
    assert model.conv2.bias is not None
    assert any(p is model.conv2.bias for g in opt.param_groups for p in g["params"])
    opt.zero_grad()
    model(x).pow(2).mean().backward()
    opt.step()


def test_replaced_attention_module_gets_fresh_state_with_a_warning():
    model, x = zoo.build("transformer_block")
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    opt.zero_grad()
    model(x).pow(2).mean().backward()
    opt.step()
    pruner = fp.ForcePruner(model, x[:1], optimizer=opt)
    _zero_halves(pruner, "all", opt)
    with pytest.warns(UserWarning, match="in_proj_weight"):
        prune_with_optimizer(pruner, opt)
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in model.parameters()}
    opt.zero_grad()
    model(x).pow(2).mean().backward()
    opt.step()
