"""LeRobot datasets on local disk: a reader for format v3.0 and v2.1 (v2.0), a writer for both.

Our own code over pyarrow and PyAV; the `lerobot` package is not needed.

v3.0 layout (many episodes per file; relational metadata locates each one):
    meta/info.json                                   codebase_version, fps, features, path templates
    meta/stats.json                                  per-feature stats (min/max/mean/std/count/qNN)
    meta/tasks.parquet                               task_index + task (pandas index column "task")
    meta/episodes/chunk-XXX/file-XXX.parquet         one row per episode: episode_index, tasks, length,
                                                     data/chunk_index, data/file_index,
                                                     dataset_from_index, dataset_to_index,
                                                     videos/<key>/{chunk_index,file_index,
                                                     from_timestamp,to_timestamp}, stats/<key>/<stat>
    data/chunk-XXX/file-XXX.parquet                  frames: features + timestamp, frame_index,
                                                     episode_index, index, task_index
    videos/<key>/chunk-XXX/file-XXX.mp4              episodes concatenated; an episode's frame at
                                                     `timestamp` sits at from_timestamp + timestamp
v2.1 layout (one file per episode): data/chunk-XXX/episode_XXXXXX.parquet,
videos/chunk-XXX/<key>/episode_XXXXXX.mp4, meta/episodes.jsonl, meta/tasks.jsonl,
meta/episodes_stats.jsonl; info.json's data_path/video_path templates take episode_chunk
(= episode_index // chunks_size), episode_index and video_key.

Array features: shape [1] is a scalar column, [n] a fixed-size list, [h, w] nested fixed-size lists.
"""

from __future__ import annotations

import json
import math
import shutil
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from lingvla.data.errors import DatasetFormatError

V3_DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V3_VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
V3_EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V2_DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
V2_VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"

# Columns every LeRobot frame carries, besides the user's features.
INDEX_FEATURES = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
NUMERIC_DTYPES = ("float32", "float64", "float16", "int64", "int32", "int16", "int8",
                  "uint8", "uint16", "uint32", "bool")


@dataclass
class Episode:
    """Where one episode's frames and video segments live."""

    index: int                      # episode_index as stored
    length: int                     # number of frames
    tasks: list[str]
    data_path: Path
    from_index: int                 # global frame index of the episode's first frame
    videos: dict[str, tuple[Path, float]] = field(default_factory=dict)  # key -> (file, from_timestamp)


def _is_list(t) -> bool:
    import pyarrow as pa

    return pa.types.is_list(t) or pa.types.is_fixed_size_list(t) or pa.types.is_large_list(t)


def column_to_numpy(column, shape) -> np.ndarray:
    """A pyarrow (chunked) array of scalars or (nested) lists -> numpy [N, *shape]."""
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    n = len(column)
    values = column
    while _is_list(values.type):
        values = values.flatten()
    array = values.to_numpy(zero_copy_only=False)
    try:
        return array.reshape((n, *shape))
    except ValueError:
        raise DatasetFormatError(f"column holds {array.size} values for {n} rows; "
                                 f"declared shape {list(shape)}") from None


