"""The residual stream of RMSNorm decoders as a unit: exact removal with the norm fold."""
import math

import pytest
import torch
import torch.nn as nn

import forceprune as fp
from forceprune.removal import removable_units

transformers = pytest.importorskip("transformers")
import hf_zoo  # noqa: E402

RMS_DECODERS = ["llama", "smollm", "mistral", "qwen2", "qwen3", "phi3"]


def _hidden(pruner):
    return next(us for us in pruner.unit_sets if us.kind == "hidden")


def _logits(model, ids):
    with torch.no_grad():
        return model(**ids).logits


def _zero(us, channels, roles=("producer_weight", "producer_other", "consumer")):
    mask = torch.zeros(us.size, dtype=torch.bool)
    mask[list(channels)] = True
    for s in us.slices:
        if s.role in roles:
            s.zero_(s.param.data, mask)


@pytest.mark.parametrize("name", RMS_DECODERS)
def test_zero_hidden_channels_are_removed_with_the_norms_folded(name):
    model, make_inputs = hf_zoo.build(name)
    pruner = fp.ForcePruner(model, make_inputs(1, 7))
    us = _hidden(pruner)
    width = us.size
    gone = [1, 5, 6, 20, width - 1]
    _zero(us, gone)
    norms = {n: (m.weight.detach().clone(), m.variance_epsilon) for n, m in model.named_modules()
             if n.endswith("layernorm") or n == "model.norm"}
    ids = [make_inputs(1, 5), make_inputs(3, 11)]
    before = [_logits(model, x) for x in ids]
    report = pruner.prune(calibration_inputs=make_inputs(2, 9))
    for x, b in zip(ids, before):
        a = _logits(model, x)
        assert float((a - b).abs().max() / b.abs().max()) < 1e-5
    kept = [c for c in range(width) if c not in gone]
    new = len(kept)
    assert model.model.embed_tokens.weight.shape[1] == new and model.lm_head.in_features == new
    for n, (w, eps) in norms.items():  # w' = w sqrt(H/H'), eps' = eps H/H' (by hand)
        norm = model.get_submodule(n)
        assert torch.allclose(norm.weight, w[kept] * math.sqrt(width / new), rtol=1e-6)
        assert norm.variance_epsilon == pytest.approx(eps * width / new, rel=1e-12)
    assert {r["name"]: r["width_after"] for r in report.layers}[us.name] == new


def test_tied_embeddings_stay_tied():
    model, make_inputs = hf_zoo.build("smollm")
    assert model.lm_head.weight is model.model.embed_tokens.weight
    pruner = fp.ForcePruner(model, make_inputs(1, 7))
    _zero(_hidden(pruner), [2, 3, 40])
    pruner.prune()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.lm_head.weight.shape == (hf_zoo.VOCAB, 69)


def test_zero_writes_are_enough_and_zero_reads_are_not():
    """Exactness needs every write to the channel zero (it is then zero everywhere, whatever the
    norms' weights and the reading projections hold); zero reads alone leave the channel in the
    RMS statistics of every norm, so the channel stays."""
    model, make_inputs = hf_zoo.build("llama")
    pruner = fp.ForcePruner(model, make_inputs(1, 7))
    us = _hidden(pruner)
    _zero(us, [3], roles=("producer_weight",))
    _zero(us, [9], roles=("consumer",))
    with torch.no_grad():
        for s in us.slices:
            if s.param_name == "weight" and s.kind == "norm":
                s.param[9] = 0.0  # channel 9: norm weights zero too -- still read by nobody, still counted
    removable = removable_units(us)[0]
    assert removable[3] and not removable[9]
    before = _logits(model, make_inputs(2, 9))
    pruner.prune(calibration_inputs=make_inputs(2, 9))
    after = _logits(model, make_inputs(2, 9))
    assert float((after - before).abs().max() / before.abs().max()) < 1e-5
    assert model.model.embed_tokens.weight.shape[1] == 63


class OnePlusWeightNorm(nn.Module):
    """Gemma's RMSNorm: (1 + w) x / rms(x) -- not w x / rms(x), so the fold does not apply."""

    def __init__(self, norm):
        super().__init__()
        self.weight, self.variance_epsilon = norm.weight, norm.variance_epsilon

    def forward(self, x):
        return (1 + self.weight) * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)


@pytest.mark.parametrize("change", ["one_plus_weight_norm", "an_extra_residual_write"])
def test_decoders_the_fold_does_not_fit_get_no_hidden_unit(change):
    model, make_inputs = hf_zoo.build("llama")
    if change == "one_plus_weight_norm":
        for layer in model.model.layers:
            layer.input_layernorm = OnePlusWeightNorm(layer.input_layernorm)
    else:  # a block with a part the layout does not know (Gemma's post-feed-forward norm, say)
        model.model.layers[1].post_feedforward_layernorm = nn.LayerNorm(64)
    kinds = {us.kind for us in fp.ForcePruner(model, make_inputs(1, 7)).unit_sets}
    assert "hidden" not in kinds and {"kv_group", "head", "neuron"} <= kinds


@pytest.mark.parametrize("name", ["gpt2", "bert", "vit"])
def test_layernorm_models_keep_their_hidden_size(name):
    model, make_inputs = hf_zoo.build(name)
    pruner = fp.ForcePruner(model, make_inputs(1, 7))
    assert "hidden" not in {us.kind for us in pruner.unit_sets}
    touched = {s.module_name for us in pruner.unit_sets for s in us.slices}
    assert not any("embed" in n or n.endswith("wte") for n in touched)
