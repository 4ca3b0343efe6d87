"""Model FLOPs per training sample, counted from the configuration (for MFU).

Counted: every matmul of the forward pass at 2 FLOPs per multiply-add - projections and MLPs of
the ViT (with its windowed and full attention), the LLM over the prefix, the expert over the suffix
(attending to prefix + suffix), and the small heads - and training = 3 x forward (the backward
pass costs two forwards). Not counted: norms, softmax, RoPE, elementwise ops. MFU = achieved
FLOP/s / the device's peak dense bf16 FLOP/s.
"""

from __future__ import annotations

from lingvla.config import ModelConfig


def _attention(q_len: int, k_len: int, width: int) -> float:
    return 2 * 2 * q_len * k_len * width  # QK^T and AV


def forward_flops(config: ModelConfig, prompt_tokens: int | None = None) -> dict[str, float]:
    v, llm, e = config.vision, config.llm, config.expert
    cams = config.num_cameras
    grid = config.image_size // v.patch_size
    patches = grid * grid
    merged = patches // v.spatial_merge_size ** 2
    h = v.hidden_size
    # ViT, per image
    patch_in = 3 * v.temporal_patch_size * v.patch_size ** 2
    vit = 2 * patches * patch_in * h
    per_block = 2 * patches * (4 * h * h + 3 * h * v.intermediate_size)
    window = (v.window_size // v.patch_size) ** 2
    for i in range(v.depth):
        k_len = patches if i in v.fullatt_block_indexes else min(window, patches)
        vit += per_block + _attention(patches, k_len, h)
    merge_in = h * v.spatial_merge_size ** 2
    vit += 2 * merged * (merge_in * merge_in + merge_in * llm.hidden_size)
    vit *= cams
    # LLM over the prefix
    prefix = cams * merged + (prompt_tokens if prompt_tokens is not None else config.max_token_len)
    hd, kv = llm.head_dim, llm.num_kv_heads * llm.head_dim
    q_width = llm.num_heads * hd
    llm_layer = 2 * prefix * (llm.hidden_size * (2 * q_width + 2 * kv) + 3 * llm.hidden_size * llm.intermediate_size)
    llm_flops = llm.num_layers * (llm_layer + _attention(prefix, prefix, q_width))
    # Expert over the suffix
    suffix = 1 + config.chunk_size
    exp_layer = 2 * suffix * (e.hidden_size * (2 * q_width + 2 * kv) + 3 * e.hidden_size * e.intermediate_size)
    expert = llm.num_layers * (exp_layer + _attention(suffix, prefix + suffix, q_width))
    d = config.action_dim
    heads = 2 * (e.hidden_size * d + config.chunk_size * (e.hidden_size * d * 2 + 3 * e.hidden_size ** 2))
    return {"vit": vit, "llm": llm_flops, "expert": expert + heads}


def train_flops_per_sample(config: ModelConfig, prompt_tokens: int | None = None) -> dict[str, float]:
    parts = {k: 3 * v for k, v in forward_flops(config, prompt_tokens).items()}
    parts["total"] = sum(parts.values())
    return parts
