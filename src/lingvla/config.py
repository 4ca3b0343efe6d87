"""Model configuration: dataclasses, presets and a YAML round trip.

Two presets share every class and code path and differ only in sizes:
  tiny        - a few hundred thousand parameters; a train step in well under a second on 2 CPU cores.
  lingbot-4b  - the paper's sizes: Qwen2.5-VL-3B (ViT 32x1280, LLM 36x2048) + a 768-wide,
                36-layer action expert with the LLM's head layout.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass
class VisionConfig:
    """The Qwen2.5-VL vision tower (patch 14, 2x2 merge: a 224 image -> 256 patches -> 64 tokens)."""

    depth: int = 32
    hidden_size: int = 1280
    intermediate_size: int = 3420
    num_heads: int = 16
    patch_size: int = 14
    spatial_merge_size: int = 2
    temporal_patch_size: int = 2
    window_size: int = 112
    fullatt_block_indexes: list[int] = field(default_factory=lambda: [7, 15, 23, 31])


@dataclass
class LLMConfig:
    """The Qwen2.5 decoder of the vision-language stream."""

    hidden_size: int = 2048
    num_layers: int = 36
    num_heads: int = 16
    num_kv_heads: int = 2
    intermediate_size: int = 11008
    vocab_size: int = 151936
    rms_norm_eps: float = 1e-6

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclass
class ExpertConfig:
    """The action expert: the LLM's depth and head layout, its own (smaller) width."""

    hidden_size: int = 768
    intermediate_size: int = 2752


@dataclass
class DepthConfig:
    """Depth distillation: learnable queries inside the VLM aligned to a depth teacher's tokens.

    `num_latents` learnable embeddings (LLM width) are mean-pooled in groups into `num_queries`
    query tokens inserted after each camera's image tokens; a one-layer Perceiver resampler with
    the embeddings as latents reads each camera's final [image + query] states and projects to the
    teacher's width. Off: no parameters, no tokens, no cost.
    """

    enabled: bool = False
    num_latents: int = 256
    num_queries: int = 8
    teacher_dim: int = 1024
    head_heads: int = 8
    loss_weight: float = 0.003
    # "perceiver": our one-layer resampler; "released": the released LingBot-VLA head's structure
    # (proj_in1/proj_in2, head_layers x [attention of width head_inner, feed-forward x head_ff_mult],
    # proj_out, norm_out), so a released depth checkpoint's head loads one to one
    head: str = "perceiver"
    head_inner: int = 128
    head_layers: int = 1
    head_ff_mult: int = 1


