"""A zoo of tiny, randomly initialised transformer families (no downloads): one builder per
family, each returning the model in eval mode and a function making inputs of a given batch
size and sequence length. Widths are tiny (hidden 32-72, 2 layers) so every test over the zoo
runs in about a second per model on a CPU.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import transformers as T

VOCAB = 128


def _tokens(batch: int, length: int, seed: int = 1) -> dict:
    ids = torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed + 7 * batch + length))
    return {"input_ids": ids}


def _decoder(cfg):
    return T.AutoModelForCausalLM.from_config(cfg)


def gpt2():
    return _decoder(T.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_inner=48, vocab_size=VOCAB, n_positions=64,
                                 attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0)), _tokens


def llama():
    return _decoder(T.LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  intermediate_size=96, vocab_size=VOCAB)), _tokens


def llama_mha():
    """Llama without grouped-query attention: every key/value group is one head."""
    return _decoder(T.LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                  intermediate_size=96, vocab_size=VOCAB)), _tokens


def smollm():
    """SmolLM2's shape, shrunk: 9 query heads over 3 key/value heads, tied embeddings."""
    return _decoder(T.LlamaConfig(hidden_size=72, num_hidden_layers=2, num_attention_heads=9, num_key_value_heads=3,
                                  intermediate_size=96, vocab_size=VOCAB, tie_word_embeddings=True)), _tokens


def mistral():
    return _decoder(T.MistralConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                    intermediate_size=96, vocab_size=VOCAB, sliding_window=None)), _tokens


def qwen2():
    """Qwen2: q/k/v projections with biases."""
    return _decoder(T.Qwen2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  intermediate_size=96, vocab_size=VOCAB, use_sliding_window=False)), _tokens


def qwen3():
    """Qwen3: RMS norms on q and k over the head dimension, an explicit head_dim."""
    return _decoder(T.Qwen3Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  head_dim=16, intermediate_size=96, vocab_size=VOCAB,
                                  use_sliding_window=False)), _tokens


def phi3():
    """Phi-3: fused qkv_proj and fused gate_up_proj."""
    return _decoder(T.Phi3Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                 intermediate_size=96, vocab_size=VOCAB, pad_token_id=0, bos_token_id=1,
                                 eos_token_id=2)), _tokens


def vit():
    cfg = T.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, image_size=16,
                      patch_size=4, num_labels=3)

    def images(batch: int, length: int, seed: int = 1) -> torch.Tensor:
        return torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(seed + batch))

    return T.ViTForImageClassification(cfg), images


def bert():
    cfg = T.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=37, max_position_embeddings=64, num_labels=2)
    return T.BertForSequenceClassification(cfg), _tokens


def roberta():
    cfg = T.RobertaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=37, max_position_embeddings=64, num_labels=2, pad_token_id=1)

    def tokens(batch: int, length: int, seed: int = 1) -> dict:
        return {"input_ids": _tokens(batch, length, seed)["input_ids"].clamp_min(3)}

    return T.RobertaForSequenceClassification(cfg), tokens


def distilbert():
    cfg = T.DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=37, max_position_embeddings=64)
    return T.DistilBertForSequenceClassification(cfg), _tokens


class TorchEncoder(nn.Module):
    """Two ``nn.TransformerEncoderLayer`` s (4 heads) on token embeddings, then a classifier."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 32)
        self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 37, dropout=0.0, batch_first=True), 2,
                                             enable_nested_tensor=False)
        self.head = nn.Linear(32, 3)

    def forward(self, input_ids):
        return self.head(self.encoder(self.embed(input_ids)).mean(1))


def torch_encoder():
    return TorchEncoder(), _tokens


#: family -> builder; the decoders are the ones that generate()
FAMILIES = {
    "gpt2": gpt2, "llama": llama, "llama_mha": llama_mha, "smollm": smollm, "mistral": mistral, "qwen2": qwen2,
    "qwen3": qwen3, "phi3": phi3, "vit": vit, "bert": bert, "roberta": roberta, "distilbert": distilbert,
    "torch_encoder": torch_encoder,
}
DECODERS = ("gpt2", "llama", "llama_mha", "smollm", "mistral", "qwen2", "qwen3", "phi3")


def build(name: str, seed: int = 0):
    """``(model in eval mode, make_inputs(batch, length))`` of a family, with non-trivial
    biases and norm weights (randomly initialised ones are zeros and ones, which would hide
    surgery that forgets them)."""
    torch.manual_seed(seed)
    model, make_inputs = FAMILIES[name]()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("bias") or "norm" in n.lower() or n.endswith("ln_1.weight") or n.endswith("ln_2.weight"):
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval(), make_inputs
