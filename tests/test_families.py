"""Every common transformer family prunes losslessly through the public API: units found,
exact zeros removed with outputs unchanged (two batch sizes, two lengths), generate() unchanged,
reload bit-identical, and a layout that maps units wrongly raises instead of passing."""
import warnings

import pytest
import torch

import forceprune as fp
from forceprune import attention as A
from forceprune._torch import run_model
from forceprune.removal import LossyRemovalError

transformers = pytest.importorskip("transformers")
import hf_zoo  # noqa: E402

from forceprune.integrations.transformers import load_pruned_pretrained, save_pruned_pretrained  # noqa: E402

#: the unit kinds each family has (a BERT-style classifier also has its pooler's channels)
KINDS = {
    "gpt2": {"head", "neuron"},
    "llama": {"kv_group", "head", "neuron", "hidden"},
    "llama_mha": {"head", "neuron", "hidden"},
    "smollm": {"kv_group", "head", "neuron", "hidden"},
    "mistral": {"kv_group", "head", "neuron", "hidden"},
    "qwen2": {"kv_group", "head", "neuron", "hidden"},
    "qwen3": {"kv_group", "head", "neuron", "hidden"},
    "phi3": {"kv_group", "head", "neuron", "hidden"},
    "vit": {"head", "neuron"},
    "bert": {"channel", "head", "neuron"},
    "roberta": {"channel", "head", "neuron"},
    "distilbert": {"channel", "head", "neuron"},
    "torch_encoder": {"head", "neuron"},
}
FAMILIES = list(hf_zoo.FAMILIES)
SHAPES = [(1, 5), (3, 11)]  # (batch, length)


def _logits(out):
    return out.logits if hasattr(out, "logits") else out


def _outputs(model, make_inputs):
    with torch.no_grad():
        return [_logits(run_model(model, make_inputs(b, n))) for b, n in SHAPES]


def _rel(a, b) -> float:
    return float((a - b).abs().max() / a.abs().max())


def _zero_some(pruner, seed=0, fraction=0.4):
    """Zero a random ~40 % of every unit set (never unit 0), through the slices; returns the masks."""
    g = torch.Generator().manual_seed(seed)
    masks = {}
    for us in pruner.unit_sets:
        mask = torch.rand(us.size, generator=g) < fraction
        mask[0] = False
        us.zero_(mask, "all")
        masks[us.name] = mask
    return masks


def _pruned(name):
    model, make_inputs = hf_zoo.build(name)
    pruner = fp.ForcePruner(model, make_inputs(1, 7))
    masks = _zero_some(pruner)
    return model, make_inputs, pruner, masks


@pytest.mark.parametrize("name", FAMILIES)
def test_units_are_found_without_warnings(name):
    model, make_inputs = hf_zoo.build(name)
    with warnings.catch_warnings():
        warnings.simplefilter("error", A.UnmappedAttentionWarning)
        pruner = fp.ForcePruner(model, make_inputs(1, 7))
    assert {us.kind for us in pruner.unit_sets} == KINDS[name]
    if name in hf_zoo.DECODERS:  # traced with the KV cache off, and the user's setting given back
        assert model.config.use_cache is True


@pytest.mark.parametrize("name", FAMILIES)
def test_exact_zero_units_are_removed_and_outputs_do_not_change(name):
    model, make_inputs, pruner, masks = _pruned(name)
    before = _outputs(model, make_inputs)
    report = pruner.prune(calibration_inputs=make_inputs(2, 9))
    after = _outputs(model, make_inputs)
    for b, a in zip(before, after):
        assert _rel(b, a) < 1e-5, f"{name}: {_rel(b, a):.2e}"
    assert report.max_output_error < 1e-5
    widths = {r["name"]: (r["width_before"], r["width_after"]) for r in report.layers}
    for set_name, mask in masks.items():
        assert widths[set_name] == (len(mask), len(mask) - int(mask.sum())), set_name
    assert report.macs_after < report.macs_before and report.params_after < report.params_before


