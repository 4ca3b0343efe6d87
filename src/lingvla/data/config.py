"""The `data:` section of a training config: which datasets, how they are mixed and loaded."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DataConfig:
    # Each entry: {path: DIR, embodiment: NAME (default: the dataset's robot_type), weight: W}.
    datasets: list[dict] = field(default_factory=list)
    # norm_stats.json covering every embodiment; None: computed from the datasets at start.
    norm_stats: str | None = None
    # "hours" (proportional to recorded time), "frames", "uniform" (explicit weights win).
    weights: str = "hours"
    # "quantile" (q01..q99 -> [-1, 1]), "mean_std", or "bounds_99_woclip" (the released formula exactly)
    normalization: str = "quantile"
    num_workers: int = 2
    # Decode every frame once at the model's image size and hold it in memory (~1.3 GB for 50
    # ALOHA episodes, 3 cameras, 84 px): no per-sample video decoding, so num_workers 0 leaves
    # every core to compute. Refused when it would take over 60% of the available memory.
    preload_images: bool = False
    # Random-shift augmentation of training images (lingvla/data/augment.py): each image is padded
    # by this many pixels (edges repeated) and cropped back at a random offset. 0: off.
    image_shift: int = 0
    on_bad_sample: str = "raise"  # or "skip" (skip-and-count, reported at the end)
    embodiment_paths: list[str] = field(default_factory=list)  # extra user YAML registries
    # Depth distillation (model.depth.enabled): the teacher of the targets. "sim-depth": the datasets'
    # true depth maps (observation.depth.<cam>); "hf-depth": a local transformers depth model
    # (depth_teacher_path) on the camera images. Run online on each batch, or with depth_cache
    # read from DATASET/depth_cache/<depth_teacher> (`lingvla depth-cache`).
    depth_teacher: str = "sim-depth"
    depth_teacher_path: str | None = None
    depth_cache: bool = False
