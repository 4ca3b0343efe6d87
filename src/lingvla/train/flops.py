"""Model FLOPs per training sample, counted from the configuration (for MFU).

Counted: every matmul of the forward pass at 2 FLOPs per multiply-add - projections and MLPs of
the ViT (with its windowed and full attention), the LLM over the prefix, the expert over the suffix
(attending to prefix + suffix), and the small heads - and training = 3 x forward for a part whose
weights train (the backward pass computes gradients of activations and of weights, each costing a
forward). A frozen or LoRA-adapted part costs 2 x forward when gradients must flow through it (it
is adapted, or a part before it trains) and 1 x when they need not (a frozen vision tower, a frozen
LLM after it). Not counted: norms, softmax, RoPE, elementwise ops. MFU = achieved
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


PART_MODES = ("train", "lora", "frozen")


def train_flops_per_sample(config: ModelConfig, prompt_tokens: int | None = None,
                           modes: dict[str, str] | None = None) -> dict[str, float]:
    """Per part ("vit", "llm", "expert", in the order gradients flow back through) and "total".

    modes: part -> "train" (default) | "lora" | "frozen" (training_modes(config) reads them off a
    training config)."""
    modes = modes or {}
    unknown = {m for m in modes.values()} - set(PART_MODES)
    if unknown:
        raise ValueError(f"part modes must be in {PART_MODES}; got {sorted(unknown)}")
    parts, upstream_trains = {}, False
    for part, flops in forward_flops(config, prompt_tokens).items():
        mode = modes.get(part, "train")
        factor = 3 if mode == "train" else 2 if mode == "lora" or upstream_trains else 1
        parts[part] = factor * flops
        upstream_trains = upstream_trains or mode != "frozen"
    parts["total"] = sum(parts.values())
    return parts


def training_modes(optim) -> dict[str, str]:
    """Each part's mode under a training config's `optim:` section (freezing, LoRA targets)."""
    lora = set(optim.lora_targets) if optim.lora_rank else set()
    # freezing a stream freezes its adapters too (train.loop.apply_freezing)
    return {"vit": "frozen" if optim.freeze_vision else "lora" if "vision" in lora else "train",
            "llm": "frozen" if optim.freeze_llm else "lora" if "vlm" in lora else "train",
            "expert": "lora" if "expert" in lora else "train"}
