"""The action expert: Qwen2-style decoder layers with the LLM's depth and head layout, its own width.

Time conditions the expert through adaptive RMSNorm: (1 + gamma(c)) * (w * rms(x)) + beta(c), with
c the raw sinusoidal time embedding and gamma/beta zero-initialised, so an untrained expert starts
as a plain Qwen2 stack. Parameter names follow the released checkpoint
(self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj, input_layernorm.{weight,gamma,beta}, ...).
"""

from __future__ import annotations

import math

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

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x [B, L, D], cond [B, Dc] (one conditioning vector per sample)."""
        scale = 1 + self.gamma(cond)[:, None, :]
        shift = self.beta(cond)[:, None, :]
        return scale * rms_norm(x, self.weight, self.eps) + shift


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


def time_embedding(t: torch.Tensor, dim: int, min_period: float, max_period: float) -> torch.Tensor:
    """Sinusoidal embedding [sin, cos] of flow time t [B] -> [B, dim], periods min..max (geometric)."""
    fraction = torch.linspace(0.0, 1.0, dim // 2, dtype=torch.float64, device=t.device)
    period = min_period * (max_period / min_period) ** fraction
    angle = t.to(torch.float64)[:, None] * (2 * math.pi / period)[None, :]
    return torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1).to(torch.float32)
