"""The Mixture-of-Transformers layer: two streams, their own weights, one shared self-attention.

Per layer, each stream applies its own input norm and q/k/v projections; the q/k/v of both streams
are concatenated along the sequence and attended once under the blockwise mask; the output is
split back and each stream applies its own o_proj, residual, post-attention norm, MLP, residual.
Either stream may be absent: the prefix alone fills the K/V cache, the suffix alone denoises
against it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lingvla.model.attention import AttentionMask, attend
from lingvla.model.expert import FusedExpertLayer


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float,
                 dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """positions long [B, L] -> cos, sin [B, 1, L, head_dim] (rotate-half layout)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32,
                                             device=positions.device) / head_dim))
    angle = positions.to(torch.float32)[..., None] * inv_freq
    angle = torch.cat([angle, angle], dim=-1)[:, None]
    return angle.cos().to(dtype), angle.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class MoTLayer(nn.Module):
    """One depth of the joint model. `vlm` is transformers' Qwen2_5_VLDecoderLayer, `expert` ours."""

    def __init__(self, vlm: nn.Module, expert: nn.Module, num_heads: int, num_kv_heads: int,
                 head_dim: int, attention_fp32: bool = False):
        super().__init__()
        self.vlm = vlm
        self.expert = expert
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.attention_fp32 = attention_fp32  # q/k/v upcast for the shared attention (the released numerics)

    def forward(self, prefix: torch.Tensor | None, suffix: torch.Tensor | None,
                cond: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor,
                mask: AttentionMask, prefix_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
                fused: FusedExpertLayer | None = None,
                ) -> tuple[torch.Tensor | None, torch.Tensor | None, tuple[torch.Tensor, torch.Tensor]]:
        """prefix [B, Lp, Hv] | None, suffix [B, Ls, He] | None, cond [B, He] (time embedding).

        cos/sin cover the query tokens (prefix then suffix). prefix_kv: the cached prefix K/V
        [B, Hkv, Lp, D] to prepend to the keys. fused: the expert's concatenated weights and
        precomputed modulations (expert.FusedExpert; same numbers, fewer matmuls). Returns
        (prefix_out, suffix_out, (k, v)) where k/v are this call's own post-RoPE keys/values (the
        cache when called on the prefix alone).
        """
        qs, ks, vs = [], [], []
        if prefix is not None:
            attn = self.vlm.self_attn
            x = self.vlm.input_layernorm(prefix)
            qs.append(attn.q_proj(x)), ks.append(attn.k_proj(x)), vs.append(attn.v_proj(x))
        if suffix is not None and fused is not None:
            x = self.expert.input_layernorm(suffix, None, fused.mods[0])
            q, k, v = F.linear(x, fused.qkv_weight, fused.qkv_bias).split(
                [self.num_heads * self.head_dim] + [self.num_kv_heads * self.head_dim] * 2, dim=-1)
            qs.append(q), ks.append(k), vs.append(v)
        elif suffix is not None:
            attn = self.expert.self_attn
            x = self.expert.input_layernorm(suffix, cond)
            qs.append(attn.q_proj(x)), ks.append(attn.k_proj(x)), vs.append(attn.v_proj(x))
        dtype = qs[0].dtype
        q = torch.cat([t.to(dtype) for t in qs], dim=1)
        k = torch.cat([t.to(dtype) for t in ks], dim=1)
        v = torch.cat([t.to(dtype) for t in vs], dim=1)
        b, length = q.shape[:2]
        q = q.view(b, length, self.num_heads, self.head_dim).transpose(1, 2)
        k = k.view(b, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(b, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        own_kv = (k, v)
        if prefix_kv is not None:
            k = torch.cat([prefix_kv[0].to(dtype), k], dim=2)
            v = torch.cat([prefix_kv[1].to(dtype), v], dim=2)
        if self.attention_fp32 and dtype != torch.float32:
            out = attend(q.float(), k.float(), v.float(), mask).to(dtype)
        else:
            out = attend(q, k, v, mask)
        out = out.transpose(1, 2).reshape(b, length, -1)

        prefix_out = suffix_out = None
        split = prefix.shape[1] if prefix is not None else 0
        if prefix is not None:
            h = prefix + self.vlm.self_attn.o_proj(out[:, :split].to(prefix.dtype))
            prefix_out = h + self.vlm.mlp(self.vlm.post_attention_layernorm(h))
        if suffix is not None:
            h = suffix + self.expert.self_attn.o_proj(out[:, split:].to(suffix.dtype))
            if fused is None:
                suffix_out = h + self.expert.mlp(self.expert.post_attention_layernorm(h, cond))
            else:
                gate, up = F.linear(self.expert.post_attention_layernorm(h, None, fused.mods[1]),
                                    fused.gate_up_weight).chunk(2, dim=-1)
                suffix_out = h + self.expert.mlp.down_proj(F.silu(gate) * up)
        return prefix_out, suffix_out, own_kv