def _numpy_to_arrow(values: np.ndarray, dtype: str, shape) -> "object":
    import pyarrow as pa

    values = np.ascontiguousarray(values, dtype=np.dtype(dtype))
    n = values.shape[0]
    if list(shape) == [1]:
        return pa.array(values.reshape(n))
    array = pa.array(values.reshape(-1))
    for size in reversed(list(shape)):
        array = pa.FixedSizeListArray.from_arrays(array, int(size))
    return array


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DatasetFormatError(f"{path} is missing: not a LeRobot dataset directory") from None
    except json.JSONDecodeError as e:
        raise DatasetFormatError(f"{path} is not valid JSON: {e}") from None


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        raise DatasetFormatError(f"{path} is missing (LeRobot v2.x metadata)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class LeRobotDataset:
    """Read-only view of a local LeRobot dataset (v3.0, v2.1 or v2.0).

    Attributes: root, version, fps, robot_type, features (info.json's), tasks {task_index: text},
    episodes [Episode] ordered by episode_index, num_frames, video_keys, image_keys.
    Frames are addressed by position 0..num_frames-1 in episode order, or by (episode position,
    frame in episode). Data files are loaded (all columns, or ``columns`` and the index columns)
    and kept in an LRU of at most ``data_cache_mb`` MiB (always the last file read); video containers
    in a small LRU.
    """

    def __init__(self, root: str | Path, *, columns: list[str] | None = None, data_cache_mb: float = 512,
                 video_cache_size: int = 12):
        self.root = Path(root)
        self.columns = None if columns is None else list(dict.fromkeys([*columns, *INDEX_FEATURES]))
        if not self.root.is_dir():
            raise DatasetFormatError(f"dataset directory {self.root} does not exist")
        self.info = _read_json(self.root / "meta" / "info.json")
        self.version = str(self.info.get("codebase_version", ""))
        try:
            self.fps = float(self.info["fps"])
            self.features: dict[str, dict] = self.info["features"]
        except KeyError as e:
            raise DatasetFormatError(f"{self.root}/meta/info.json lacks {e}") from None
        if self.fps == int(self.fps):
            self.fps = int(self.fps)
        self.robot_type = self.info.get("robot_type")
        if self.version.startswith("v3"):
            self._load_v3()
        elif self.version.startswith("v2"):
            self._load_v2()
        else:
            raise DatasetFormatError(f"{self.root}: codebase_version {self.version!r} is not supported "
                                     "(supported: v2.0, v2.1, v3.0)")
        self.episodes.sort(key=lambda e: e.index)
        lengths = np.array([e.length for e in self.episodes], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(lengths)])
        self.num_frames = int(self._starts[-1])
        self.data_cache_mb = data_cache_mb
        self.video_cache_size = video_cache_size
        self._files: OrderedDict[str, dict] = OrderedDict()
        self._video = None

    # ----------------------------------------------------------------- metadata
    @property
    def video_keys(self) -> list[str]:
        return [k for k, f in self.features.items() if f.get("dtype") == "video"]

    @property
    def image_keys(self) -> list[str]:
        return [k for k, f in self.features.items() if f.get("dtype") == "image"]

    @property
    def numeric_keys(self) -> list[str]:
        return [k for k, f in self.features.items() if f.get("dtype") in NUMERIC_DTYPES]

    @property
    def num_episodes(self) -> int:
        return len(self.episodes)

    @property
    def hours(self) -> float:
        return self.num_frames / self.fps / 3600.0

    def feature_shape(self, key: str) -> tuple[int, ...]:
        if key not in self.features:
            raise KeyError(f"{self.root}: no feature {key!r}; features: {sorted(self.features)}")
        return tuple(int(s) for s in self.features[key]["shape"])

    def image_shape(self, key: str) -> tuple[int, int]:
        """(height, width) of a video/image feature, whatever order info.json lists its shape in."""
        ft = self.features[key]
        names = ft.get("names") or []
        shape = [int(s) for s in ft["shape"]]
        if len(names) == 3 and names[0] in ("channels", "channel", "c"):
            return shape[1], shape[2]
        if len(shape) == 3 and shape[0] == 3 and shape[2] != 3:
            return shape[1], shape[2]
        return shape[0], shape[1]

    def stats(self) -> dict | None:
        """meta/stats.json, or None."""
        path = self.root / "meta" / "stats.json"
        return json.loads(path.read_text()) if path.exists() else None

    def __repr__(self) -> str:
        return (f"LeRobotDataset({str(self.root)!r}, {self.version}, {self.num_episodes} episodes, "
                f"{self.num_frames} frames, {self.fps} fps, videos={self.video_keys})")

    def _load_v3(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        task_path = self.root / "meta" / "tasks.parquet"
        if not task_path.exists():
            raise DatasetFormatError(f"{task_path} is missing (LeRobot v3.0 metadata)")
        table = pq.read_table(task_path)
        text_col = next((c for c in ("task", "__index_level_0__") if c in table.column_names), None)
        if text_col is None or "task_index" not in table.column_names:
            raise DatasetFormatError(f"{task_path} needs columns task_index and task; has {table.column_names}")
        self.tasks = {int(i): str(t) for i, t in zip(table["task_index"].to_pylist(), table[text_col].to_pylist())}

        files = sorted((self.root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
        if not files:
            raise DatasetFormatError(f"{self.root}/meta/episodes/ holds no chunk-*/file-*.parquet")
        tables = []
        for path in files:
            names = pq.read_schema(path).names
            tables.append(pq.read_table(path, columns=[c for c in names if not c.startswith("stats/")]))
        table = pa.concat_tables(tables, promote_options="default")
        rows = table.to_pylist()
        data_tpl = self.info.get("data_path") or V3_DATA_PATH
        video_tpl = self.info.get("video_path") or V3_VIDEO_PATH
        self.episodes = []
        for row in rows:
            try:
                ep = Episode(
                    index=int(row["episode_index"]),
                    length=int(row["length"]) if row.get("length") is not None
                    else int(row["dataset_to_index"]) - int(row["dataset_from_index"]),
                    tasks=list(row.get("tasks") or []),
                    data_path=self.root / data_tpl.format(chunk_index=int(row["data/chunk_index"]),
                                                          file_index=int(row["data/file_index"])),
                    from_index=int(row["dataset_from_index"]),
                )
                for key in self.video_keys:
                    ep.videos[key] = (
                        self.root / video_tpl.format(video_key=key,
                                                     chunk_index=int(row[f"videos/{key}/chunk_index"]),
                                                     file_index=int(row[f"videos/{key}/file_index"])),
                        float(row[f"videos/{key}/from_timestamp"]))
            except KeyError as e:
                raise DatasetFormatError(f"{self.root}/meta/episodes: episode row lacks column {e}") from None
            self.episodes.append(ep)

    def _load_v2(self) -> None:
        meta = self.root / "meta"
        self.tasks = {int(r["task_index"]): str(r["task"]) for r in _read_jsonl(meta / "tasks.jsonl")}
        rows = sorted(_read_jsonl(meta / "episodes.jsonl"), key=lambda r: int(r["episode_index"]))
        chunks_size = int(self.info.get("chunks_size") or 1000)
        data_tpl = self.info.get("data_path") or V2_DATA_PATH
        video_tpl = self.info.get("video_path") or V2_VIDEO_PATH
        self.episodes, start = [], 0
        for row in rows:
            index = int(row["episode_index"])
            fmt = dict(episode_chunk=index // chunks_size, episode_index=index)
            ep = Episode(index=index, length=int(row["length"]), tasks=list(row.get("tasks") or []),
                         data_path=self.root / data_tpl.format(**fmt), from_index=start)
            for key in self.video_keys:
                ep.videos[key] = (self.root / video_tpl.format(video_key=key, **fmt), 0.0)
            start += ep.length
            self.episodes.append(ep)

    # ----------------------------------------------------------------- frames
    def locate(self, position: int) -> tuple[int, int]:
        """Frame position 0..num_frames-1 -> (episode position, frame within the episode)."""
        if not 0 <= position < self.num_frames:
            raise IndexError(f"frame {position} out of range 0..{self.num_frames - 1} in {self.root}")
        ep = int(np.searchsorted(self._starts, position, side="right")) - 1
        return ep, int(position - self._starts[ep])

    def episode_start(self, ep: int) -> int:
        return int(self._starts[ep])

    def _load_file(self, path: Path) -> dict:
        import pyarrow.parquet as pq

        key = str(path)
        cached = self._files.get(key)
        if cached is not None:
            self._files.move_to_end(key)
            return cached
        if not path.exists():
            raise DatasetFormatError(f"data file {path} is missing")
        try:
            names = pq.read_schema(path).names
            table = pq.read_table(path, columns=None if self.columns is None else
                                  [c for c in names if c in self.columns])
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise DatasetFormatError(f"cannot read data file {path}: {type(e).__name__}: {e}") from e
        columns: dict[str, object] = {}
        for name in table.column_names:
            ft = self.features.get(name) or INDEX_FEATURES.get(name)
            if ft is None:
                continue
            if ft.get("dtype") == "image":
                columns[name] = table[name]  # decoded per frame on demand
            elif ft.get("dtype") in NUMERIC_DTYPES:
                try:
                    columns[name] = column_to_numpy(table[name], ft["shape"])
                except DatasetFormatError as e:
                    raise DatasetFormatError(f"{path}: column {name!r}: {e}") from None
        if "episode_index" not in columns:
            raise DatasetFormatError(f"{path} has no episode_index column")
        episode_col = columns["episode_index"].reshape(-1)
        ids, first, counts = np.unique(episode_col, return_index=True, return_counts=True)
        entry = {"columns": columns, "rows": {int(i): (int(f), int(c)) for i, f, c in zip(ids, first, counts)},
                 "bytes": sum(getattr(v, "nbytes", 0) for v in columns.values())}
        self._files[key] = entry
        # Held by size, not count: random samples over a dataset of many files would otherwise
        # read a file from disk for nearly every sample (state and action columns are small).
        while len(self._files) > 1 and sum(e["bytes"] for e in self._files.values()) > self.data_cache_mb * 2**20:
            self._files.popitem(last=False)
        return entry

    def episode_rows(self, ep: int) -> tuple[dict, int]:
        """(columns of the episode's data file, row of the episode's first frame)."""
        episode = self.episodes[ep]
        entry = self._load_file(episode.data_path)
        if episode.index not in entry["rows"]:
            raise DatasetFormatError(f"data file {episode.data_path} holds no rows of episode {episode.index}")
        first, count = entry["rows"][episode.index]
        if count != episode.length:
            raise DatasetFormatError(f"data file {episode.data_path} holds {count} rows of episode "
                                     f"{episode.index}; the metadata says {episode.length}")
        return entry["columns"], first

    def episode_data(self, ep: int, keys: list[str] | None = None) -> dict[str, np.ndarray]:
        """Numeric columns of one episode, [length, *shape] each."""
        columns, first = self.episode_rows(ep)
        length = self.episodes[ep].length
        keys = keys or [k for k, v in columns.items() if isinstance(v, np.ndarray)]
        missing = [k for k in keys if k not in columns]
        if missing:
            raise KeyError(f"{self.episodes[ep].data_path}: no column(s) {missing}")
        return {k: columns[k][first:first + length] for k in keys}

    def iter_data_files(self, keys: list[str]) -> Iterator[tuple[Path, dict[str, np.ndarray]]]:
        """Stream the data files in episode order, reading only ``keys`` (+ episode_index, frame_index)."""
        import pyarrow.parquet as pq

        paths = list(dict.fromkeys(ep.data_path for ep in self.episodes))
        want = list(dict.fromkeys([*keys, "episode_index", "frame_index"]))
        for path in paths:
            if not path.exists():
                raise DatasetFormatError(f"data file {path} is missing")
            names = pq.read_schema(path).names
            missing = [k for k in keys if k not in names]
            if missing:
                raise DatasetFormatError(f"{path} has no column(s) {missing}")
            table = pq.read_table(path, columns=[k for k in want if k in names])
            yield path, {k: column_to_numpy(table[k], (self.features.get(k) or INDEX_FEATURES[k])["shape"])
                         for k in table.column_names}

    def timestamp(self, ep: int, frame: int) -> float:
        columns, first = self.episode_rows(ep)
        if "timestamp" in columns:
            return float(columns["timestamp"][first + frame, 0])
        return frame / self.fps

    def video_frame(self, key: str, ep: int, frame: int, *, size: int | None = None,
                    tolerance_s: float | None = None, resize: str = "pad") -> np.ndarray:
        """Decode one camera frame [H, W, 3] uint8 (fitted onto size x size if given, by `resize`:
        lingvla.data.video.fit_image)."""
        from lingvla.data.video import VideoFrameReader

        if self._video is None:
            self._video = VideoFrameReader(max_open=self.video_cache_size)
        path, offset = self.episodes[ep].videos[key]
        tol = tolerance_s if tolerance_s is not None else 0.5 / self.fps
        return self._video.frame(path, offset + self.timestamp(ep, frame), tol, size=size, resize=resize,
                                 episode=self.episodes[ep].index, frame_index=frame)

    def image_frame(self, key: str, ep: int, frame: int, *, size: int | None = None,
                    resize: str = "pad") -> np.ndarray:
        """An image stored in the parquet (dtype "image": PNG/JPEG bytes) as [H, W, 3] uint8."""
        import io

        from PIL import Image

        from lingvla.data.errors import BadSampleError
        from lingvla.data.video import fit_image

        columns, first = self.episode_rows(ep)
        cell = columns[key][first + frame].as_py()
        data = cell.get("bytes") if isinstance(cell, dict) else cell
        if not data:
            path = cell.get("path") if isinstance(cell, dict) else None
            if path and (self.root / path).exists():
                data = (self.root / path).read_bytes()
            else:
                raise BadSampleError("image cell holds no bytes", path=str(self.episodes[ep].data_path),
                                     key=key, episode=self.episodes[ep].index, frame=frame)
        image = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        return fit_image(image, size, resize) if size else image

    def camera_frame(self, key: str, ep: int, frame: int, *, size: int | None = None,
                     resize: str = "pad") -> np.ndarray:
        if self.features[key]["dtype"] == "video":
            return self.video_frame(key, ep, frame, size=size, resize=resize)
        return self.image_frame(key, ep, frame, size=size, resize=resize)

    def episode_camera_frames(self, key: str, ep: int, *, size: int | None = None,
                              resize: str = "pad") -> np.ndarray:
        """Every frame of one camera in one episode, [length, H, W, 3] uint8: one sequential decode
        of a video (not a seek per frame), or each stored image."""
        length = self.episodes[ep].length
        if self.features[key]["dtype"] != "video":
            return np.stack([self.image_frame(key, ep, f, size=size, resize=resize) for f in range(length)])
        from lingvla.data.video import VideoFrameReader

        if self._video is None:
            self._video = VideoFrameReader(max_open=self.video_cache_size)
        path, offset = self.episodes[ep].videos[key]
        columns, first = self.episode_rows(ep)
        times = columns["timestamp"][first:first + length, 0].astype(np.float64) if "timestamp" in columns \
            else np.arange(length) / self.fps
        return self._video.frames(path, offset + times, 0.5 / self.fps, size=size, resize=resize,
                                  episode=self.episodes[ep].index)

    def frame(self, position: int, *, decode_images: bool = True, size: int | None = None) -> dict:
        """Every feature of one frame (numeric: [*shape] arrays; cameras: [H, W, 3] uint8) + task."""
        ep, f = self.locate(position)
        columns, first = self.episode_rows(ep)
        out = {k: v[first + f] for k, v in columns.items() if isinstance(v, np.ndarray)}
        task_index = int(out["task_index"][0]) if "task_index" in out else None
        out["task"] = self.tasks.get(task_index) if task_index is not None else \
            (self.episodes[ep].tasks[0] if self.episodes[ep].tasks else "")
        if decode_images:
            for key in self.video_keys + self.image_keys:
                out[key] = self.camera_frame(key, ep, f, size=size)
        return out

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_files"] = OrderedDict()
        state["_video"] = None
        return state


# --------------------------------------------------------------------------------------- writer
class LeRobotDatasetWriter:
    """Write a LeRobot dataset, v3.0 (default) or v2.1, episode by episode.

        w = LeRobotDatasetWriter(root, fps=50, robot_type="aloha", features={
              "observation.state": {"dtype": "float32", "shape": [14], "names": [...]},
              "action": {"dtype": "float32", "shape": [14]},
              "observation.images.top": {"dtype": "video", "shape": [H, W, 3]}})
        w.add_episode(task="pick up the cube", frames={"observation.state": [T, 14], ...})
        w.finalize()

    Video features are encoded with H.264 (libx264, yuv420p; ``video_codec="av1"`` for libsvtav1) at
    GOP ``gop``; in v3.0 all episodes of a video file are one stream and each episode's segment is
    recorded as from/to timestamps. Numeric features of any shape go into the parquet files.
    """

    def __init__(self, root: str | Path, fps: int, robot_type: str | None = None,
                 features: dict[str, dict] | None = None, *, codebase_version: str = "v3.0",
                 video_codec: str = "h264", gop: int = 2, crf: int | None = None,
                 chunks_size: int = 1000, data_files_size_in_mb: float = 100,
                 video_files_size_in_mb: float = 200, overwrite: bool = False):
        if codebase_version not in ("v3.0", "v2.1"):
            raise ValueError(f"codebase_version must be 'v3.0' or 'v2.1'; got {codebase_version!r}")
        self.root = Path(root)
        if self.root.exists() and any(self.root.iterdir()):
            if not overwrite:
                raise FileExistsError(f"{self.root} exists and is not empty (pass overwrite=True)")
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.fps, self.robot_type, self.version = int(fps), robot_type, codebase_version
        self.video_codec, self.gop, self.crf = video_codec, gop, crf
        self.chunks_size = chunks_size
        self.data_files_size_in_mb, self.video_files_size_in_mb = data_files_size_in_mb, video_files_size_in_mb
        self.features = self._check_features(features or {})
        self.tasks: dict[str, int] = {}
        self.episode_rows: list[dict] = []
        self.num_frames = 0
        self._data_writer = None
        self._data_loc = (0, 0)
        self._data_bytes = 0
        self._video_writers: dict[str, object] = {}
        self._video_loc: dict[str, tuple[int, int]] = {k: (0, 0) for k in self.video_keys}
        self._finalized = False

    @property
    def video_keys(self) -> list[str]:
        return [k for k, f in self.features.items() if f["dtype"] == "video"]

    @staticmethod
    def _check_features(features: dict) -> dict:
        out = {}
        for key, ft in features.items():
            if key in INDEX_FEATURES:
                raise ValueError(f"feature {key!r} is written by the writer itself; do not declare it")
            if "/" in key:
                raise ValueError(f"feature names cannot contain '/': {key!r}")
            dtype, shape = ft.get("dtype"), [int(s) for s in ft.get("shape", [])]
            if dtype == "video":
                if len(shape) != 3 or shape[2] != 3:
                    raise ValueError(f"video feature {key!r} needs shape [H, W, 3]; got {shape}")
                names = ["height", "width", "channels"]
            elif dtype in NUMERIC_DTYPES:
                if not shape or any(s < 1 for s in shape):
                    raise ValueError(f"feature {key!r} needs a shape like [n] or [h, w]; got {shape}")
                names = ft.get("names")
            else:
                raise ValueError(f"feature {key!r}: dtype {dtype!r} not supported for writing "
                                 f"(video or one of {NUMERIC_DTYPES})")
            out[key] = {"dtype": dtype, "shape": shape, "names": names}
        return out

    def _next_loc(self, loc: tuple[int, int]) -> tuple[int, int]:
        chunk, file = loc
        return (chunk + 1, 0) if file + 1 >= self.chunks_size else (chunk, file + 1)

    def add_episode(self, task: str, frames: dict[str, np.ndarray]) -> int:
        """Append one episode; returns its episode_index."""
        if self._finalized:
            raise RuntimeError("writer already finalized")
        missing = sorted(set(self.features) - set(frames))
        extra = sorted(set(frames) - set(self.features))
        if missing or extra:
            raise ValueError(f"episode frames must hold exactly the declared features; "
                             f"missing {missing}, undeclared {extra}")
        lengths = {k: len(v) for k, v in frames.items()}
        length = next(iter(lengths.values()), 0)
        if length < 1 or any(n != length for n in lengths.values()):
            raise ValueError(f"every feature needs the same number of frames >= 1; got {lengths}")
        arrays = {}
        for key, ft in self.features.items():
            value = np.asarray(frames[key])
            if ft["dtype"] == "video":
                if value.dtype != np.uint8 or value.shape[1:] != tuple(ft["shape"]):
                    raise ValueError(f"{key}: frames must be uint8 [T, {', '.join(map(str, ft['shape']))}]; "
                                     f"got {value.dtype} {list(value.shape)}")
            else:
                if ft["shape"] == [1] and value.ndim == 1:
                    value = value[:, None]
                if list(value.shape[1:]) != ft["shape"]:
                    raise ValueError(f"{key}: expected [T, {', '.join(map(str, ft['shape']))}]; "
                                     f"got {list(value.shape)}")
                value = value.astype(ft["dtype"], copy=False)
            arrays[key] = value
        episode_index = len(self.episode_rows)
        for key, value in arrays.items():
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                frames_bad = np.flatnonzero(~np.isfinite(value.reshape(length, -1)).all(1))
                warnings.warn(f"episode {episode_index} {key}: non-finite values at frames {frames_bad[:10].tolist()}"
                              f"{' ...' if len(frames_bad) > 10 else ''}; written as is, left out of the stats, "
                              "and the loader will refuse those samples", stacklevel=2)
        if task not in self.tasks:
            self.tasks[task] = len(self.tasks)
        row = {"episode_index": episode_index, "tasks": [task], "length": length}
        row.update(self._write_data(episode_index, self.tasks[task], arrays, length))
        for key in self.video_keys:
            row.update(self._write_video(key, episode_index, arrays[key]))
        row.update(_episode_stats(self.features, arrays))
        self.episode_rows.append(row)
        self.num_frames += length
        return episode_index

    def _write_data(self, episode_index: int, task_index: int, arrays: dict, length: int) -> dict:
        import pyarrow as pa
        import pyarrow.parquet as pq

        cols, names = [], []
        for key, ft in self.features.items():
            if ft["dtype"] != "video":
                cols.append(_numpy_to_arrow(arrays[key], ft["dtype"], ft["shape"]))
                names.append(key)
        frame_index = np.arange(length, dtype=np.int64)
        for name, values in (("timestamp", (frame_index / self.fps).astype(np.float32)),
                             ("frame_index", frame_index),
                             ("episode_index", np.full(length, episode_index, dtype=np.int64)),
                             ("index", frame_index + self.num_frames),
                             ("task_index", np.full(length, task_index, dtype=np.int64))):
            cols.append(pa.array(values))
            names.append(name)
        table = pa.Table.from_arrays(cols, names=names)
        if self.version == "v2.1":
            path = self.root / V2_DATA_PATH.format(episode_chunk=episode_index // self.chunks_size,
                                                   episode_index=episode_index)
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, path)
            return {}
        if self._data_writer is not None and self._data_bytes >= self.data_files_size_in_mb * 2**20:
            self._data_writer.close()
            self._data_writer = None
            self._data_loc = self._next_loc(self._data_loc)
        if self._data_writer is None:
            path = self.root / V3_DATA_PATH.format(chunk_index=self._data_loc[0], file_index=self._data_loc[1])
            path.parent.mkdir(parents=True, exist_ok=True)
            self._data_writer = pq.ParquetWriter(path, table.schema)
            self._data_bytes = 0
        self._data_writer.write_table(table)
        self._data_bytes += table.nbytes
        return {"data/chunk_index": self._data_loc[0], "data/file_index": self._data_loc[1],
                "dataset_from_index": self.num_frames, "dataset_to_index": self.num_frames + length}

    def _write_video(self, key: str, episode_index: int, frames: np.ndarray) -> dict:
        from lingvla.data.video import VideoEncoder

        h, w, _ = self.features[key]["shape"]
        if self.version == "v2.1":
            path = self.root / V2_VIDEO_PATH.format(episode_chunk=episode_index // self.chunks_size,
                                                    video_key=key, episode_index=episode_index)
            encoder = VideoEncoder(path, self.fps, w, h, codec=self.video_codec, gop=self.gop, crf=self.crf)
            encoder.write(frames)
            encoder.close()
            return {}
        encoder = self._video_writers.get(key)
        if encoder is not None and encoder.size_bytes() >= self.video_files_size_in_mb * 2**20:
            encoder.close()
            encoder = None
            self._video_loc[key] = self._next_loc(self._video_loc[key])
        if encoder is None:
            chunk, file = self._video_loc[key]
            path = self.root / V3_VIDEO_PATH.format(video_key=key, chunk_index=chunk, file_index=file)
            encoder = VideoEncoder(path, self.fps, w, h, codec=self.video_codec, gop=self.gop, crf=self.crf)
            self._video_writers[key] = encoder
        start, end = encoder.write(frames)
        chunk, file = self._video_loc[key]
        return {f"videos/{key}/chunk_index": chunk, f"videos/{key}/file_index": file,
                f"videos/{key}/from_timestamp": start, f"videos/{key}/to_timestamp": end}

    def finalize(self) -> Path:
        """Close files and write meta/: info.json, stats.json, tasks, episodes. Returns the root."""
        from lingvla.data.video import video_info

        if self._finalized:
            return self.root
        self._finalized = True
        if self._data_writer is not None:
            self._data_writer.close()
        for encoder in self._video_writers.values():
            encoder.close()
        meta = self.root / "meta"
        meta.mkdir(parents=True, exist_ok=True)
        features = {k: dict(v) for k, v in self.features.items()}
        for key in self.video_keys:
            first = next(self.root.glob(f"videos/**/{key}/**/*.mp4"), None) or \
                next(self.root.glob(f"videos/{key}/**/*.mp4"), None)
            info = video_info(first) if first is not None else {}
            info["video.fps"] = self.fps
            features[key]["info"] = info
        features.update({k: dict(v) for k, v in INDEX_FEATURES.items()})
        num_episodes = len(self.episode_rows)
        info = {
            "codebase_version": self.version,
            "robot_type": self.robot_type,
            "total_episodes": num_episodes,
            "total_frames": self.num_frames,
            "total_tasks": len(self.tasks),
            "chunks_size": self.chunks_size,
            "fps": self.fps,
            "splits": {"train": f"0:{num_episodes}"},
        }
        if self.version == "v3.0":
            info.update(data_files_size_in_mb=self.data_files_size_in_mb,
                        video_files_size_in_mb=self.video_files_size_in_mb,
                        data_path=V3_DATA_PATH, video_path=V3_VIDEO_PATH if self.video_keys else None)
            self._write_v3_meta(meta)
        else:
            info.update(total_chunks=max(1, math.ceil(num_episodes / self.chunks_size)),
                        total_videos=num_episodes * len(self.video_keys),
                        data_path=V2_DATA_PATH, video_path=V2_VIDEO_PATH if self.video_keys else None)
            self._write_v2_meta(meta)
        info["features"] = features
        (meta / "stats.json").write_text(json.dumps(self._dataset_stats(), indent=2))
        (meta / "info.json").write_text(json.dumps(info, indent=4))
        return self.root

    def _write_v3_meta(self, meta: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        # tasks.parquet as pandas writes a DataFrame indexed by "task", so LeRobot's loader reads it.
        texts = list(self.tasks)
        pandas_meta = {
            "index_columns": ["task"], "column_indexes": [
                {"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object",
                 "metadata": {"encoding": "UTF-8"}}],
            "columns": [
                {"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
                 "numpy_type": "int64", "metadata": None},
                {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object",
                 "metadata": None}],
            "creator": {"library": "lingvla"}, "pandas_version": "2.2.0"}
        table = pa.table({"task_index": pa.array([self.tasks[t] for t in texts], pa.int64()),
                          "task": pa.array(texts, pa.string())})
        table = table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})
        pq.write_table(table, meta / "tasks.parquet")
        rows = [dict(r, **{"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
                for r in self.episode_rows]
        path = self.root / V3_EPISODES_PATH.format(chunk_index=0, file_index=0)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), path)

    def _write_v2_meta(self, meta: Path) -> None:
        with open(meta / "tasks.jsonl", "w") as f:
            for text, index in self.tasks.items():
                f.write(json.dumps({"task_index": index, "task": text}) + "\n")
        with open(meta / "episodes.jsonl", "w") as f, open(meta / "episodes_stats.jsonl", "w") as g:
            for row in self.episode_rows:
                f.write(json.dumps({k: row[k] for k in ("episode_index", "tasks", "length")}) + "\n")
                stats: dict = {}
                for name, value in row.items():
                    if name.startswith("stats/"):
                        _, key, stat = name.split("/")
                        stats.setdefault(key, {})[stat] = value
                g.write(json.dumps({"episode_index": row["episode_index"], "stats": stats}) + "\n")

    def _dataset_stats(self) -> dict:
        """Aggregate the per-episode stats exactly (count-weighted mean and variance); add
        quantiles for vector features from the written parquet files."""
        from lingvla.data.running_stats import RunningStats

        out: dict[str, dict] = {}
        for key in self.features:
            rows = [r for r in self.episode_rows if f"stats/{key}/count" in r]
            if not rows:
                continue
            counts = np.array([r[f"stats/{key}/count"][0] for r in rows], dtype=np.float64)
            shape = np.asarray(rows[0][f"stats/{key}/mean"]).shape
            means = np.stack([np.asarray(r[f"stats/{key}/mean"], dtype=np.float64) for r in rows])
            stds = np.stack([np.asarray(r[f"stats/{key}/std"], dtype=np.float64) for r in rows])
            w = counts.reshape((-1,) + (1,) * len(shape))
            mean = (w * means).sum(0) / counts.sum()
            var = (w * (stds ** 2 + (means - mean) ** 2)).sum(0) / counts.sum()
            out[key] = {
                "min": np.min([r[f"stats/{key}/min"] for r in rows], axis=0).tolist(),
                "max": np.max([r[f"stats/{key}/max"] for r in rows], axis=0).tolist(),
                "mean": mean.tolist(), "std": np.sqrt(np.maximum(var, 0)).tolist(),
                "count": [int(counts.sum())],
            }
        vector_keys = [k for k, f in self.features.items() if f["dtype"] in NUMERIC_DTYPES and len(f["shape"]) == 1]
        if vector_keys and self.num_frames:
            stats = {k: RunningStats() for k in vector_keys}
            for update in ("update", "update_histogram"):  # two streaming passes over the files
                for batch in _iter_written(self.root, vector_keys, self.features):
                    for k in vector_keys:
                        getattr(stats[k], update)(batch[k][np.isfinite(batch[k]).all(1)])
            for k in vector_keys:
                if stats[k].count == 0 or k not in out:
                    continue
                result = stats[k].result(quantiles=(0.01, 0.10, 0.50, 0.90, 0.99))
                for q in ("q01", "q10", "q50", "q90", "q99"):
                    out[k][q] = result[q]
        return out

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            self.finalize()


def _iter_written(root: Path, keys: list[str], features: dict) -> Iterator[dict[str, np.ndarray]]:
    import pyarrow.parquet as pq

    for path in sorted((root / "data").glob("chunk-*/*.parquet")):
        table = pq.read_table(path, columns=keys)
        yield {k: column_to_numpy(table[k], features[k]["shape"]) for k in keys}


def _episode_stats(features: dict, arrays: dict) -> dict:
    """Per-episode stats columns (LeRobot's stats/<key>/<stat>): numeric features per dim over
    frames; videos per channel in [0, 1], shape [3, 1, 1], from a subsample of frames and pixels."""
    out = {}
    for key, ft in features.items():
        value = arrays[key]
        if ft["dtype"] == "video":
            step = max(1, len(value) // 16)
            x = value[::step, ::4, ::4].reshape(-1, 3).astype(np.float64) / 255.0
            reduce = lambda a: a.reshape(3, 1, 1).tolist()  # noqa: E731
        else:
            x = value.reshape(len(value), -1) if len(ft["shape"]) == 1 else value.reshape(-1, 1)
            x = x[np.isfinite(x).all(1)].astype(np.float64)  # the writer warned about the rest
            reduce = lambda a: a.tolist()  # noqa: E731
            if not len(x):
                continue
        out[f"stats/{key}/min"] = reduce(x.min(0))
        out[f"stats/{key}/max"] = reduce(x.max(0))
        out[f"stats/{key}/mean"] = reduce(x.mean(0))
        out[f"stats/{key}/std"] = reduce(x.std(0))
        out[f"stats/{key}/count"] = [int(len(x)) if len(ft["shape"]) == 1 and ft["dtype"] != "video" else len(value)]
    return out


def convert_dataset(src: str | Path, dst: str | Path, *, codebase_version: str = "v3.0",
                    video_codec: str = "h264", overwrite: bool = False) -> Path:
    """Copy a dataset into the given format version (re-encoding videos): v2.1 <-> v3.0."""
    source = LeRobotDataset(src)
    features = {k: {"dtype": f["dtype"], "shape": list(f["shape"]), "names": f.get("names")}
                for k, f in source.features.items() if k not in INDEX_FEATURES and
                f["dtype"] in (*NUMERIC_DTYPES, "video")}
    for key in source.video_keys:
        features[key]["shape"] = [*source.image_shape(key), 3]
    writer = LeRobotDatasetWriter(dst, fps=source.fps, robot_type=source.robot_type, features=features,
                                  codebase_version=codebase_version, video_codec=video_codec,
                                  overwrite=overwrite)
    for ep, episode in enumerate(source.episodes):
        data = source.episode_data(ep, [k for k in features if k not in source.video_keys])
        for key in source.video_keys:
            data[key] = np.stack([source.video_frame(key, ep, f) for f in range(episode.length)])
        columns, first = source.episode_rows(ep)
        task = episode.tasks[0] if episode.tasks else ""
        if "task_index" in columns:
            task = source.tasks.get(int(columns["task_index"][first, 0]), task)
        writer.add_episode(task=task, frames=data)
    return writer.finalize()