@dataclass
class ModelConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    expert: ExpertConfig = field(default_factory=ExpertConfig)
    depth: DepthConfig = field(default_factory=DepthConfig)
    # Unified, padded state/action width; the robot's real dims are selected by action_dim_mask.
    action_dim: int = 75
    chunk_size: int = 50
    num_cameras: int = 3
    image_size: int = 224
    max_token_len: int = 48
    # 1D RoPE over the joint sequence (pi0 style), not Qwen's M-RoPE.
    rope_theta: float = 10_000.0
    # Sinusoidal time embedding periods.
    time_min_period: float = 4e-3
    time_max_period: float = 4.0
    # Flow matching.
    num_steps: int = 10
    time_sampling: str = "beta"  # "beta": t = 0.999 * Beta(1.5, 1) + 0.001; "uniform": U[0, 1]
    time_beta_alpha: float = 1.5
    time_beta_beta: float = 1.0
    loss: str = "mse"  # "mse" or "l1"
    # Training only: the probability that a sample's state is zeroed (the normalized mean), so the
    # policy has to read the arms and objects from the images too instead of extrapolating the
    # state (docs/recipes.md). Inference always uses the state.
    state_dropout: float = 0.0
    # "sdpa": dense boolean mask (any device, default); "flex": FlexAttention BlockMask (CUDA).
    attn_backend: str = "sdpa"
    # Parity with the released LingBot-VLA (docs/your-robot.md). How camera frames become
    # image_size x image_size: "pad" (aspect kept, black bars) or "squash" (stretched, bilinear: the
    # released model's). attention_fp32: the joint attention upcasts q/k/v to fp32 (the released
    # model's numerics) instead of running in the model's dtype.
    image_resize: str = "pad"
    attention_fp32: bool = False
    # Local directory of Qwen2.5-VL weights (+ tokenizer). None: build the VLM from config.
    vlm_path: str | None = None
    # "tiny": the built-in byte-level BPE tokenizer; otherwise a local tokenizer directory.
    # None with vlm_path set: the tokenizer in vlm_path.
    tokenizer: str | None = "tiny"
    initializer_range: float = 0.02

    def __post_init__(self) -> None:
        for name, cls in (("vision", VisionConfig), ("llm", LLMConfig), ("expert", ExpertConfig),
                          ("depth", DepthConfig)):
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, _from_dict(cls, value))
        self.validate()

    @property
    def tokens_per_image(self) -> int:
        grid = self.image_size // self.vision.patch_size
        return (grid // self.vision.spatial_merge_size) ** 2

    def validate(self) -> None:
        unit = self.vision.patch_size * self.vision.spatial_merge_size
        if self.image_size % unit:
            raise ValueError(f"image_size={self.image_size} must be a multiple of patch_size x "
                             f"spatial_merge_size = {unit}")
        if self.llm.hidden_size % self.llm.num_heads:
            raise ValueError("llm.hidden_size must be divisible by llm.num_heads")
        if self.llm.num_heads % self.llm.num_kv_heads:
            raise ValueError("llm.num_heads must be divisible by llm.num_kv_heads")
        d = self.depth
        if d.enabled and (d.num_latents % d.num_queries or self.llm.hidden_size % d.head_heads):
            raise ValueError(f"depth.num_latents={d.num_latents} must be a multiple of depth.num_queries="
                             f"{d.num_queries}, and llm.hidden_size of depth.head_heads={d.head_heads}")
        if self.image_resize not in ("pad", "squash"):
            raise ValueError(f"image_resize={self.image_resize!r}; expected pad or squash")
        if self.image_resize != "pad" and self.depth.enabled:
            raise ValueError("depth targets are fitted to the image by padding: image_resize must be pad "
                             "with depth.enabled")
        if d.head not in ("perceiver", "released"):
            raise ValueError(f"depth.head={d.head!r}; expected perceiver or released")
        if self.expert.hidden_size % 2:
            raise ValueError("expert.hidden_size must be even (sin/cos time embedding)")
        for name, value, allowed in (("time_sampling", self.time_sampling, ("beta", "uniform")),
                                     ("loss", self.loss, ("mse", "l1")),
                                     ("attn_backend", self.attn_backend, ("sdpa", "flex"))):
            if value not in allowed:
                raise ValueError(f"{name}={value!r}; expected one of {allowed}")
        if not 0.0 <= self.state_dropout <= 1.0:
            raise ValueError(f"state_dropout must be in [0, 1]; got {self.state_dropout}")
        for name in ("action_dim", "chunk_size", "num_cameras", "max_token_len", "num_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        return _from_dict(cls, data)

    def save_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump({"model": self.to_dict()}, sort_keys=False))

    @classmethod
    def load_yaml(cls, path: str | Path) -> "ModelConfig":
        data = yaml.safe_load(Path(path).read_text())
        return cls.from_dict(data.get("model", data))


def coerce_number(value: Any, like: Any, name: str) -> Any:
    """YAML 1.1 reads `3e-4` as a string: turn numeric strings into the type of the default."""
    if isinstance(value, str) and isinstance(like, (int, float)) and not isinstance(like, bool):
        try:
            return type(like)(float(value)) if isinstance(like, int) else float(value)
        except ValueError:
            raise ValueError(f"{name}={value!r} is not a number") from None
    if isinstance(like, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _from_dict(cls, data: dict[str, Any]):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; known: {sorted(fields)}")
    defaults = cls()
    return cls(**{k: coerce_number(v, getattr(defaults, k), k) for k, v in data.items()})


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `dotted.key=value` strings (values parsed as YAML) to a nested dict, in place.

    An unknown key is an error naming it, so a typo never silently does nothing.
    """
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ValueError(f"override {key!r}: {part!r} is not a known section")
            node = node[part]
        if parts[-1] not in node:
            raise ValueError(f"override {key!r}: unknown key {parts[-1]!r}; known: {sorted(node)}")
        node[parts[-1]] = yaml.safe_load(raw)
    return data


def tiny_config(**overrides: Any) -> ModelConfig:
    """Same classes as the 4B model, small sizes. The LLM vocabulary matches the tiny tokenizer."""
    from lingvla.model.tokenizer import TINY_VOCAB_SIZE

    base = dict(
        vision=VisionConfig(depth=2, hidden_size=64, intermediate_size=128, num_heads=2,
                            fullatt_block_indexes=[1]),
        llm=LLMConfig(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                      intermediate_size=128, vocab_size=TINY_VOCAB_SIZE, rms_norm_eps=1e-6),
        expert=ExpertConfig(hidden_size=32, intermediate_size=64),
        depth=DepthConfig(num_latents=16, num_queries=4, teacher_dim=32, head_heads=2),
        action_dim=32,
        tokenizer="tiny",
    )
    return ModelConfig(**_merge(base, overrides))


def lingbot_4b_config(**overrides: Any) -> ModelConfig:
    """The released LingBot-VLA 4B sizes (Qwen2.5-VL-3B + 768-wide expert, unified width 75)."""
    return ModelConfig(**_merge(dict(tokenizer=None), overrides))


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Overrides win; a dict given for a section updates that section's fields only."""
    out = dict(base)
    for key, value in overrides.items():
        current = out.get(key)
        if isinstance(value, dict) and dataclasses.is_dataclass(current):
            value = dataclasses.replace(current, **value)
        out[key] = value
    return out


PRESETS = {"tiny": tiny_config, "lingbot-4b": lingbot_4b_config}


def preset(name: str, **overrides: Any) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return PRESETS[name](**overrides)
