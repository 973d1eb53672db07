"""The post-training Fisher mask search (Kwon et al. 2022 style): mask gradients against an
explicit mask, the search and the rearrangement on synthetic numbers, and a tiny run."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import forceprune as fp
from forceprune.fisher_search import rearrange, search, unit_mask_gradients


def test_mask_gradients_equal_the_gradient_of_an_explicit_mask():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3))
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    pruner = fp.ForcePruner(model, x[:1])
    (us,) = pruner.unit_sets
    F.cross_entropy(model(x), y).backward()
    got = unit_mask_gradients([us])[0]
    mask = torch.ones(6, requires_grad=True)
    loss = F.cross_entropy(model[2](model[1](model[0](x)) * mask), y)
    (expected,) = torch.autograd.grad(loss, mask)
    assert torch.allclose(got.float(), expected, atol=1e-6)


def test_search_splits_the_budget_between_two_kinds_of_units():
    """Two head sets (cost 10 each unit) and one neuron set (cost 1): with 25 to spend beyond the
    one unit each set keeps, the best is one more head (importance 9) and 15 neurons."""
    heads = [torch.tensor([10.0, 9.0, 0.5]), torch.tensor([8.0, 0.1])]
    neurons = [torch.tensor([5.0] + [1.0] * 20)]
    kept = search(heads + neurons, [10.0, 10.0, 1.0], ["head", "head", "neuron"], budget=10 + 10 + 1 + 25)
    assert kept == [2, 1, 16]


def test_search_keeps_one_unit_per_set_below_the_floor():
    assert search([torch.ones(4), torch.ones(3)], [1.0, 1.0], ["a", "a"], budget=0.5) == [1, 1]


def test_rearrangement_lowers_the_second_order_cost():
    """Units 0 and 1 are each strong (diagonal 4) but their removals cancel (F_01 = -3.9), so with
    one unit to keep, removing both of them (cost 4 + 4 - 7.8 = 0.2) beats keeping the top unit
    by the diagonal (removing 1 and 2: cost 4 + 3 = 7): the swap finds it."""
    fisher = torch.tensor([[4.0, -3.9, 0.0], [-3.9, 4.0, 0.0], [0.0, 0.0, 3.0]])
    removed = rearrange(fisher, keep=1)
    assert removed.tolist() == [True, True, False]
    r = removed.double()
    assert float(r @ fisher.double() @ r) == pytest.approx(0.2)


def test_a_tiny_bert_is_pruned_to_its_macs_target_without_training(tmp_path):
    pytest.importorskip("transformers")
    from transformers import BertConfig, BertForSequenceClassification

    from forceprune.baselines import FisherSearch

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2,
                                                     num_attention_heads=4, intermediate_size=37, num_labels=2)).eval()
    example = {"input_ids": torch.randint(0, 50, (1, 12))}
    batches = [{"input_ids": torch.randint(0, 50, (4, 12)), "labels": torch.randint(0, 2, (4,))} for _ in range(4)]
    method = FisherSearch(model, example, 0.6, batches, lambda m, b: m(**b).loss, kinds=("head", "neuron"))
    report = method.prune()
    assert report.macs_after <= 0.6 * report.macs_before and report.macs_after > 0.45 * report.macs_before
    assert report.mode == "fisher-search" and report.max_output_error is not None
    assert all(r["width_after"] >= 1 for r in report.layers)


def _tiny_bert():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2,
                                                     num_attention_heads=4, intermediate_size=37, num_labels=2)).eval()
    batches = [{"input_ids": torch.randint(0, 50, (4, 12)), "labels": torch.randint(0, 2, (4,))} for _ in range(4)]
    return model, {"input_ids": torch.randint(0, 50, (1, 12))}, batches


def test_the_force_zeroes_exactly_the_units_the_fisher_search_chose_and_removes_them_losslessly():
    """importance = "fisher": the search fixes which units go (different numbers per layer); the
    force alone (learning rate 0) zeroes those and only those, and removal is exact."""
    pytest.importorskip("transformers")
    from forceprune.fisher_search import removal_masks

    model, example, batches = _tiny_bert()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    pruner = fp.ForcePruner(model, example, "etp", beta=1e-2, pivot="ranked", target_macs=0.6, total_steps=200,
                            optimizer=opt, spare_keepers=True, kinds=("head", "neuron"))
    chosen = removal_masks(model, pruner.unit_sets, example, 0.6, batches, lambda m, b: m(**b).loss, 4)
    pruner.set_pushed_units(chosen)
    for _ in range(200):
        pruner.proximal_step(lr=0.05)
        pruner.step()
    for us, go in zip(pruner.unit_sets, chosen):
        assert torch.equal(us.dead, go), us.name
    report = pruner.prune()
    assert report.max_output_error < 1e-5
    assert report.macs_after <= 0.6 * report.macs_before * 1.03
    assert [r["width_after"] for r in report.layers] == [int((~go).sum()) for go in chosen]


def test_pushed_units_need_a_planned_budget_and_one_mask_per_unit_set():
    pytest.importorskip("transformers")
    model, example, _ = _tiny_bert()
    plain = fp.ForcePruner(model, example, "etp", target_macs=0.6, total_steps=100, kinds=("head", "neuron"))
    with pytest.raises(fp.ForcePruneError, match="spare_keepers=True"):
        plain.set_pushed_units([torch.zeros(us.size, dtype=torch.bool) for us in plain.unit_sets])
    spared = fp.ForcePruner(model, example, "etp", target_macs=0.6, total_steps=100, kinds=("head", "neuron"),
                            spare_keepers=True)
    with pytest.raises(fp.ForcePruneError, match="one"):
        spared.set_pushed_units([torch.zeros(3, dtype=torch.bool)])


def test_searched_widths_follow_the_budgets_rounding_and_still_meet_the_target():
    """The search's widths go through the budget's min_width / round_to inside the bisection:
    every set keeps an even width (or all its units), at least 2, and the MACs target holds; a
    target the rounded floor cannot reach is refused."""
    pytest.importorskip("transformers")
    from forceprune.budget import Budget
    from forceprune.budget_selection import kept_width
    from forceprune.fisher_search import removal_masks
    from forceprune.metrics import count_macs_params
    from forceprune.preview import counts_if_removed

    model, example, batches = _tiny_bert()
    pruner = fp.ForcePruner(model, example, "etp", kinds=("head", "neuron"))
    budget = Budget(target=0.6, metric="macs", total_steps=100, round_to=2, min_width=2)
    loss_of = lambda m, b: m(**b).loss  # noqa: E731
    plain = removal_masks(model, pruner.unit_sets, example, 0.6, batches, loss_of, 4)
    masks = removal_masks(model, pruner.unit_sets, example, 0.6, batches, loss_of, 4,
                          lambda kept, size: kept_width(kept, size, budget))
    kept = {us.kind: [] for us in pruner.unit_sets}
    for us, go in zip(pruner.unit_sets, masks):
        kept[us.kind].append(int((~go).sum()))
    assert all(k % 2 == 0 or k == 37 for k in kept["neuron"] + kept["head"]) and min(sum(kept.values(), [])) >= 2
    assert any(int((~go).sum()) % 2 for go in plain)  # the rounding changed something
    macs = counts_if_removed(model, pruner.unit_sets, example, masks)[0]
    assert macs <= 0.6 * count_macs_params(model, example)[0]
    coarse = Budget(target=0.6, metric="macs", total_steps=100, round_to=8)  # heads keep all 4
    with pytest.raises(fp.ForcePruneError, match="min_width / round_to"):
        removal_masks(model, pruner.unit_sets, example, 0.3, batches, loss_of, 4,
                      lambda kept, size: kept_width(kept, size, coarse))
