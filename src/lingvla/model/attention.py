"""The blockwise causal mask and the two attention backends that implement it.

Every token carries a block id: prefix (images + text) 0, state 1, actions 2. Query q may attend key
k iff block(k) <= block(q) and k is a valid token. So the prefix is bidirectional and never sees the
suffix, the state token sees the prefix and itself, the action tokens see everything and each other.

Depth queries (when depth distillation is on) add one rule on top: a camera-i query sees only
camera-i image tokens and camera-i queries; other prefix tokens (images, text) never see queries;
state and action tokens see them like any prefix token. Tokens carry `kind` (0 ordinary, 1 depth
query) and `cam` (camera index of image tokens and queries, -1 otherwise) for this.

Backends:
  sdpa - a dense boolean mask [B, 1, Lq, Lk] for torch's scaled_dot_product_attention (any device).
  flex - a FlexAttention BlockMask built from the same rule (CUDA; fused only under torch.compile,
         and without a backward pass on CPU).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

PREFIX_BLOCK = 0
STATE_BLOCK = 1
ACTION_BLOCK = 2
ORDINARY = 0
DEPTH_QUERY = 1


@dataclass
class QueryGroups:
    """Per-position token kinds and cameras of the query and key sequences ([Lq], [Lk])."""

    kind_q: torch.Tensor
    cam_q: torch.Tensor
    kind_k: torch.Tensor
    cam_k: torch.Tensor


def _query_rule(block_q, kind_q, cam_q, kind_k, cam_k):
    """The depth-query restriction (broadcasting): True where the base rule alone decides."""
    own_camera = cam_k == cam_q  # text and suffix have cam -1, never a camera's index
    prefix_row = block_q == PREFIX_BLOCK
    return torch.where(kind_q == DEPTH_QUERY, own_camera, ~prefix_row | (kind_k != DEPTH_QUERY))


def dense_mask(block_q: torch.Tensor, block_k: torch.Tensor, valid_k: torch.Tensor,
               groups: QueryGroups | None = None) -> torch.Tensor:
    """block_q [B, Lq], block_k [B, Lk], valid_k bool [B, Lk] -> allowed bool [B, 1, Lq, Lk]."""
    allowed = (block_k[:, None, :] <= block_q[:, :, None]) & valid_k[:, None, :]
    if groups is not None:
        allowed = allowed & _query_rule(block_q[:, :, None], groups.kind_q[None, :, None],
                                        groups.cam_q[None, :, None], groups.kind_k[None, None, :],
                                        groups.cam_k[None, None, :])
    return allowed[:, None]


@dataclass
class AttentionMask:
    """The mask of one forward pass, in the form its backend wants."""

    backend: str
    dense: torch.Tensor | None = None  # sdpa
    block_mask: object | None = None  # flex


def build_mask(block_q: torch.Tensor, block_k: torch.Tensor, valid_k: torch.Tensor,
               backend: str, groups: QueryGroups | None = None) -> AttentionMask:
    if backend == "sdpa":
        return AttentionMask("sdpa", dense=dense_mask(block_q, block_k, valid_k, groups))
    if backend == "flex":
        from torch.nn.attention.flex_attention import create_block_mask

        if groups is None:
            def mask_mod(b, h, q_idx, kv_idx):
                return valid_k[b, kv_idx] & (block_k[b, kv_idx] <= block_q[b, q_idx])
        else:
            def mask_mod(b, h, q_idx, kv_idx):
                base = valid_k[b, kv_idx] & (block_k[b, kv_idx] <= block_q[b, q_idx])
                return base & _query_rule(block_q[b, q_idx], groups.kind_q[q_idx], groups.cam_q[q_idx],
                                          groups.kind_k[kv_idx], groups.cam_k[kv_idx])

        batch, q_len = block_q.shape
        block_mask = create_block_mask(mask_mod, batch, None, q_len, block_k.shape[1],
                                       device=block_q.device)
        return AttentionMask("flex", block_mask=block_mask)
    raise ValueError(f"unknown attention backend {backend!r}; expected 'sdpa' or 'flex'")


_flex_attention: dict[bool, object] = {}


def _flex(on_cuda: bool):
    """FlexAttention is only fused under torch.compile; on CPU the eager path is a reference."""
    if on_cuda not in _flex_attention:
        from torch.nn.attention.flex_attention import flex_attention

        _flex_attention[on_cuda] = torch.compile(flex_attention, dynamic=False) if on_cuda else flex_attention
    return _flex_attention[on_cuda]


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: AttentionMask) -> torch.Tensor:
    """q [B, Hq, Lq, D], k/v [B, Hkv, Lk, D] (grouped-query) -> [B, Hq, Lq, D]."""
    if mask.backend == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask.dense, enable_gqa=True)
    if q.is_cuda:
        # The main Triton kernel for every shape: with AUTO, the suffix-only queries of cached
        # sampling (51 rows) pick the decoding kernel, which found no valid config for them on an
        # H200 (torch 2.11: "NoValidChoicesError ... flex_decoding").
        return _flex(True)(q, k, v, block_mask=mask.block_mask, enable_gqa=True,
                           kernel_options={"BACKEND": "TRITON"})
    return _flex(False)(q, k, v, block_mask=mask.block_mask, enable_gqa=True)
