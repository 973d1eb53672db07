"""Attention heads and FFN neurons as units: HF BERT, nn.MultiheadAttention and a plain ViT."""
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import forceprune as fp
from forceprune import attention as A
from forceprune._torch import run_model
from forceprune.metrics import functional_macs

transformers = pytest.importorskip("transformers")
from transformers import BertConfig, BertForSequenceClassification  # noqa: E402

from forceprune.integrations.transformers import record_pruning  # noqa: E402



# ------------------------------------------------------------------------------------------------
# models
# ------------------------------------------------------------------------------------------------
def tiny_bert(seed=0, attn="sdpa"):
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        max_position_embeddings=64, num_labels=2, attn_implementation=attn,
    )
    model = BertForSequenceClassification(cfg).eval()
    ids = torch.randint(1, 100, (3, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0  # a padded sentence
    return model, {"input_ids": ids[:1], "attention_mask": mask[:1]}, {"input_ids": ids, "attention_mask": mask}


class FusedAttention(nn.Module):
    """timm-style attention: one fused qkv Linear, rows ordered (3, heads, head_dim)."""

    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, -1))


class Block(nn.Module):
    def __init__(self, dim, heads, hidden):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), FusedAttention(dim, heads)
        self.norm2, self.fc1, self.fc2 = nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class TinyViT(nn.Module):
    def __init__(self, dim=32, depth=2, heads=4, hidden=37, classes=3):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, 4)
        self.pos = nn.Parameter(torch.randn(1, 16, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, hidden) for _ in range(depth)])
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, classes)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2) + self.pos
        return self.head(self.norm(self.blocks(x)).mean(1))


class MHAEncoder(nn.Module):
    """Two nn.TransformerEncoderLayers (4 heads each) on token embeddings, with padding masks."""

    def __init__(self, dim=32, heads=4, hidden=37, batch_first=True):
        super().__init__()
        self.embed = nn.Embedding(20, dim)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, heads, hidden, dropout=0.0, batch_first=batch_first) for _ in range(2)
        )
        self.head = nn.Linear(dim, 3)
        self.batch_first = batch_first

    def forward(self, tokens):
        pad = tokens == 0
        x = self.embed(tokens)
        if not self.batch_first:
            x = x.transpose(0, 1)
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=pad)
        if not self.batch_first:
            x = x.transpose(0, 1)
        return self.head(x.mean(1))


def _tokens():
    t = torch.randint(1, 20, (4, 7), generator=torch.Generator().manual_seed(2))
    t[0, 5:] = 0
    return t


def _zero_heads(us, heads, include="all"):
    mask = torch.zeros(us.size, dtype=torch.bool)
    mask[list(heads)] = True
    us.zero_(mask, include)


def _by_name(pruner):
    return {us.name: us for us in pruner.unit_sets}


def _prune_and_compare(model, pruner, calib):
    with torch.no_grad():
        before = run_model(model, calib)
    report = pruner.prune(calibration_inputs=calib)
    with torch.no_grad():
        after = run_model(model, calib)
    b = before.logits if hasattr(before, "logits") else before
    a = after.logits if hasattr(after, "logits") else after
    return report, float((a - b).abs().max() / b.abs().max())