@pytest.mark.parametrize("name", FAMILIES)
def test_nothing_zero_nothing_removed(name):
    """Phi-3's fused gate_up once looked half unread: a removal with nothing zeroed deleted
    every FFN neuron. Now nothing is removed and nothing changes."""
    model, make_inputs = hf_zoo.build(name)
    pruner = fp.ForcePruner(model, make_inputs(1, 7))
    report = pruner.prune(calibration_inputs=make_inputs(2, 9))
    assert all(r["width_after"] == r["width_before"] for r in report.layers)
    assert report.macs_after == report.macs_before and report.max_output_error == 0.0


@pytest.mark.parametrize("name", ["llama", "gpt2", "phi3", "vit"])
def test_training_with_the_force_captures_units_and_removes_them_losslessly(name):
    """The public loop: penalty() in the loss, proximal_step() and step() after the optimizer."""
    model, make_inputs = hf_zoo.build(name)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    pruner = fp.ForcePruner(model, make_inputs(1, 7), force="etp", beta=0.05, pivot="ranked", optimizer=opt)
    x = make_inputs(4, 8)
    with torch.no_grad():
        targets = _logits(run_model(model, x)).argmax(-1).roll(1)  # a task the model has to learn
    for _ in range(12):
        logits = _logits(run_model(model, x))
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, -2), targets.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        pruner.proximal_step()
        pruner.step()
    assert pruner.units_captured > 0
    model.eval()
    before = _outputs(model, make_inputs)
    report = pruner.prune(calibration_inputs=make_inputs(2, 9))
    assert report.macs_after < report.macs_before
    for b, a in zip(before, _outputs(model, make_inputs)):
        assert _rel(b, a) < 1e-5


def test_a_vit_macs_target_below_the_ffn_floor_is_accepted():
    """With its heads mapped, a ViT's smallest model is well under 0.6 of its MACs."""
    model, make_inputs = hf_zoo.build("vit")
    pruner = fp.ForcePruner(model, make_inputs(1, 7), target_macs=0.3, total_steps=10)
    assert pruner.controller.budget.target == 0.3


@pytest.mark.parametrize("name", hf_zoo.DECODERS)
def test_generate_gives_the_same_tokens_after_removal(name):
    model, make_inputs, pruner, _ = _pruned(name)
    prompt = make_inputs(2, 6)
    kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    before = model.generate(**prompt, **kwargs)
    pruner.prune()
    assert torch.equal(model.generate(**prompt, **kwargs), before)
    # the key/value cache holds fewer heads per layer now, and still agrees with a full pass
    full = _logits(model(input_ids=model.generate(**prompt, **kwargs), use_cache=False))
    assert full.shape[-1] == hf_zoo.VOCAB


