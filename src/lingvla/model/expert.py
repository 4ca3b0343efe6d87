"""The action expert: Qwen2-style decoder layers with the LLM's depth and head layout, its own width.

Time conditions the expert through adaptive RMSNorm: (1 + gamma(c)) * (w * rms(x)) + beta(c), with
c the raw sinusoidal time embedding and gamma/beta zero-initialised, so an untrained expert starts
as a plain Qwen2 stack. Parameter names follow the released checkpoint
(self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj, input_layernorm.{weight,gamma,beta}, ...).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from lingvla.config import ModelConfig


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm computed in fp32, returned in x's dtype (as Qwen does)."""
    dtype = x.dtype
    x = x.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(dtype)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


class AdaptiveRMSNorm(nn.Module):
    """RMSNorm whose scale and shift are modulated by a conditioning vector (the time embedding)."""

    def __init__(self, dim: int, cond_dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.gamma = nn.Linear(cond_dim, dim)
        self.beta = nn.Linear(cond_dim, dim)
        self.eps = eps

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)
        for lin in (self.gamma, self.beta):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None,
                mod: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """x [B, L, D], cond [B, Dc] (one conditioning vector per sample). mod: gamma(cond) and
        beta(cond) [B, D] computed beforehand (FusedExpert), in which case cond is not read."""
        gamma, beta = mod if mod is not None else (self.gamma(cond), self.beta(cond))
        return (1 + gamma[:, None, :]) * rms_norm(x, self.weight, self.eps) + beta[:, None, :]


class ExpertAttentionProjections(nn.Module):
    def __init__(self, hidden: int, num_heads: int, num_kv_heads: int, head_dim: int):
        super().__init__()
        self.q_proj = nn.Linear(hidden, num_heads * head_dim, bias=True)
        self.k_proj = nn.Linear(hidden, num_kv_heads * head_dim, bias=True)
        self.v_proj = nn.Linear(hidden, num_kv_heads * head_dim, bias=True)
        self.o_proj = nn.Linear(num_heads * head_dim, hidden, bias=False)


class SwiGLU(nn.Module):
    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class ExpertLayer(nn.Module):
    """One expert decoder layer; its attention is shared with the VLM layer of the same depth."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        hidden = config.expert.hidden_size
        eps = config.llm.rms_norm_eps
        self.self_attn = ExpertAttentionProjections(hidden, config.llm.num_heads,
                                                    config.llm.num_kv_heads, config.llm.head_dim)
        self.mlp = SwiGLU(hidden, config.expert.intermediate_size)
        self.input_layernorm = AdaptiveRMSNorm(hidden, hidden, eps)
        self.post_attention_layernorm = AdaptiveRMSNorm(hidden, hidden, eps)


class FusedExpertLayer(NamedTuple):
    """One layer's share of FusedExpert: q|k|v and gate|up weights, and this step's modulations
    ((gamma, beta) of the input norm, then of the post-attention norm)."""

    qkv_weight: torch.Tensor
    qkv_bias: torch.Tensor
    gate_up_weight: torch.Tensor
    mods: tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class FusedExpert:
    """The expert's weights concatenated for inference, so a denoising step runs fewer, larger
    matmuls: per layer one q|k|v and one gate|up matmul instead of five, and the time modulation
    of all layers' norms (4 small matmuls per layer) as one matmul per step.

    The concatenations are copies made when this is built: build it once per chunk (inside a CUDA
    graph that is one copy per replay), so weights updated in place are seen by the next chunk.
    """

    def __init__(self, layers: list[ExpertLayer]):
        self.num_layers = len(layers)
        self.hidden = layers[0].mlp.gate_proj.in_features
        attn = [layer.self_attn for layer in layers]
        self.qkv = [(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]),
                     torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias])) for a in attn]
        self.gate_up = [torch.cat([layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight]) for layer in layers]
        mods = [lin for layer in layers for norm in (layer.input_layernorm, layer.post_attention_layernorm)
                for lin in (norm.gamma, norm.beta)]
        self.mod_weight = torch.cat([lin.weight for lin in mods])
        self.mod_bias = torch.cat([lin.bias for lin in mods])

    def modulations(self, cond: torch.Tensor) -> torch.Tensor:
        """cond [B, Dc] -> [layers, 4, B, D]: gamma, beta of the input norm, then of the second."""
        out = F.linear(cond, self.mod_weight, self.mod_bias)
        return out.view(cond.shape[0], self.num_layers, 4, self.hidden).permute(1, 2, 0, 3)

    def layer(self, i: int, mods: torch.Tensor) -> FusedExpertLayer:
        m = mods[i]
        return FusedExpertLayer(*self.qkv[i], self.gate_up[i], ((m[0], m[1]), (m[2], m[3])))


def time_embedding(t: torch.Tensor, dim: int, min_period: float, max_period: float) -> torch.Tensor:
    """Sinusoidal embedding [sin, cos] of flow time t [B] -> [B, dim], periods min..max (geometric)."""
    fraction = torch.linspace(0.0, 1.0, dim // 2, dtype=torch.float64, device=t.device)
    period = min_period * (max_period / min_period) ** fraction
    angle = t.to(torch.float64)[:, None] * (2 * math.pi / period)[None, :]
    return torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1).to(torch.float32)