# ------------------------------------------------------------------------------------------------
# HF BERT
# ------------------------------------------------------------------------------------------------
def test_bert_unit_sets_are_heads_and_neurons():
    model, ex, _ = tiny_bert()
    sets = _by_name(fp.ForcePruner(model, ex))
    att = sets["bert.encoder.layer.0.attention"]
    assert (att.kind, att.size, att.channels_per_unit, att.root_name) == ("head", 4, 8, "bert.encoder.layer.0.attention.self.query")
    slices = {(s.module_name, s.param_name, s.role) for s in att.slices}
    for p in ("query", "key", "value"):
        assert (f"bert.encoder.layer.0.attention.self.{p}", "weight", "producer_weight") in slices
        assert (f"bert.encoder.layer.0.attention.self.{p}", "bias", "producer_other") in slices
    assert ("bert.encoder.layer.0.attention.output.dense", "weight", "consumer") in slices
    ffn = sets["bert.encoder.layer.0.intermediate.dense"]
    assert (ffn.kind, ffn.size) == ("neuron", 37)
    assert {s.module_name for s in ffn.slices} == {"bert.encoder.layer.0.intermediate.dense", "bert.encoder.layer.0.output.dense"}
    # no channel-level group touches a projection that a head set owns
    owned = {s.module_name for us in sets.values() if us.kind != "channel" for s in us.slices}
    assert not any(s.module_name in owned for us in sets.values() if us.kind == "channel" for s in us.slices)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_a_head_spans_the_same_rows_of_q_k_v_and_columns_of_the_output(attn):
    """Head 2 of a BERT layer is rows 16..23 of query, key and value (weights and biases) and
    columns 16..23 of the output projection; the block is opaque to torch-pruning's graph
    (no channel group reaches inside it) and its surgery is the layout's own."""
    model, ex, _ = tiny_bert(attn=attn)
    pruner = fp.ForcePruner(model, ex)
    us = _by_name(pruner)["bert.encoder.layer.1.attention"]
    base = "bert.encoder.layer.1.attention."
    rows = tuple(range(16, 24))
    touched = {(s.module_name, s.param_name, s.dim, tuple(sorted(s.index[s.unit == 2].tolist()))) for s in us.slices}
    expected = {(base + f"self.{p}", w, 0, rows) for p in ("query", "key", "value") for w in ("weight", "bias")}
    assert touched == expected | {(base + "output.dense", "weight", 1, rows)}
    assert us.root_fn is fp.units.OWN_SURGERY
    assert model.bert.encoder.layer[1].attention.self.query not in pruner.graph.module2node


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_bert_zero_heads_and_neurons_removed_unevenly_outputs_unchanged(attn):
    model, ex, calib = tiny_bert(attn=attn)
    pruner = fp.ForcePruner(model, ex)
    sets = _by_name(pruner)
    _zero_heads(sets["bert.encoder.layer.0.attention"], [1, 2])
    _zero_heads(sets["bert.encoder.layer.1.attention"], [3])
    _zero_heads(sets["bert.encoder.layer.1.intermediate.dense"], range(5, 20))
    report, err = _prune_and_compare(model, pruner, calib)
    assert err < 1e-5 and report.max_output_error < 1e-5
    assert A.heads_per_layer(model) == {"bert.encoder.layer.0.attention": 2, "bert.encoder.layer.1.attention": 3}
    assert list(A.ffn_per_layer(model).values()) == [37, 22]
    sa0, sa1 = (model.bert.encoder.layer[i].attention.self for i in (0, 1))
    assert (sa0.num_attention_heads, sa0.all_head_size, sa0.attention_head_size) == (2, 16, 8)
    assert (sa1.num_attention_heads, sa1.all_head_size) == (3, 24)
    assert sa0.query.weight.shape == sa0.key.weight.shape == sa0.value.weight.shape == (16, 32)
    assert model.bert.encoder.layer[0].attention.output.dense.weight.shape == (32, 16)
    assert getattr(model.config, "forceprune", None) is None  # layouts do surgery only; the record is HF's
    record_pruning(model, report)
    assert model.config.forceprune == {
        "kept_heads": {"encoder.layer.0.attention": [0, 3], "encoder.layer.1.attention": [0, 1, 2]},
        "intermediate_size": {"encoder.layer.1": 22},
    }
    # a second round composes the recorded original head indices
    pruner2 = fp.ForcePruner(model, ex)
    _zero_heads(_by_name(pruner2)["bert.encoder.layer.0.attention"], [0])
    report2, err = _prune_and_compare(model, pruner2, calib)
    assert err < 1e-5
    record_pruning(model, report2)
    assert model.config.forceprune["kept_heads"]["encoder.layer.0.attention"] == [3]


def test_distilbert_heads_and_neurons():
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    torch.manual_seed(0)
    cfg = DistilBertConfig(vocab_size=100, dim=32, n_layers=2, n_heads=4, hidden_dim=37, max_position_embeddings=64)
    model = DistilBertForSequenceClassification(cfg).eval()
    ids = torch.randint(1, 100, (3, 9), generator=torch.Generator().manual_seed(1))
    pruner = fp.ForcePruner(model, {"input_ids": ids[:1]})
    sets = _by_name(pruner)
    assert sets["distilbert.transformer.layer.0.attention"].kind == "head"
    assert sets["distilbert.transformer.layer.0.ffn.lin1"].kind == "neuron"
    _zero_heads(sets["distilbert.transformer.layer.0.attention"], [0, 1])
    _zero_heads(sets["distilbert.transformer.layer.1.ffn.lin1"], range(20))
    report, err = _prune_and_compare(model, pruner, {"input_ids": ids})
    assert err < 1e-5
    assert model.distilbert.transformer.layer[0].attention.n_heads == 2
    record_pruning(model, report)
    assert model.config.forceprune["kept_heads"] == {"transformer.layer.0.attention": [2, 3]}
    assert model.config.forceprune["intermediate_size"] == {"transformer.layer.1.ffn": 17}


