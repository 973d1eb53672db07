"""``nn.MultiheadAttention`` with fewer heads.

``nn.MultiheadAttention`` cannot hold fewer heads than ``embed_dim / head_dim`` (its forward
assumes ``3 * embed_dim`` packed rows), so removing heads from one replaces it with a
:class:`PrunedMultiheadAttention`: the same call signature and outputs, with separate q/k/v
``nn.Linear`` projections of width ``heads * head_dim``.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .slicing import head_rows


class PrunedMultiheadAttention(nn.Module):
    """Drop-in for ``nn.MultiheadAttention`` after head removal: same call signature and
    outputs, with separate ``q_proj``/``k_proj``/``v_proj`` (``embed_dim -> heads * head_dim``)
    and ``out_proj`` (``heads * head_dim -> embed_dim``). ``kept_heads`` lists the original
    head indices (a per-head 3-D ``attn_mask`` of the original model is sliced to them).

    ``_qkv_same_embed_dim`` is ``False`` and ``in_proj_weight``/``in_proj_bias`` are ``None``
    so that ``nn.TransformerEncoderLayer``'s fused fast path (which assumes the full head
    count) is never taken."""

    def __init__(
        self, embed_dim: int, num_heads: int, head_dim: int, *, kdim: int | None = None, vdim: int | None = None,
        bias: bool = True, out_bias: bool = True, dropout: float = 0.0, batch_first: bool = False,
        kept_heads: Sequence[int] | None = None, orig_num_heads: int | None = None, device=None, dtype=None,
    ) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, head_dim
        self.kdim, self.vdim = kdim or embed_dim, vdim or embed_dim
        self.dropout, self.batch_first = dropout, batch_first
        inner = num_heads * head_dim
        self.q_proj = nn.Linear(embed_dim, inner, bias=bias, **kw)
        self.k_proj = nn.Linear(self.kdim, inner, bias=bias, **kw)
        self.v_proj = nn.Linear(self.vdim, inner, bias=bias, **kw)
        self.out_proj = nn.Linear(inner, embed_dim, bias=out_bias, **kw)
        self.kept_heads = list(kept_heads) if kept_heads is not None else list(range(num_heads))
        self.orig_num_heads = orig_num_heads or num_heads
        self._qkv_same_embed_dim = False
        self.in_proj_weight = None
        self.in_proj_bias = None
        self.bias_k = self.bias_v = None
        self.add_zero_attn = False

    @classmethod
    def from_multihead_attention(cls, mha: nn.MultiheadAttention, kept: Sequence[int]) -> "PrunedMultiheadAttention":
        d, e = mha.head_dim, mha.embed_dim
        w = mha.in_proj_weight
        ref = w if w is not None else mha.q_proj_weight
        new = cls(
            e, len(kept), d, kdim=mha.kdim, vdim=mha.vdim, bias=mha.in_proj_bias is not None,
            out_bias=mha.out_proj.bias is not None, dropout=mha.dropout, batch_first=mha.batch_first,
            kept_heads=kept, orig_num_heads=mha.num_heads, device=ref.device, dtype=ref.dtype,
        )
        with torch.no_grad():
            for c, proj in enumerate((new.q_proj, new.k_proj, new.v_proj)):
                rows = torch.as_tensor(head_rows(kept, d), device=ref.device)
                if w is not None:
                    src = w[c * e : (c + 1) * e]
                else:
                    src = (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)[c]
                proj.weight.copy_(src.index_select(0, rows))
                proj.weight.requires_grad_(ref.requires_grad)
                if mha.in_proj_bias is not None:
                    proj.bias.copy_(mha.in_proj_bias[c * e : (c + 1) * e].index_select(0, rows))
            cols = torch.as_tensor(head_rows(kept, d), device=ref.device)
            new.out_proj.weight.copy_(mha.out_proj.weight.index_select(1, cols))
            if mha.out_proj.bias is not None:
                new.out_proj.bias.copy_(mha.out_proj.bias)
        new.train(mha.training)
        return new

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, head_dim={self.head_dim}, kept_heads={self.kept_heads}"

    def _mask(self, mask: torch.Tensor | None, dtype, bsz: int, tgt: int, src: int) -> torch.Tensor | None:
        if mask is None:
            return None
        if mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
        else:
            mask = mask.to(dtype)
        if mask.dim() == 3:  # (bsz * heads, tgt, src): per head, in the original head numbering
            if mask.shape[0] == bsz * self.orig_num_heads:
                mask = mask.view(bsz, self.orig_num_heads, tgt, src)[:, self.kept_heads]
            else:
                mask = mask.view(bsz, -1, tgt, src)
        return mask

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True, attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
        is_causal: bool = False,
    ):
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        tgt, bsz, _ = query.shape
        src = key.shape[0]
        h, d = self.num_heads, self.head_dim
        q = self.q_proj(query).view(tgt, bsz, h, d).permute(1, 2, 0, 3)
        k = self.k_proj(key).view(src, bsz, h, d).permute(1, 2, 0, 3)
        v = self.v_proj(value).view(src, bsz, h, d).permute(1, 2, 0, 3)
        mask = self._mask(attn_mask, q.dtype, bsz, tgt, src)
        if is_causal and mask is None:
            mask = torch.full((tgt, src), float("-inf"), dtype=q.dtype, device=q.device).triu(1)
        kpm = self._mask(key_padding_mask, q.dtype, bsz, tgt, src)
        if kpm is not None:
            kpm = kpm.view(bsz, 1, 1, src)
            mask = kpm if mask is None else mask + kpm
        p = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = (q * math.sqrt(1.0 / d)) @ k.transpose(-2, -1)
            if mask is not None:
                scores = scores + mask
            attn = scores.softmax(-1)
            out = F.dropout(attn, p) @ v if p > 0 else attn @ v
            weights = attn.mean(1) if average_attn_weights else attn
            if unbatched:
                weights = weights.squeeze(0)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        out = self.out_proj(out.permute(2, 0, 1, 3).reshape(tgt, bsz, h * d))
        if unbatched:
            out = out.squeeze(1)
        elif self.batch_first:
            out = out.transpose(0, 1)
        return out, weights
