"""One width per kind across layers (``uniform``), and the plain Hugging Face folder it allows."""
import json

import pytest
import torch

import forceprune as fp
from forceprune import attention as A
from forceprune.budget_selection import equalize, uniform_classes

transformers = pytest.importorskip("transformers")
import hf_zoo  # noqa: E402

from forceprune.integrations.transformers import save_pruned_pretrained  # noqa: E402


def _m(*bits):
    return torch.tensor(bits, dtype=torch.bool)


def test_uniform_classes_group_sets_by_key():
    assert uniform_classes([("head", 4), ("neuron", 9), ("head", 4), ("head", 2), ("neuron", 9)]) == [[0, 2], [1, 4]]


def test_equalize_takes_the_fewest_zero_units_or_the_most():
    masks = [_m(1, 1, 0, 1), _m(0, 1, 0, 0), _m(1, 0, 1, 0)]
    scores = [torch.tensor([0.0, 0.5, 2.0, 0.1]), torch.zeros(4), torch.tensor([0.3, 1.0, 0.2, 0.9])]
    low = equalize(masks, [[0, 1, 2]], scores, "min")
    # one unit each; set 0 keeps removing its weakest removable unit (index 0), set 2 its weakest (index 2)
    assert [m.tolist() for m in low] == [[True, False, False, False], [False, True, False, False],
                                         [False, False, True, False]]
    high = equalize(masks, [[0, 1, 2]], scores, "max")
    # three each: set 1 adds its weakest kept units (ties keep order), set 2 its weakest kept (index 0 -> 3)
    assert [int(m.sum()) for m in high] == [3, 3, 3]
    assert high[2].tolist() == [True, False, True, True] and high[0].tolist() == masks[0].tolist()


def _zero(pruner, counts: dict):
    """Zero different numbers of units per layer: ``{kind: [units in layer 0, units in layer 1]}``."""
    for us in pruner.unit_sets:
        if us.kind not in counts:
            continue
        n = counts[us.kind][0 if ".0." in us.name else 1]
        mask = torch.zeros(us.size, dtype=torch.bool)
        mask[us.size - n:] = True
        us.zero_(mask, "all")


def test_prune_uniform_removes_as_many_from_every_layer_and_stays_lossless():
    model, make_inputs = hf_zoo.build("llama")
    pruner = fp.ForcePruner(model, make_inputs(1, 7))
    _zero(pruner, {"kv_group": [1, 0], "neuron": [30, 12], "head": [1, 1]})
    with torch.no_grad():
        before = model(**make_inputs(2, 9)).logits
    report = pruner.prune(uniform=True, calibration_inputs=make_inputs(2, 9))
    with torch.no_grad():
        after = model(**make_inputs(2, 9)).logits
    assert float((after - before).abs().max() / before.abs().max()) < 1e-5
    assert set(A.ffn_per_layer(model).values()) == {84} and set(A.kv_heads_per_layer(model).values()) == {2}
    assert set(A.heads_per_layer(model).values()) == {2}  # one query head per group gone in both layers
    assert any("uniform" in w for w in report.warnings)


def test_a_budget_with_uniform_counts_the_cost_of_a_uniform_removal():
    model, make_inputs = hf_zoo.build("llama")
    pruner = fp.ForcePruner(model, make_inputs(1, 7), target_macs=0.9, total_steps=100, budget={"uniform": True})
    assert pruner.uniform
    _zero(pruner, {"neuron": [40, 0]})
    assert pruner.kept_fraction() == 1.0  # layer 1 has no zero neuron: a uniform removal takes none
    _zero(pruner, {"neuron": [40, 20]})
    assert pruner.summary()["widths_if_pruned"]["model.layers.0.mlp.up_proj"] == 76


PLAIN = {  # family: (unit kinds to prune, {kind: zero units per layer}, config attributes that must change)
    "llama": (None, {"kv_group": [1, 1], "neuron": [20, 20], "hidden": [8, 8]},
              {"num_key_value_heads": 1, "num_attention_heads": 2, "intermediate_size": 76, "hidden_size": 56}),
    "smollm": (None, {"head": [1, 1], "neuron": [10, 10], "hidden": [12, 12]},
               {"num_key_value_heads": 3, "num_attention_heads": 6, "intermediate_size": 86, "hidden_size": 60}),
    "mistral": (None, {"kv_group": [1, 1], "neuron": [16, 16]}, {"num_attention_heads": 2, "intermediate_size": 80}),
    "qwen2": (None, {"head": [1, 1], "neuron": [16, 16], "hidden": [4, 4]},
              {"num_attention_heads": 2, "num_key_value_heads": 2, "hidden_size": 60}),
    "qwen3": (None, {"kv_group": [1, 1], "neuron": [16, 16]}, {"num_key_value_heads": 1, "intermediate_size": 80}),
    "phi3": (None, {"kv_group": [1, 1], "neuron": [16, 16], "hidden": [8, 8]},
             {"num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 80, "hidden_size": 56}),
    "vit": (None, {"head": [1, 1], "neuron": [7, 7]}, {"num_attention_heads": 3, "intermediate_size": 30}),
    "gpt2": (("neuron",), {"neuron": [8, 8]}, {"n_inner": 40}),
}
AUTO = {"vit": "AutoModelForImageClassification"}


@pytest.mark.parametrize("name", list(PLAIN))
def test_uniform_widths_save_as_a_plain_folder_that_from_pretrained_loads(name, tmp_path):
    kinds, counts, expected = PLAIN[name]
    model, make_inputs = hf_zoo.build(name)
    pruner = fp.ForcePruner(model, make_inputs(1, 7), kinds=kinds)
    _zero(pruner, counts)
    pruner.prune(uniform=True)
    save_pruned_pretrained(model, tmp_path / "plain", uniform=True)
    config = json.loads((tmp_path / "plain" / "config.json").read_text())
    assert {k: config[k] for k in expected} == expected and "forceprune" not in config
    auto = getattr(transformers, AUTO.get(name, "AutoModelForCausalLM"))
    plain = auto.from_pretrained(str(tmp_path / "plain")).eval()  # no forceprune involved
    for b, n in ((1, 5), (3, 11)):
        x = make_inputs(b, n)
        with torch.no_grad():
            assert torch.equal(model(**x).logits if isinstance(x, dict) else model(x).logits,
                               plain(**x).logits if isinstance(x, dict) else plain(x).logits)


@pytest.mark.parametrize("name, counts, words", [
    ("llama", {"neuron": [10, 20]}, "the ffn differ between layers"),
    ("llama", {"hidden": [3, 3]}, "hidden_size to be a multiple of num_attention_heads"),
    ("gpt2", {"head": [1, 1]}, "derive the head size"),
    ("bert", {"head": [1, 1]}, "derive the head size"),
    ("qwen3", {"hidden": [8, 8]}, "q_norm.variance_epsilon"),
])
def test_widths_a_plain_config_cannot_hold_are_refused_with_the_reason(name, counts, words, tmp_path):
    model, make_inputs = hf_zoo.build(name)
    pruner = fp.ForcePruner(model, make_inputs(1, 7))
    _zero(pruner, counts)
    pruner.prune()
    with pytest.raises(fp.ForcePruneError, match=words):
        save_pruned_pretrained(model, tmp_path / "plain", uniform=True)