def test_bert_head_with_zero_weights_but_live_biases_is_folded():
    """Q/K/V weights zero, biases not: the head emits its value bias everywhere (softmax rows
    sum to one); the constant is folded into the output projection's bias."""
    model, ex, calib = tiny_bert()
    pruner = fp.ForcePruner(model, ex)
    _zero_heads(_by_name(pruner)["bert.encoder.layer.0.attention"], [1], include="weights")
    report, err = _prune_and_compare(model, pruner, calib)
    assert err < 1e-5
    assert A.heads_per_layer(model)["bert.encoder.layer.0.attention"] == 3


def test_bert_macs_include_attention_matmuls_and_shrink_with_heads():
    model, ex, _ = tiny_bert()
    seq = ex["input_ids"].shape[1]
    matmuls = functional_macs(model, ex)
    assert matmuls == 2 * 2 * seq * seq * 32  # 2 layers x (QK^T + AV) x L x L x all_head_size
    macs_before, _ = fp.count_macs_params(model, ex)
    pruner = fp.ForcePruner(model, ex)
    _zero_heads(_by_name(pruner)["bert.encoder.layer.0.attention"], [1, 2])
    report = pruner.prune()
    assert report.macs_before == macs_before
    assert functional_macs(model, ex) == 2 * seq * seq * 16 + 2 * seq * seq * 32
    # the rest: Q, K, V rows and O columns of 2 heads (8 dims each, hidden 32); torch-pruning's
    # counter charges a linear layer seq * in * out plus one MAC per bias entry
    linear_drop = 3 * (seq * 32 * 16 + 16) + seq * 32 * 16
    assert report.macs_before - report.macs_after == linear_drop + 2 * seq * seq * 16


def test_all_heads_zero_keeps_one_and_says_so():
    model, ex, calib = tiny_bert()
    pruner = fp.ForcePruner(model, ex)
    _zero_heads(_by_name(pruner)["bert.encoder.layer.1.attention"], range(4))
    report, _ = _prune_and_compare(model, pruner, calib)
    assert A.heads_per_layer(model)["bert.encoder.layer.1.attention"] == 1
    assert any("bert.encoder.layer.1.attention" in w and "kept one" in w for w in report.warnings)


def test_ranked_pivot_anchors_on_the_strongest_head():
    model, ex, _ = tiny_bert()
    with torch.no_grad():
        sa = model.bert.encoder.layer[0].attention.self
        for lin in (sa.query, sa.key, sa.value):
            lin.weight[16:24] *= 5  # head 2 becomes the largest
    pruner = fp.ForcePruner(model, ex, force="etp", pivot="ranked")
    field = {f["name"]: f for f in pruner.force_field()}["bert.encoder.layer.0.attention"]
    assert field["pivot"] == 2
    assert min(field["weights"]) == field["weights"][2]
    order = sorted(range(4), key=lambda h: -field["norms"][h])
    assert [field["weights"][h] for h in order] == sorted(field["weights"])  # weaker head, stronger force
    assert torch.isfinite(pruner.penalty())


def test_width_mode_on_heads_keeps_the_requested_count():
    model, ex, calib = tiny_bert()
    pruner = fp.ForcePruner(model, ex, force="etp", pivot="ranked")
    report = pruner.prune(widths={"bert.encoder.layer.0.attention": 1}, calibration_inputs=calib)
    assert A.heads_per_layer(model)["bert.encoder.layer.0.attention"] == 1
    assert report.mode == "width"
    with torch.no_grad():
        model(**calib)


