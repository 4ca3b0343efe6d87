"""The vision-language stream: transformers' Qwen2.5-VL modules used as weight holders.

We take the vision tower (Qwen2_5_VisionTransformerPretrainedModel), the token embedding, the
decoder layers (Qwen2_5_VLDecoderLayer) and the final norm, built from our config or loaded from a
local Qwen2.5-VL directory. The decoder layers' own forward is not used: the joint MoT layer
(mot.py) calls their norms, projections and MLP around one shared attention.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lingvla.config import LLMConfig, ModelConfig, VisionConfig

# CLIP normalization used by Qwen2.5-VL's image processor.
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)


def hf_vision_config(vision: VisionConfig, out_hidden_size: int, initializer_range: float):
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig

    config = Qwen2_5_VLVisionConfig(
        depth=vision.depth, hidden_size=vision.hidden_size, intermediate_size=vision.intermediate_size,
        num_heads=vision.num_heads, patch_size=vision.patch_size,
        spatial_merge_size=vision.spatial_merge_size, temporal_patch_size=vision.temporal_patch_size,
        window_size=vision.window_size, fullatt_block_indexes=list(vision.fullatt_block_indexes),
        out_hidden_size=out_hidden_size, initializer_range=initializer_range)
    config._attn_implementation = "sdpa"
    return config


def hf_text_config(llm: LLMConfig, initializer_range: float):
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLTextConfig

    config = Qwen2_5_VLTextConfig(
        vocab_size=llm.vocab_size, hidden_size=llm.hidden_size, intermediate_size=llm.intermediate_size,
        num_hidden_layers=llm.num_layers, num_attention_heads=llm.num_heads,
        num_key_value_heads=llm.num_kv_heads, rms_norm_eps=llm.rms_norm_eps,
        initializer_range=initializer_range, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    config._attn_implementation = "sdpa"
    return config


class VLMParts(nn.Module):
    """Holder for the pieces taken from Qwen2.5-VL (only used while assembling the policy)."""

    def __init__(self, visual: nn.Module, embed_tokens: nn.Embedding, layers: nn.ModuleList,
                 norm: nn.Module):
        super().__init__()
        self.visual = visual
        self.embed_tokens = embed_tokens
        self.layers = layers
        self.norm = norm


def build_vlm(config: ModelConfig) -> VLMParts:
    """Fresh, randomly initialised Qwen2.5-VL parts of the configured sizes."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
        Qwen2_5_VisionTransformerPretrainedModel, Qwen2_5_VLDecoderLayer, Qwen2_5_VLRMSNorm)

    text = hf_text_config(config.llm, config.initializer_range)
    visual = Qwen2_5_VisionTransformerPretrainedModel(
        hf_vision_config(config.vision, config.llm.hidden_size, config.initializer_range))
    embed = nn.Embedding(config.llm.vocab_size, config.llm.hidden_size)
    layers = nn.ModuleList(Qwen2_5_VLDecoderLayer(text, i) for i in range(config.llm.num_layers))
    norm = Qwen2_5_VLRMSNorm(config.llm.hidden_size, eps=config.llm.rms_norm_eps)
    parts = VLMParts(visual, embed, layers, norm)
    if not any(p.is_meta for p in parts.parameters()):
        std = config.initializer_range
        for module in [embed, *layers]:
            for sub in module.modules():
                if isinstance(sub, (nn.Linear, nn.Embedding)):
                    nn.init.normal_(sub.weight, std=std)
                    if getattr(sub, "bias", None) is not None:
                        nn.init.zeros_(sub.bias)
    return parts


def _require_local_dir(path: str | Path) -> None:
    if not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a local Qwen2.5-VL directory (no config.json); "
                                "weights are never downloaded: point model.vlm_path at a local copy")


def config_from_pretrained(path: str | Path, base: ModelConfig) -> ModelConfig:
    """`base` with its vision/llm sizes replaced by those of the Qwen2.5-VL checkpoint at `path`."""
    from transformers import AutoConfig

    _require_local_dir(path)
    hf = AutoConfig.from_pretrained(str(path), local_files_only=True)
    text = getattr(hf, "text_config", hf)
    vis = hf.vision_config
    data = base.to_dict()
    data["llm"] = dict(hidden_size=text.hidden_size, num_layers=text.num_hidden_layers,
                       num_heads=text.num_attention_heads, num_kv_heads=text.num_key_value_heads,
                       intermediate_size=text.intermediate_size, vocab_size=text.vocab_size,
                       rms_norm_eps=text.rms_norm_eps)
    data["vision"] = dict(depth=vis.depth, hidden_size=vis.hidden_size,
                          intermediate_size=vis.intermediate_size, num_heads=vis.num_heads,
                          patch_size=vis.patch_size, spatial_merge_size=vis.spatial_merge_size,
                          temporal_patch_size=vis.temporal_patch_size, window_size=vis.window_size,
                          fullatt_block_indexes=list(vis.fullatt_block_indexes))
    return ModelConfig.from_dict(data)


