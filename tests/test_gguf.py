"""A GGUF file written here (a tiny Llama with grouped-query attention and a byte-level BPE
vocabulary, float32 tensors) goes through the one pipeline as the 135 M model's Q4_1 file does:
loaded offline with gguf + transformers, pruned, saved (plan + safetensors and a plain folder)
and reloaded."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")
pytest.importorskip("accelerate")

from forceprune.runs import config_from_dict, evaluate_run, run  # noqa: E402
from forceprune.text.lm import load_causal_lm  # noqa: E402
from test_lm import _text  # noqa: E402


def _byte_level_alphabet() -> list[str]:
    """GPT-2's printable stand-ins for the 256 bytes (what a byte-level BPE vocabulary spells)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def write_tiny_gguf(path: Path, hidden=32, layers=2, heads=4, kv_heads=2, ffn=48, seed=0) -> Path:
    """A Llama GGUF file: ``layers`` decoder layers of ``heads`` query / ``kv_heads`` key-value
    heads, FFN ``ffn``, tied embeddings, and a 260-token byte-level BPE vocabulary."""
    g = torch.Generator().manual_seed(seed)
    tokens = ["<|endoftext|>", *_byte_level_alphabet(), "Ġt", "he", "Ġthe"]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(layers)
    w.add_context_length(64)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(hidden // heads)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([1] * len(tokens))
    w.add_token_merges(["Ġ t", "h e", "Ġt he"])
    w.add_bos_token_id(0)
    w.add_eos_token_id(0)

    def weight(name, *shape):
        w.add_tensor(name, (torch.randn(shape, generator=g) * 0.05).numpy())

    kv = kv_heads * (hidden // heads)
    weight("token_embd.weight", len(tokens), hidden)
    for i in range(layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", torch.ones(hidden).numpy())
        weight(f"blk.{i}.attn_q.weight", hidden, hidden)
        weight(f"blk.{i}.attn_k.weight", kv, hidden)
        weight(f"blk.{i}.attn_v.weight", kv, hidden)
        weight(f"blk.{i}.attn_output.weight", hidden, hidden)
        w.add_tensor(f"blk.{i}.ffn_norm.weight", torch.ones(hidden).numpy())
        weight(f"blk.{i}.ffn_gate.weight", ffn, hidden)
        weight(f"blk.{i}.ffn_up.weight", ffn, hidden)
        weight(f"blk.{i}.ffn_down.weight", hidden, ffn)
    w.add_tensor("output_norm.weight", torch.ones(hidden).numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_a_gguf_model_loads_as_an_ordinary_float_model(tmp_path):
    model, tokenizer = load_causal_lm(write_tiny_gguf(tmp_path / "tiny.gguf"))
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_key_value_heads == 2
    assert getattr(model, "hf_quantizer", None) is None, "de-quantised: nothing left that save_pretrained refuses"
    assert all(p.dtype == torch.float32 for p in model.parameters()) and len(tokenizer) == 260
    model.save_pretrained(str(tmp_path / "saved"))


def test_a_gguf_model_is_pruned_saved_and_reloaded(tmp_path):
    _text(tmp_path)
    gguf_file = write_tiny_gguf(tmp_path / "tiny.gguf")
    out = tmp_path / "run"
    config = config_from_dict({
        "task": "language_modeling", "model": str(gguf_file), "data_dir": str(tmp_path), "context": 16,
        "train_tokens": 1024, "eval_tokens": 256, "batch_size": 4, "epochs": 2.0, "finetune_epochs": 0.5, "lr": 5e-3,
        "warmup_ratio": 0.0, "force_options": {"beta": 0.5, "pivot": "ranked"}, "target_nonembedding": 0.8,
        "budget": {"every": 2, "uniform": True}, "spare_keepers": True, "importance": "activation",
        "prune_kinds": ["neuron"], "generate_tokens": 2, "latency_repeats": 1, "output_dir": str(out)})
    report = run(config, progress=False)
    assert report["max_output_error"] < 1e-5 and report["ppl_after_removal"] == pytest.approx(report["ppl_before_removal"])
    assert report["nonembedding_params_after"] / report["nonembedding_params_before"] < 0.85
    assert len(set(report["ffn_after"])) == 1 and report["ffn_after"][0] < 48, "uniform widths"
    assert json.loads((out / "report.json").read_text())["ppl_final"] == report["ppl_final"]
    assert evaluate_run(out)["perplexity"] == pytest.approx(report["ppl_final"], rel=1e-9), "reloads bit-identical"
    import transformers

    plain = transformers.AutoModelForCausalLM.from_pretrained(str(out / "model"), dtype=torch.float32)
    assert plain.model.layers[0].mlp.up_proj.out_features == report["ffn_after"][0], "a plain folder, no forceprune"