def test_training_with_heads_captures_exact_zeros():
    model, ex, calib = tiny_bert()
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    pruner = fp.ForcePruner(model, ex, force="etp", beta=2.0, pivot="ranked", optimizer=opt)
    labels = torch.tensor([0, 1, 1])
    for _ in range(40):
        loss = model(**calib, labels=labels).loss + pruner.penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
        pruner.step()
    heads = [us for us in pruner.unit_sets if us.kind == "head"]
    assert sum(int(us.dead.sum()) for us in heads) > 0
    model.eval()
    _, err = _prune_and_compare(model, pruner, calib)
    assert err < 1e-5


# ------------------------------------------------------------------------------------------------
# nn.MultiheadAttention
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("batch_first", [True, False])
def test_mha_heads_removed_unevenly_outputs_unchanged(batch_first):
    torch.manual_seed(0)
    model, x = MHAEncoder(batch_first=batch_first).eval(), _tokens()
    pruner = fp.ForcePruner(model, x[:1])
    sets = _by_name(pruner)
    assert sets["layers.0.self_attn"].kind == "head" and sets["layers.0.self_attn"].size == 4
    assert sets["layers.0.linear1"].kind == "neuron"
    _zero_heads(sets["layers.0.self_attn"], [0, 2])
    _zero_heads(sets["layers.1.self_attn"], [3])
    _zero_heads(sets["layers.1.linear1"], range(30, 37))
    report, err = _prune_and_compare(model, pruner, x)
    assert err < 1e-5, err
    attn0, attn1 = model.layers[0].self_attn, model.layers[1].self_attn
    assert isinstance(attn0, A.PrunedMultiheadAttention)
    assert (attn0.num_heads, attn0.kept_heads, attn1.num_heads) == (2, [1, 3], 3)
    assert A.heads_per_layer(model) == {"layers.0.self_attn": 2, "layers.1.self_attn": 3}
    assert model.layers[1].linear1.out_features == 30
    assert report.macs_after < report.macs_before
    # grad-enabled (training-style) forward agrees too, and a second round works on the new module
    pruner2 = fp.ForcePruner(model, x[:1])
    _zero_heads(_by_name(pruner2)["layers.1.self_attn"], [0])
    _, err = _prune_and_compare(model, pruner2, x)
    assert err < 1e-5
    assert model.layers[1].self_attn.kept_heads == [1, 2]


