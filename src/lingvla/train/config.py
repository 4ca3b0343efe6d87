"""Training configuration: one YAML file, overridable by `key=value` on the command line.

    model:    a preset name plus any ModelConfig fields to override
    data:     datasets (path, embodiment, weight, episode_frames, episodes / exclude_episodes),
              norm_stats, loader settings
    optim:    AdamW, schedule, clipping, freezing, learning-rate multipliers
    parallel: data-parallel mesh (HSDP when dp_replicate > 1), mixed precision, compile, checkpointing
    the rest: batch size, steps, logging, checkpoints
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lingvla.config import ModelConfig, apply_overrides, coerce_number, preset
from lingvla.data.config import DataConfig


@dataclass
class OptimConfig:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    schedule: str = "cosine"  # "cosine" (after warmup, down to min_lr_ratio * lr) or "constant"
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    freeze_vision: bool = False
    freeze_llm: bool = False  # the VLM stream's token embedding, decoder layers and final norm
    # Parameter-name substring -> learning-rate multiplier (e.g. {"depth": 10.0}). Left empty with
    # model.depth.enabled, the depth parameters get the paper's 10x ({"depth": 10.0}).
    lr_multipliers: dict[str, float] = field(default_factory=dict)
    # LoRA (model/lora.py): rank > 0 adds low-rank adapters to the linear layers of lora_targets
    # ("vision", "vlm", "expert") and freezes every other weight of those streams; the rest of the
    # model trains as usual. Exports hold the merged weights.
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_targets: list[str] = field(default_factory=lambda: ["vlm"])
    # How AdamW stores its two moment estimates: "fp32" (8 bytes per trained parameter) or "8bit"
    # (train/adamw8bit.py: 2 bytes, blockwise-quantized; weights under 4096 values stay fp32).
    states: str = "fp32"


@dataclass
class ParallelConfig:
    # Data-parallel mesh: dp_replicate x dp_shard = world size. dp_shard -1: world / dp_replicate.
    # dp_replicate > 1 is HSDP (replicate across nodes, shard within).
    dp_replicate: int = 1
    dp_shard: int = -1
    # "bf16": bf16 parameters and communication, fp32 gradient reduction and master weights.
    mixed_precision: str = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    compile: bool = False  # torch.compile each joint layer (identical layers compile once)
    activation_checkpointing: bool = False
    # FSDP2 CPU offload: parameter shards, gradients and optimizer states in host memory (one
    # process gets an FSDP group of its own); trades step time for device memory
    cpu_offload: bool = False
    attn_backend: str = "auto"  # auto: flex on CUDA, sdpa on CPU


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=lambda: preset("tiny"))
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    batch_size: int = 32  # global, across processes and accumulation steps
    grad_accum: int = 1
    steps: int = 1000
    seed: int = 0
    output_dir: str = "runs/default"
    device: str = "auto"  # auto: cuda when available
    log_every: int = 10
    save_every: int = 500
    keep_last: int = 2
    ema_decay: float = 0.0  # > 0: keep an EMA of the weights and export it (lingvla/train/ema.py)
    resume: bool = True  # continue from the newest checkpoint in output_dir when there is one
    # Start from existing weights (a run that resumes from its own checkpoint ignores it): a lingvla
    # checkpoint directory, a released LingBot-VLA checkpoint (.../hf_ckpt) or a Qwen2.5-VL
    # directory (the VLM only). Loaded strictly (lingvla/model/weights.py); init_drop lists the
    # name prefixes to leave out on purpose, e.g. [model.depth_align_head.] for the released depth head.
    init_from: str | None = None
    init_drop: list[str] = field(default_factory=list)
    tensorboard: bool = True  # when the tensorboard package is installed

    def validate(self) -> None:
        if self.batch_size < 1 or self.grad_accum < 1 or self.steps < 1:
            raise ValueError("batch_size, grad_accum and steps must be >= 1")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay={self.ema_decay}; expected 0 (off) or 0 < decay < 1, e.g. 0.999")
        if self.optim.schedule not in ("cosine", "constant"):
            raise ValueError(f"optim.schedule={self.optim.schedule!r}; expected 'cosine' or 'constant'")
        if self.parallel.mixed_precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"parallel.mixed_precision={self.parallel.mixed_precision!r}; "
                             "expected auto, bf16 or fp32")
        if self.parallel.attn_backend not in ("auto", "sdpa", "flex"):
            raise ValueError(f"parallel.attn_backend={self.parallel.attn_backend!r}")
        from lingvla.data.mixture import SPEC_KEYS  # the loader's keys, with "path" for its "root"

        known = set(SPEC_KEYS) - {"root"} | {"path"}
        for spec in self.data.datasets:
            if not isinstance(spec, dict) or "path" not in spec or set(spec) - known:
                raise ValueError(f"data.datasets entry {spec!r}: expected a dict with 'path' and optional keys "
                                 f"{sorted(known - {'path'})}")
        if self.data.image_shift < 0:
            raise ValueError(f"data.image_shift={self.data.image_shift}; expected pixels >= 0 (0: off)")
        if self.data.image_shift and self.model.depth.enabled:
            raise ValueError("data.image_shift would move the images away from their depth targets: "
                             "set it to 0 with model.depth.enabled")
        from lingvla.data.normalize import MODES
        from lingvla.model.lora import STREAMS

        if self.optim.states not in ("fp32", "8bit"):
            raise ValueError(f"optim.states={self.optim.states!r}; expected 'fp32' or '8bit'")
        if self.optim.lora_rank < 0 or (self.optim.lora_rank and set(self.optim.lora_targets) - set(STREAMS)):
            raise ValueError(f"optim.lora_rank={self.optim.lora_rank}, lora_targets={self.optim.lora_targets}; "
                             f"expected rank >= 0 and targets among {STREAMS}")

        if self.data.normalization not in MODES:
            raise ValueError(f"data.normalization={self.data.normalization!r}; expected one of {MODES}")
        if self.data.on_bad_sample not in ("raise", "skip"):
            raise ValueError(f"data.on_bad_sample={self.data.on_bad_sample!r}; expected raise or skip")
        if self.data.depth_teacher not in ("sim-depth", "hf-depth"):
            raise ValueError(f"data.depth_teacher={self.data.depth_teacher!r}; expected sim-depth or hf-depth")
        if (self.model.depth.enabled and self.data.depth_teacher == "hf-depth" and not self.data.depth_cache
                and not self.data.depth_teacher_path):
            raise ValueError("data.depth_teacher=hf-depth runs online: set data.depth_teacher_path to a local "
                             "depth model directory, or precompute with `lingvla depth-cache` and set "
                             "data.depth_cache=true")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["optim"]["betas"] = list(self.optim.betas)
        return data

    def save_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        data = dict(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training config key(s) {unknown}; known: {sorted(known)}")
        model = dict(data.pop("model", {}) or {})
        name = model.pop("preset", None)
        base = preset(name).to_dict() if name else ModelConfig().to_dict()
        for key, value in model.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                base[key].update(value)
            else:
                base[key] = value
        sections = {}
        for key, klass in (("data", DataConfig), ("optim", OptimConfig), ("parallel", ParallelConfig)):
            section = data.pop(key, {}) or {}
            fields = {f.name for f in dataclasses.fields(klass)}
            bad = sorted(set(section) - fields)
            if bad:
                raise ValueError(f"unknown {key} key(s) {bad}; known: {sorted(fields)}")
            defaults = klass()
            section = {k: coerce_number(v, getattr(defaults, k), f"{key}.{k}") for k, v in section.items()}
            if key == "optim" and "betas" in section:
                section["betas"] = tuple(float(b) for b in section["betas"])
            sections[key] = klass(**section)
        data = {k: coerce_number(v, getattr(_DEFAULTS, k), k) for k, v in data.items()}
        config = cls(model=ModelConfig.from_dict(base), **sections, **data)
        config.validate()
        return config


_DEFAULTS = TrainConfig()


def load_train_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """Read a YAML file (or start from defaults when path is None) and apply key=value overrides.

    `model.preset=NAME` swaps the preset before other model overrides apply.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"training config {path} does not exist")
        raw = yaml.safe_load(path.read_text()) or {}
    overrides = list(overrides)
    preset_override = [o for o in overrides if o.split("=", 1)[0].strip() == "model.preset"]
    if preset_override:
        raw.setdefault("model", {})["preset"] = yaml.safe_load(preset_override[-1].split("=", 1)[1])
        overrides = [o for o in overrides if o not in preset_override]
    # Expand to the full structure so overrides can address every key, then rebuild.
    full = TrainConfig.from_dict(raw).to_dict()
    apply_overrides(full, overrides)
    return TrainConfig.from_dict(full)