@pytest.mark.parametrize("name", FAMILIES)
def test_plan_reload_is_bit_identical(name, tmp_path):
    model, make_inputs, pruner, _ = _pruned(name)
    pruner.prune()
    fp.save_pruned(model, fp.make_plan(pruner), tmp_path / "m")
    loaded, _ = fp.load_pruned(tmp_path / "m", model_factory=lambda: hf_zoo.build(name, seed=3)[0])
    for a, b in zip(_outputs(model, make_inputs), _outputs(loaded.eval(), make_inputs)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", [n for n in FAMILIES if n != "torch_encoder"])
def test_hugging_face_folder_reload_is_bit_identical(name, tmp_path):
    model, make_inputs, pruner, _ = _pruned(name)
    pruner.prune()
    save_pruned_pretrained(model, tmp_path / "m", pruner.history)
    loaded = load_pruned_pretrained(tmp_path / "m")
    assert A.heads_per_layer(loaded) == A.heads_per_layer(model)
    assert A.kv_heads_per_layer(loaded) == A.kv_heads_per_layer(model)
    assert A.ffn_per_layer(loaded) == A.ffn_per_layer(model)
    for a, b in zip(_outputs(model, make_inputs), _outputs(loaded, make_inputs)):
        assert torch.equal(a, b)


def _mislabel(us):
    """Shift the unit labels of the set's consumer slices by one: the layout now claims that
    unit u is read through the columns of unit u + 1 (a wrong mapping)."""
    for s in us.slices:
        if s.role == "consumer":
            s.unit = (s.unit + 1) % us.size


@pytest.mark.parametrize("name", FAMILIES)
def test_a_unit_set_mapped_wrongly_raises_and_leaves_the_model_unchanged(name):
    model, make_inputs = hf_zoo.build(name)
    pruner = fp.ForcePruner(model, make_inputs(1, 7))
    us = next(u for u in pruner.unit_sets if u.kind in ("head", "kv_group", "neuron") and u.removal == "either")
    _mislabel(us)
    mask = torch.zeros(us.size, dtype=torch.bool)
    mask[0] = True
    for s in us.slices:  # "nobody reads unit 0", by the wrong mapping
        if s.role == "consumer":
            s.zero_(s.param.data, mask)
    before = _outputs(model, make_inputs)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    with pytest.raises(LossyRemovalError) as info:
        pruner.prune(calibration_inputs=make_inputs(2, 9))
    assert info.value.unit_sets == [us.name] and info.value.layouts == [us.layout]
    assert us.name in str(info.value) and us.layout in str(info.value)
    assert {k: v.shape for k, v in model.state_dict().items()} == shapes
    for b, a in zip(before, _outputs(model, make_inputs)):
        assert torch.equal(a, b)


def test_the_residual_stream_mapped_wrongly_raises():
    model, make_inputs = hf_zoo.build("llama")
    pruner = fp.ForcePruner(model, make_inputs(1, 7))
    hidden = next(u for u in pruner.unit_sets if u.kind == "hidden")
    writer = next(s for s in hidden.slices if s.module_name.endswith("layers.1.mlp.down_proj"))
    writer.unit = (writer.unit + 1) % hidden.size  # down_proj's row 5 claimed to be channel 4
    mask = torch.zeros(hidden.size, dtype=torch.bool)
    mask[4] = True
    hidden.zero_(mask, "all")  # the real channel 4 keeps its down_proj row
    with pytest.raises(LossyRemovalError, match="rmsnorm-residual-stream"):
        pruner.prune(calibration_inputs=make_inputs(2, 9))
    assert model.model.embed_tokens.weight.shape == (hf_zoo.VOCAB, 64)


def test_a_llama_layer_counts_macs_by_hand():
    """One decoder layer of hidden 64, 4 query / 2 key-value heads of 16, FFN 96, vocab 128,
    7 tokens. torch-pruning's counter charges a bias-free linear tokens * in * out; attention's
    q k^T and attn v cost heads * tokens^2 * head_dim each, for every *query* head (grouped
    keys and values are shared, not skipped)."""
    cfg = transformers.LlamaConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                                   intermediate_size=96, vocab_size=128)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    t = 7
    ids = {"input_ids": torch.randint(0, 128, (1, t))}
    projections = t * 64 * (4 * 16 + 2 * 16 + 2 * 16) + t * 64 * 64  # q, k, v; o
    mlp = 3 * t * 64 * 96
    attention = 2 * 4 * t * t * 16
    head = t * 64 * 128
    macs, params = fp.count_macs_params(model, ids)
    assert macs == projections + mlp + attention + head
    pruner = fp.ForcePruner(model, ids)
    sets = {us.name: us for us in pruner.unit_sets}
    sets["model.layers.0.self_attn"].zero_(torch.tensor([False, True]), "all")  # one kv group: 2 query heads
    report = pruner.prune()
    dropped = t * 64 * (2 * 16 + 16 + 16) + t * 32 * 64 + 2 * 2 * t * t * 16
    assert report.macs_before - report.macs_after == dropped