@pytest.mark.parametrize("need_weights", [True, False])
@pytest.mark.parametrize("batch_first", [True, False])
def test_pruned_mha_with_all_heads_equals_multihead_attention(need_weights, batch_first):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    new = A.PrunedMultiheadAttention.from_multihead_attention(mha, range(4)).eval()
    q = torch.randn(3, 5, 16)
    kv = torch.randn(3, 6, 16)
    if not batch_first:
        q, kv = q.transpose(0, 1), kv.transpose(0, 1)
    kpm = torch.zeros(3, 6)
    kpm[1, 4:] = float("-inf")
    mask = torch.zeros(5, 6).masked_fill(torch.rand(5, 6) > 0.8, float("-inf"))
    mask[:, 0] = 0
    a, wa = mha(q, kv, kv, key_padding_mask=kpm, attn_mask=mask, need_weights=need_weights)
    b, wb = new(q, kv, kv, key_padding_mask=kpm, attn_mask=mask, need_weights=need_weights)
    assert torch.allclose(a, b, atol=1e-5)
    if need_weights:
        assert torch.allclose(wa, wb, atol=1e-6)
    # unbatched and causal
    a, _ = mha(q[0] if batch_first else q[:, 0], kv[0] if batch_first else kv[:, 0], kv[0] if batch_first else kv[:, 0])
    b, _ = new(q[0] if batch_first else q[:, 0], kv[0] if batch_first else kv[:, 0], kv[0] if batch_first else kv[:, 0])
    assert torch.allclose(a, b, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# plain ViT with a fused qkv
# ------------------------------------------------------------------------------------------------
def test_vit_fused_qkv_heads_removed_unevenly_outputs_unchanged():
    torch.manual_seed(0)
    model, x = TinyViT().eval(), torch.randn(4, 3, 16, 16)
    pruner = fp.ForcePruner(model, x[:1])
    sets = _by_name(pruner)
    assert (sets["blocks.0.attn"].kind, sets["blocks.0.attn"].size, sets["blocks.0.attn"].channels_per_unit) == ("head", 4, 8)
    assert sets["blocks.0.fc1"].kind == "channel"  # a plain MLP keeps torch-pruning's channel group
    _zero_heads(sets["blocks.0.attn"], [1])
    _zero_heads(sets["blocks.1.attn"], [0, 2, 3])
    _zero_heads(sets["blocks.1.fc1"], range(10))
    report, err = _prune_and_compare(model, pruner, x)
    assert err < 1e-5
    assert (model.blocks[0].attn.num_heads, model.blocks[1].attn.num_heads) == (3, 1)
    assert model.blocks[0].attn.qkv.weight.shape == (72, 32) and model.blocks[0].attn.proj.weight.shape == (32, 24)
    assert report.macs_after < report.macs_before
    # a second round on the pruned model
    pruner2 = fp.ForcePruner(model, x[:1])
    _zero_heads(_by_name(pruner2)["blocks.0.attn"], [2])
    _, err = _prune_and_compare(model, pruner2, x)
    assert err < 1e-5 and model.blocks[0].attn.num_heads == 2


def test_vit_heads_rows_sit_at_three_offsets():
    torch.manual_seed(0)
    model, x = TinyViT().eval(), torch.randn(1, 3, 16, 16)
    us = _by_name(fp.ForcePruner(model, x))["blocks.0.attn"]
    qkv = next(s for s in us.slices if s.param_name == "weight" and s.role == "producer_weight")
    rows_of_head1 = sorted(qkv.index[qkv.unit == 1].tolist())
    assert rows_of_head1 == [o + j for o in (8, 40, 72) for j in range(8)]


# ------------------------------------------------------------------------------------------------
# unrecognised layouts
# ------------------------------------------------------------------------------------------------
class OddAttention(nn.Module):
    def __init__(self, dim=16, heads=2):
        super().__init__()
        self.n_heads, self.dh = heads, dim // heads
        self.a, self.b, self.c, self.d = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x):
        bsz, n, _ = x.shape
        q, k, v = (lin(x).view(bsz, n, self.n_heads, self.dh).transpose(1, 2) for lin in (self.a, self.b, self.c))
        return self.d(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(bsz, n, -1))


class OddNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp, self.attn, self.fc, self.out = nn.Linear(8, 16), OddAttention(), nn.Linear(16, 12), nn.Linear(12, 3)

    def forward(self, x):
        return self.out(F.relu(self.fc(self.attn(self.inp(x)))))


def test_unrecognised_attention_is_left_alone_with_a_message_and_can_be_registered():
    torch.manual_seed(0)
    model, x = OddNet().eval(), torch.randn(2, 5, 8)
    with pytest.warns(A.UnmappedAttentionWarning) as rec:
        pruner = fp.ForcePruner(model, x[:1])
    msg = str(rec[0].message)
    assert "attn (OddAttention)" in msg and "register_attention_layout" in msg and "SeparateHeads" in msg
    touched = {s.module_name for us in pruner.unit_sets for s in us.slices}
    assert not touched & {"attn.a", "attn.b", "attn.c", "attn.d"}
    assert "fc" in {us.name for us in pruner.unit_sets}
    layout = A.SeparateHeads("odd", q="a", k="b", v="c", o="d", num_heads="n_heads", head_dim="dh", match_type=OddAttention)
    A.register_attention_layout(layout)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", A.UnmappedAttentionWarning)
            pruner = fp.ForcePruner(model, x[:1])
        us = _by_name(pruner)["attn"]
        assert (us.kind, us.size) == ("head", 2)
        _zero_heads(us, [1])
        _, err = _prune_and_compare(model, pruner, x)
        assert err < 1e-5 and model.attn.n_heads == 1 and model.attn.a.out_features == 8
    finally:
        A.unregister_attention_layout(layout)


def test_squeeze_excitation_named_attention_is_not_flagged():
    class ChannelAttention(nn.Module):  # SE block: two linears, no heads
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(8, 4), nn.Linear(4, 8)

        def forward(self, x):
            return x * torch.sigmoid(self.fc2(F.relu(self.fc1(x))))

    model = nn.Sequential(nn.Linear(8, 8), ChannelAttention(), nn.Linear(8, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error", A.UnmappedAttentionWarning)
        fp.ForcePruner(model, torch.randn(1, 8))
