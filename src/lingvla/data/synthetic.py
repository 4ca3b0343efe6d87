"""Synthetic LeRobot datasets for tests and benchmarks: smooth joint trajectories and smooth images.

Images are low-frequency colour fields that drift with time (so codec loss stays a few levels)
plus a bright disc whose position follows the frame index.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lingvla.data.lerobot import LeRobotDatasetWriter


def smooth_frames(num_frames: int, height: int, width: int, *, seed: int = 0, start: int = 0) -> np.ndarray:
    """[T, H, W, 3] uint8 images that change smoothly in space and time."""
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * np.pi, size=3)
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    out = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    planes = np.empty((3, height, width), dtype=np.float32)
    b = 2 * np.pi * y * 0.5
    sin_b, cos_b = np.sin(b), np.cos(b)
    for i in range(num_frames):
        t = (start + i) * 0.05
        cy, cx = 0.5 + 0.3 * np.sin(t), 0.5 + 0.3 * np.cos(t)
        base = 128 + 60 * np.exp(-((y - cy) * 4) ** 2) * np.exp(-((x - cx) * 4) ** 2)
        for c in range(3):
            # 70 sin(a + b) = 70 sin a cos b + 70 cos a sin b: separable, so outer products only
            a = 2 * np.pi * x * (0.6 + 0.2 * c) + phase[c] + t
            np.multiply(70 * np.sin(a), cos_b, out=planes[c])
            planes[c] += (70 * np.cos(a)) * sin_b
            planes[c] += base
        np.clip(planes, 0, 255, out=planes)
        out[i] = planes.transpose(1, 2, 0)
    return out


def trajectories(num_frames: int, dim: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(state, action) [T, dim] float32: smooth joint paths; action leads state by one step."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_frames + 1, dtype=np.float64)[:, None] / 50.0
    freq = rng.uniform(0.2, 1.5, size=dim)
    amp = rng.uniform(0.1, 1.0, size=dim)
    offset = rng.uniform(-1, 1, size=dim)
    path = offset + amp * np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi, size=dim))
    return path[:-1].astype(np.float32), path[1:].astype(np.float32)


def write_synthetic_dataset(root: str | Path, *, num_episodes: int = 3, episode_length: int = 40,
                            fps: int = 50, dim: int = 14, robot_type: str = "aloha",
                            cameras=("top", "left_wrist", "right_wrist"), image_hw=(64, 80),
                            codebase_version: str = "v3.0", video_codec: str = "h264",
                            tasks=("pick up the cube", "transfer the cube"), seed: int = 0,
                            lengths: list[int] | None = None, overwrite: bool = False,
                            data_files_size_in_mb: float = 100, video_files_size_in_mb: float = 200) -> Path:
    """Write a small dataset; episode e has task tasks[e % len(tasks)] and seed seed + e."""
    h, w = image_hw
    features = {
        "observation.state": {"dtype": "float32", "shape": [dim], "names": [f"joint_{i}" for i in range(dim)]},
        "action": {"dtype": "float32", "shape": [dim]},
        **{f"observation.images.{c}": {"dtype": "video", "shape": [h, w, 3]} for c in cameras},
    }
    writer = LeRobotDatasetWriter(root, fps=fps, robot_type=robot_type, features=features,
                                  codebase_version=codebase_version, video_codec=video_codec,
                                  overwrite=overwrite, data_files_size_in_mb=data_files_size_in_mb,
                                  video_files_size_in_mb=video_files_size_in_mb)
    lengths = lengths or [episode_length] * num_episodes
    for e, length in enumerate(lengths):
        state, action = trajectories(length, dim, seed=seed + e)
        frames = {"observation.state": state, "action": action}
        for k, c in enumerate(cameras):
            frames[f"observation.images.{c}"] = smooth_frames(length, h, w, seed=seed + 100 * e + k)
        writer.add_episode(task=tasks[e % len(tasks)], frames=frames)
    return writer.finalize()
