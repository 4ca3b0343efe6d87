"""Depth in LeRobot datasets, and depth-teacher targets precomputed once per dataset.

Storage: camera `observation.images.<cam>` has its depth in the numeric feature
`observation.depth.<cam>`, dtype uint16 [H, W], millimetres along the camera axis, one value per
frame in the data parquet (nested fixed-size lists, like any [h, w] feature). 0 means no reading;
65535 means 65.535 m or farther (the simulator's background, ~83 m, saturates there).

Samples: `resize_depth` maps a depth map onto the model's S x S input the way `resize_with_pad`
maps the camera image (aspect kept, centred; nearest sample, so no value is a blend of a near and
a far surface; the bars are 0).

Cache (`lingvla depth-cache`): DATASET/depth_cache/<teacher>/
    meta.json                   format, teacher name/params, image_size, num_latents, teacher_dim,
                                num_frames, dtype, and per camera key its file and input
    <camera key>.npy            float16 [num_frames, num_latents, teacher_dim], row = frame position
                                in episode order (LeRobotDataset.locate), read as a memmap
The teacher sees exactly what it would see online in training: the loader's `depth` (sim-depth)
or `images` (hf-depth) of that frame at the model's image_size.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from lingvla.data.errors import DataError

DEPTH_PREFIX = "observation.depth."
MM_PER_M = 1000.0
DEPTH_MAX_MM = np.iinfo(np.uint16).max
CACHE_DIR = "depth_cache"
CACHE_FORMAT = "lingvla.depth_cache/1"
TEACHERS = ("sim-depth", "hf-depth")


class MissingDepthError(DataError):
    """Depth (or precomputed depth targets) asked for but absent from a dataset."""


def depth_key(camera_key: str) -> str:
    """The depth feature of a camera: observation.images.top -> observation.depth.top."""
    return DEPTH_PREFIX + camera_key.rsplit(".", 1)[-1]


def encode_depth(metres: np.ndarray) -> np.ndarray:
    """float metres -> uint16 millimetres (rounded; beyond 65.535 m saturates; NaN/inf/<0 -> 0)."""
    mm = np.nan_to_num(np.asarray(metres, np.float64) * MM_PER_M, nan=0.0, posinf=DEPTH_MAX_MM, neginf=0.0)
    return np.clip(np.rint(mm), 0, DEPTH_MAX_MM).astype(np.uint16)


def decode_depth(mm: np.ndarray) -> np.ndarray:
    """uint16 millimetres -> float32 metres."""
    return np.asarray(mm, np.float32) / np.float32(MM_PER_M)


def resize_depth(depth: np.ndarray, size: int) -> np.ndarray:
    """[H, W] -> [size, size]: nearest sample, aspect kept, centred, padded with 0 (the geometry of
    lingvla.data.video.resize_with_pad)."""
    h, w = depth.shape
    if h == size and w == size:
        return depth
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    rows = np.minimum(((np.arange(nh) + 0.5) * h / nh).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(nw) + 0.5) * w / nw).astype(np.int64), w - 1)
    out = np.zeros((size, size), dtype=depth.dtype)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top:top + nh, left:left + nw] = depth[rows[:, None], cols[None, :]]
    return out


def require_depth_features(source, camera_keys) -> None:
    """Raise MissingDepthError naming the dataset and key if a used camera has no depth feature."""
    for key in camera_keys:
        if key is None:
            continue
        dk = depth_key(key)
        ft = source.features.get(dk)
        if ft is None:
            have = sorted(k for k in source.features if k.startswith(DEPTH_PREFIX))
            raise MissingDepthError(
                f"dataset {source.root} has no depth feature {dk!r} for camera {key!r} (depth features: "
                f"{have or 'none'}); record it with `lingvla gen-demos --depth`, or train with "
                "data.depth_teacher=hf-depth (a teacher on the camera images)")
        if ft.get("dtype") not in ("uint16",) or len(ft.get("shape", [])) != 2:
            raise MissingDepthError(f"dataset {source.root}: depth feature {dk!r} must be uint16 [H, W] "
                                    f"millimetres; info.json says {ft.get('dtype')} {ft.get('shape')}")


# ------------------------------------------------------------------------------------- cache
def cache_dir(root: str | Path, teacher: str) -> Path:
    return Path(root) / CACHE_DIR / teacher


class DepthCache:
    """Read side of a dataset's depth cache: ``targets(camera_key, position)`` -> float32 [N, D].

    Files are memory-mapped on first use in each process (a pickled cache reopens them)."""

    def __init__(self, root: str | Path, teacher: str, *, num_frames: int | None = None,
                 image_size: int | None = None, num_latents: int | None = None,
                 teacher_dim: int | None = None, camera_keys=()):
        self.dir = cache_dir(root, teacher)
        meta_path = self.dir / "meta.json"
        if not meta_path.is_file():
            raise MissingDepthError(f"no {teacher} depth cache for dataset {root} ({meta_path} is missing); "
                                    f"compute it with `lingvla depth-cache {root} --teacher {teacher}`")
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("format") != CACHE_FORMAT:
            raise MissingDepthError(f"{meta_path}: format {self.meta.get('format')!r}, expected {CACHE_FORMAT!r}")
        m = self.meta
        for name, want in (("num_frames", num_frames), ("image_size", image_size),
                           ("num_latents", num_latents), ("teacher_dim", teacher_dim)):
            if want is not None and int(m[name]) != int(want):
                raise MissingDepthError(
                    f"depth cache {self.dir} has {name}={m[name]}; this run needs {want}: recompute it "
                    f"with `lingvla depth-cache {root} --teacher {teacher} --overwrite ...`")
        missing = [k for k in camera_keys if k is not None and k not in m["cameras"]]
        if missing:
            raise MissingDepthError(f"depth cache {self.dir} holds cameras {sorted(m['cameras'])}; "
                                    f"missing {missing}")
        self.shape = (int(m["num_latents"]), int(m["teacher_dim"]))
        self._arrays: dict[str, np.ndarray] = {}

    def array(self, camera_key: str) -> np.ndarray:
        array = self._arrays.get(camera_key)
        if array is None:
            array = np.load(self.dir / self.meta["cameras"][camera_key]["file"], mmap_mode="r")
            self._arrays[camera_key] = array
        return array

    def targets(self, camera_key: str, position: int) -> np.ndarray:
        return np.asarray(self.array(camera_key)[position], dtype=np.float32)

    def __getstate__(self):
        return {**self.__dict__, "_arrays": {}}


def teacher_params(name: str, teacher) -> dict:
    """What identifies a teacher's outputs, recorded in the cache's meta.json."""
    if name == "sim-depth":
        return {"grid": teacher.grid, "patch": teacher.patch, "max_depth": teacher.max_depth,
                "dim": teacher.dim}
    return {"model_type": teacher.model.config.model_type, "image_size": teacher.image_size,
            "patch": teacher.patch, "dim": teacher.dim}


def write_depth_cache(root: str | Path, teacher_name: str, teacher, *, image_size: int,
                      teacher_path: str | None = None, batch_size: int = 32, device="cpu",
                      overwrite: bool = False, progress: bool = True) -> Path:
    """Run ``teacher`` over every frame of every camera of the dataset at ``root`` once and store
    the tokens (see the module docstring). Returns the cache directory."""
    import torch
    from tqdm import tqdm

    from lingvla.data.lerobot import LeRobotDataset

    if teacher_name not in TEACHERS:
        raise ValueError(f"unknown depth teacher {teacher_name!r}; expected one of {TEACHERS}")
    source = LeRobotDataset(root)
    cameras = source.video_keys + source.image_keys
    if not cameras:
        raise MissingDepthError(f"dataset {root} has no camera features")
    if teacher_name == "sim-depth":  # the cameras with depth; the loader names any it lacks
        with_depth = [k for k in cameras if depth_key(k) in source.features]
        require_depth_features(source, with_depth or cameras[:1])
        cameras = with_depth
    out = cache_dir(root, teacher_name)
    if out.exists():
        if not overwrite:
            raise FileExistsError(f"{out} exists (pass --overwrite to recompute it)")
        shutil.rmtree(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    teacher = teacher.to(device).eval()
    n, d = teacher.num_tokens, teacher.dim
    arrays = {key: np.lib.format.open_memmap(tmp / f"{key}.npy", mode="w+", dtype=np.float16,
                                             shape=(source.num_frames, n, d)) for key in cameras}
    bar = tqdm(total=source.num_frames * len(cameras), desc=f"depth-cache {teacher_name}", unit="frame",
               disable=not progress, dynamic_ncols=True)
    try:
        for ep, episode in enumerate(source.episodes):
            start = source.episode_start(ep)
            for key in cameras:
                for lo in range(0, episode.length, batch_size):
                    frames = range(lo, min(lo + batch_size, episode.length))
                    if teacher_name == "sim-depth":
                        columns, first = source.episode_rows(ep)
                        mm = columns[depth_key(key)][first + frames.start:first + frames.stop]
                        x = np.stack([resize_depth(decode_depth(m), image_size) for m in mm])
                    else:
                        x = np.stack([source.camera_frame(key, ep, f, size=image_size).transpose(2, 0, 1)
                                      for f in frames])
                    with torch.no_grad():
                        tokens = teacher(torch.from_numpy(x)[:, None].to(device))[:, 0]
                    arrays[key][start + frames.start:start + frames.stop] = tokens.float().cpu().numpy()
                    bar.update(len(frames))
    finally:
        bar.close()
    for array in arrays.values():
        array.flush()
    del arrays
    meta = {"format": CACHE_FORMAT, "teacher": teacher_name,
            "teacher_path": str(Path(teacher_path).resolve()) if teacher_path else None,
            "teacher_params": teacher_params(teacher_name, teacher), "image_size": int(image_size),
            "num_latents": n, "teacher_dim": d, "num_frames": source.num_frames,
            "num_episodes": source.num_episodes, "dtype": "float16",
            "cameras": {key: {"file": f"{key}.npy",
                              "input": depth_key(key) if teacher_name == "sim-depth" else key}
                        for key in cameras}}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    tmp.replace(out)
    return out