def load_vlm(path: str | Path, dtype: torch.dtype = torch.float32) -> VLMParts:
    """Qwen2.5-VL parts with weights from a local directory (never a download)."""
    _require_local_dir(path)
    from transformers import Qwen2_5_VLForConditionalGeneration

    hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        str(path), local_files_only=True, dtype=dtype, attn_implementation="sdpa")
    inner = hf.model
    # transformers >= 4.52 nests the decoder as model.language_model; older versions as model.
    visual = getattr(inner, "visual", None) or hf.visual
    text = getattr(inner, "language_model", inner)
    return VLMParts(visual, text.embed_tokens, text.layers, text.norm)


def patchify(pixels: torch.Tensor, patch: int, merge: int, temporal: int) -> torch.Tensor:
    """Normalized images [N, 3, H, W] -> Qwen2.5-VL patches [N * gh * gw, 3 * temporal * patch^2].

    Patches are ordered as Qwen's image processor orders them: merge windows (2x2 patches that the
    merger fuses into one token) are contiguous, row-major over the grid; a still image is repeated
    `temporal` times along time.
    """
    n, c, h, w = pixels.shape
    gh, gw = h // patch, w // patch
    x = pixels.reshape(n, c, gh // merge, merge, patch, gw // merge, merge, patch)
    # -> [n, gh/m, gw/m, m, m, c, patch, patch]
    x = x.permute(0, 2, 5, 3, 6, 1, 4, 7)
    x = x.unsqueeze(6).expand(*x.shape[:6], temporal, patch, patch)
    return x.reshape(n * gh * gw, c * temporal * patch * patch)


class MatmulPatchEmbed(nn.Module):
    """Qwen2.5-VL's patch embedding (a Conv3d whose kernel equals its stride) as one matmul.

    Same parameter (`proj.weight`, same name and shape), same result; oneDNN's Conv3d is several
    times slower than the equivalent GEMM on CPU.
    """

    def __init__(self, original: nn.Module):
        super().__init__()
        self.proj = original.proj
        self.embed_dim = original.embed_dim

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        weight = self.proj.weight
        return F.linear(hidden_states.to(weight.dtype), weight.reshape(self.embed_dim, -1))


class ImageEncoder(nn.Module):
    """uint8 images -> LLM-width tokens through the Qwen2.5-VL vision tower."""

    def __init__(self, visual: nn.Module, vision: VisionConfig, image_size: int, fixed_grid: bool = True):
        super().__init__()
        from lingvla.model.vision import FixedGridVision

        if hasattr(visual, "patch_embed") and not isinstance(visual.patch_embed, MatmulPatchEmbed):
            visual.patch_embed = MatmulPatchEmbed(visual.patch_embed)
        self.visual = visual
        self.patch = vision.patch_size
        self.merge = vision.spatial_merge_size
        self.temporal = vision.temporal_patch_size
        grid = image_size // vision.patch_size
        self.grid = grid
        # Batched, host-free forward for same-size images (vision.py); transformers' own forward
        # when fixed_grid is off or the tower is not the structure it expects.
        fixed = FixedGridVision(visual, grid) if fixed_grid else None
        self.fixed = fixed if fixed is not None and fixed.supported else None
        self._fixed_grid = self.fixed
        self.register_buffer("mean", torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGE_STD).view(1, 3, 1, 1), persistent=False)

    def use_fixed_grid(self, enabled: bool) -> None:
        """Switch between the fixed-grid forward (when supported) and transformers' own."""
        from lingvla.model.vision import FixedGridVision

        if self._fixed_grid is None:
            return
        (FixedGridVision.install if enabled else FixedGridVision.uninstall)(self.visual)
        self.fixed = self._fixed_grid if enabled else None

    def pixel_patches(self, images: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """images uint8 [N, 3, H, W] -> normalized patches [N * grid^2, 3 * temporal * patch^2]."""
        x = images.to(torch.float32) / 255.0
        x = (x - self.mean) / self.std
        return patchify(x, self.patch, self.merge, self.temporal).to(dtype)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images uint8 [B, C, 3, H, W] -> tokens [B, C * tokens_per_image, llm_hidden]."""
        b, c = images.shape[:2]
        dtype = next(self.visual.parameters()).dtype
        patches = self.pixel_patches(images.flatten(0, 1), dtype)
        if self.fixed is not None:
            tokens = self.fixed(self.visual, patches, b * c)
            return tokens.reshape(b, -1, tokens.shape[-1])
        grid_thw = torch.tensor([[1, self.grid, self.grid]], device=images.device).repeat(b * c, 1)
        out = self.visual(hidden_states=patches, grid_thw=grid_thw)
        # transformers >= 5 returns a model output whose pooler_output holds the merged tokens.
        tokens = out if isinstance(out, torch.Tensor) else out.pooler_output
        return tokens.reshape(b, -1, tokens.shape[-1])
