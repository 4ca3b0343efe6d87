"""Training samples: one frame of one robot's LeRobot dataset -> the model's batch contract.

For frame t of an episode of length L a sample holds
  images          uint8 [C, 3, S, S]  current frame of each camera slot (head, left_wrist, right_wrist),
                                      resized with padding to S x S (aspect kept, centred, black pad)
  image_mask      bool [C]            False for a slot the robot's dataset has no camera for (its image
                                      is zeros); a camera that exists but fails to decode is an error,
                                      never a zero image
  prompt          str                 the frame's task text
  state           float32 [D]         normalized state at t, packed into the unified width D
  actions         float32 [T, D]      normalized actions at t + k for k in range(T), i.e. the delta
                                      timestamps range(T) / fps; steps past the episode end repeat
                                      the last action (LeRobot's clamping) and are flagged in
  action_is_pad   bool [T]            True for t + k >= L
  action_dim_mask bool [D]            True on the robot's real action dims
  embodiment      str
and on request (lingvla.data.depth)
  depth           float32 [C, S, S]   depth=True: metres per camera slot, placed like the image
                                      (zeros for a missing slot, whose image_mask is False)
  depth_targets   float32 [C, N, Dt]  depth_cache=TEACHER: the precomputed teacher tokens (zeros
                                      for a missing slot)
`collate` stacks samples into exactly the contract of lingvla.batch (optional keys included).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from lingvla.data.depth import DepthCache, decode_depth, depth_key, require_depth_features, resize_depth
from lingvla.data.embodiments import CAMERA_SLOTS, Embodiment, resolve_embodiment
from lingvla.data.errors import BadSampleError, DatasetFormatError, EmbodimentMismatchError, NonFiniteValueError
from lingvla.data.lerobot import INDEX_FEATURES, LeRobotDataset
from lingvla.data.normalize import Normalizer
from lingvla.data.transforms import RobotTransform

BAD_SAMPLE_POLICIES = ("raise", "skip")
CONTRACT_KEYS = ("images", "image_mask", "prompt", "state", "actions", "action_dim_mask",
                 "action_is_pad", "embodiment")
OPTIONAL_KEYS = ("depth", "depth_targets")


@dataclass(frozen=True)
class SampleSpec:
    """What every training sample holds, whichever robot recorded it: the model's side of the
    batch contract. `for_model` reads it off a ModelConfig."""

    action_dim: int = 32  # the unified width D
    chunk_size: int = 50  # T
    image_size: int = 224  # S
    camera_slots: tuple[str, ...] = CAMERA_SLOTS  # the model's camera order
    image_resize: str = "pad"  # how a frame becomes S x S: "pad" | "squash" (lingvla.data.video.fit_image)
    normalization: str = "quantile"  # lingvla.data.normalize's modes
    depth: bool = False  # also "depth" (needs the observation.depth.<cam> features)
    depth_cache: str | None = None  # a teacher name: also "depth_targets" from DATASET/depth_cache/<name>

    def __post_init__(self):
        from lingvla.data.normalize import MODES as NORMALIZATION_MODES
        from lingvla.data.video import RESIZE_MODES

        for name in ("action_dim", "chunk_size", "image_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"SampleSpec.{name} must be >= 1; got {getattr(self, name)}")
        unknown = [slot for slot in self.camera_slots if slot not in CAMERA_SLOTS]
        if not self.camera_slots or unknown:
            raise ValueError(f"SampleSpec.camera_slots must be a non-empty subset of {CAMERA_SLOTS}; "
                             f"got {self.camera_slots}")
        if self.image_resize not in RESIZE_MODES:
            raise ValueError(f"SampleSpec.image_resize={self.image_resize!r}; expected one of {RESIZE_MODES}")
        if self.normalization not in NORMALIZATION_MODES:
            raise ValueError(f"SampleSpec.normalization={self.normalization!r}; expected one of "
                             f"{NORMALIZATION_MODES}")
        if self.image_resize != "pad" and (self.depth or self.depth_cache):
            raise ValueError("depth targets are fitted to the image by padding: use image_resize='pad' with depth")
        object.__setattr__(self, "camera_slots", tuple(self.camera_slots))

    @classmethod
    def for_model(cls, model_config, **fields) -> SampleSpec:
        """The spec of a model (any object with ModelConfig's action_dim, chunk_size, image_size,
        num_cameras and image_resize); `fields` sets the data-side ones (normalization, depth, ...)."""
        num_cameras = int(model_config.num_cameras)
        if not 1 <= num_cameras <= len(CAMERA_SLOTS):
            raise ValueError(f"num_cameras must be 1..{len(CAMERA_SLOTS)}; got {num_cameras}")
        return cls(action_dim=model_config.action_dim, chunk_size=model_config.chunk_size,
                   image_size=model_config.image_size, camera_slots=CAMERA_SLOTS[:num_cameras],
                   image_resize=model_config.image_resize, **fields)


class RobotDataset(torch.utils.data.Dataset):
    """Samples from one LeRobot dataset recorded by one embodiment.

    Args:
        root: dataset directory (or a LeRobotDataset).
        embodiment: name, Embodiment, or None to pick it from info.json's robot_type.
        norm_stats: a norm_stats.json path, its dict, a Normalizer, or None for raw (unnormalized)
            values - the model's contract wants normalized values, so None is for inspection only.
        spec: what a sample holds (SampleSpec: width, chunk, image size and fit, cameras,
            normalization, depth); the default is the model's defaults.
        on_bad_sample: "raise" (default) or "skip": a sample that raises BadSampleError (missing or
            corrupt video, frame past the video's end, NaN) is replaced by the next index that
            works, and counted in ``skipped`` (per process) and in the sample's "_skipped" entry.
        episode_frames: (start, stop): sample only frames start <= f < stop of each episode (stop
            None: to the episode's end); action chunks still read the frames after stop. Mixing the
            same dataset twice, once whole and once with a short window, oversamples a phase (such
            as episode starts, where only the images tell where the object is); a window that ends
            soon after the task succeeds drops frames of holding still.
        episodes / exclude_episodes: episode indices (episode_index as stored) to keep / to leave
            out, e.g. demonstrations known to be bad; None keeps every episode. Not both.
        preload_images: decode every selected episode's camera frames once, at image_size, and hold
            them in memory (uint8; 50 ALOHA episodes of 3 cameras at 84 px take ~1.3 GB): a sample
            then costs an array copy instead of a video seek and decode. With on_bad_sample="skip"
            an episode whose video fails to decode is kept out of memory and its samples skipped.
    """

    def __init__(self, root, embodiment=None, *, spec: SampleSpec | None = None, norm_stats=None,
                 registry=None, on_bad_sample: str = "raise", episode_frames=None, episodes=None,
                 exclude_episodes=None, preload_images: bool = False, max_consecutive_skips: int = 64,
                 video_cache_size: int = 12, data_cache_mb: float = 512):
        spec = SampleSpec() if spec is None else spec
        if on_bad_sample not in BAD_SAMPLE_POLICIES:
            raise ValueError(f"on_bad_sample must be one of {BAD_SAMPLE_POLICIES}; got {on_bad_sample!r}")
        self.source = root if isinstance(root, LeRobotDataset) else \
            LeRobotDataset(root, data_cache_mb=data_cache_mb, video_cache_size=video_cache_size)
        self.embodiment: Embodiment = resolve_embodiment(embodiment, registry, self.source)
        if not isinstance(root, LeRobotDataset):  # load only the columns samples read
            self.source.columns = list(dict.fromkeys([*self.embodiment.columns(), *self.source.image_keys,
                                                      *INDEX_FEATURES]))
        self.embodiment.validate(self.source)
        self.spec = spec
        self.action_dim, self.chunk_size, self.image_size = spec.action_dim, spec.chunk_size, spec.image_size
        self.camera_slots, self.image_resize = spec.camera_slots, spec.image_resize
        available = set(self.source.video_keys) | set(self.source.image_keys)
        self.camera_keys = [self.embodiment.camera_key(slot, available) for slot in self.camera_slots]
        check_camera_mapping(self.source, self.embodiment, self.camera_slots, self.camera_keys, available)
        check_tasks(self.source)
        self.depth = spec.depth
        if self.depth:
            require_depth_features(self.source, self.camera_keys)
            if self.source.columns is not None:
                self.source.columns += [depth_key(k) for k in self.camera_keys if k is not None]
        self.frames = select_frames(self.source, episode_frames, episodes, exclude_episodes)
        self.depth_cache = None if spec.depth_cache is None else DepthCache(
            self.source.root, spec.depth_cache, num_frames=self.source.num_frames, image_size=self.image_size,
            camera_keys=self.camera_keys)
        if isinstance(norm_stats, Normalizer) or norm_stats is None:
            self.normalizer = norm_stats
        else:
            self.normalizer = Normalizer.from_file(norm_stats, self.embodiment.name, mode=spec.normalization,
                                                   state_dim=self.embodiment.state_dim,
                                                   action_dim=self.embodiment.action_dim)
        if self.normalizer is not None and (self.normalizer.state_dim, self.normalizer.action_dim) != \
                (self.embodiment.state_dim, self.embodiment.action_dim):
            raise ValueError(f"norm stats have state/action dims {self.normalizer.state_dim}/"
                             f"{self.normalizer.action_dim}; embodiment {self.embodiment.name!r} has "
                             f"{self.embodiment.state_dim}/{self.embodiment.action_dim}")
        # raw -> batch contract, the served policy's path too (frames are fitted by the reader)
        self.transform = RobotTransform(self.embodiment, self.normalizer, self.action_dim, self.image_size,
                                        self.image_resize)
        self.dim_mask = self.transform.dim_mask
        self.on_bad_sample = on_bad_sample
        self.max_consecutive_skips = max_consecutive_skips
        self.skipped = 0
        self._columns = self.embodiment.columns()
        self._preloaded = self._preload_images() if preload_images else None

    def _preload_images(self) -> dict:
        """{"row": dataset position -> row of the arrays (-1: not held), "images": [slot] uint8
        [rows, 3, S, S] (None for a slot without a camera), "errors": {episode position: error}}."""
        from tqdm import tqdm

        src = self.source
        positions = np.arange(src.num_frames) if self.frames is None else self.frames
        episodes = sorted({src.locate(int(p))[0] for p in np.unique(positions)}) if len(positions) else []
        rows_needed = sum(src.episodes[ep].length for ep in episodes)
        cameras = [key for key in self.camera_keys if key is not None]
        need = rows_needed * len(cameras) * 3 * self.image_size ** 2
        available = _available_memory()
        if available is not None and need > 0.6 * available:
            raise MemoryError(f"preload_images needs {need / 2**30:.1f} GiB for {rows_needed} frames x "
                              f"{len(cameras)} cameras at {self.image_size} px; {available / 2**30:.1f} GiB "
                              "is available: turn preload_images off or select fewer episodes")
        row = np.full(src.num_frames, -1, dtype=np.int64)
        images = [None if key is None else np.zeros((rows_needed, 3, self.image_size, self.image_size), np.uint8)
                  for key in self.camera_keys]
        errors, at = {}, 0
        # disable=None: a bar on a terminal only, never in logs
        for ep in tqdm(episodes, desc=f"decoding {src.root.name} into memory", unit="episode",
                       disable=None if len(episodes) > 1 else True, leave=False):
            length, start = src.episodes[ep].length, src.episode_start(ep)
            try:
                for slot, key in enumerate(self.camera_keys):
                    if key is not None:
                        frames = src.episode_camera_frames(key, ep, size=self.image_size, resize=self.image_resize)
                        images[slot][at:at + length] = frames.transpose(0, 3, 1, 2)
            except BadSampleError as e:
                if self.on_bad_sample == "raise":
                    raise
                errors[ep] = e
                continue
            row[start:start + length] = np.arange(at, at + length)
            at += length
        return {"row": row, "images": [None if a is None else a[:at] for a in images], "errors": errors}

    def __len__(self) -> int:
        return self.source.num_frames if self.frames is None else len(self.frames)

    @property
    def hours(self) -> float:
        return self.source.hours * len(self) / max(self.source.num_frames, 1)

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if self.on_bad_sample == "raise":
            return self.sample(index)
        reasons = []
        for attempt in range(self.max_consecutive_skips + 1):
            try:
                sample = self.sample((index + attempt) % len(self))
            except BadSampleError as e:
                self.skipped += 1
                reasons.append(str(e))
                continue
            sample["_skipped"] = reasons
            return sample
        raise BadSampleError(f"{len(reasons)} consecutive bad samples from index {index} in "
                             f"{self.source.root}; last: {reasons[-1]}")

    def sample(self, index: int) -> dict:
        """The sample of frame ``index`` (of the window, with episode_frames); raises BadSampleError
        on bad data."""
        src, emb = self.source, self.embodiment
        if self.frames is not None:
            index = int(self.frames[index])
        ep, frame = src.locate(index)
        episode = src.episodes[ep]
        columns, first = src.episode_rows(ep)
        steps = frame + np.arange(self.chunk_size)
        is_pad = steps >= episode.length
        rows = first + np.minimum(steps, episode.length - 1)
        state = emb.gather("state", {c: columns[c][first + frame:first + frame + 1] for c in self._columns})[0]
        actions = emb.gather("action", {c: columns[c][rows] for c in self._columns})
        for key, values, frames in (("state", state[None], [frame]), ("action", actions, steps)):
            bad = ~np.isfinite(values)
            if bad.any():
                row, dim = map(int, np.argwhere(bad)[0])
                raise NonFiniteValueError(
                    f"{emb.name} {key} dim {dim} ({emb.dim_names(key)[dim]}) is {values[row, dim]}",
                    path=str(episode.data_path), key=key, episode=episode.index,
                    frame=int(min(frames[row], episode.length - 1)))
        images = np.zeros((len(self.camera_slots), 3, self.image_size, self.image_size), dtype=np.uint8)
        image_mask = np.zeros(len(self.camera_slots), dtype=bool)
        held = self._preloaded
        if held is not None and held["row"][index] < 0:
            raise held["errors"][ep]
        for slot, key in enumerate(self.camera_keys):
            if key is None:
                continue
            images[slot] = held["images"][slot][held["row"][index]] if held is not None else \
                src.camera_frame(key, ep, frame, size=self.image_size, resize=self.image_resize).transpose(2, 0, 1)
            image_mask[slot] = True
        task_index = int(columns["task_index"][first + frame, 0]) if "task_index" in columns else None
        prompt = src.tasks.get(task_index) if task_index is not None else None
        if prompt is None:
            if not episode.tasks:
                raise BadSampleError(f"{src.root} episode {episode.index} frame {frame}: task_index "
                                     f"{task_index} names no task, and the episode lists none")
            prompt = episode.tasks[0]
        extra = {}
        if self.depth:
            depth = np.zeros((len(self.camera_slots), self.image_size, self.image_size), dtype=np.float32)
            for slot, key in enumerate(self.camera_keys):
                if key is not None:
                    depth[slot] = resize_depth(decode_depth(columns[depth_key(key)][first + frame]),
                                               self.image_size)
            extra["depth"] = torch.from_numpy(depth)
        if self.depth_cache is not None:
            targets = np.zeros((len(self.camera_slots), *self.depth_cache.shape), dtype=np.float32)
            for slot, key in enumerate(self.camera_keys):
                if key is not None:
                    targets[slot] = self.depth_cache.targets(key, index)
            extra["depth_targets"] = torch.from_numpy(targets)
        return {
            "images": torch.from_numpy(images),
            "image_mask": torch.from_numpy(image_mask),
            "prompt": prompt,
            "state": torch.from_numpy(self.transform.state(state)),
            "actions": torch.from_numpy(self.transform.actions(actions)),
            "action_dim_mask": self.dim_mask.clone(),
            "action_is_pad": torch.from_numpy(is_pad),
            "embodiment": emb.name,
            **extra,
        }


def check_camera_mapping(source, embodiment: Embodiment, slots, keys, available) -> None:
    """A dataset whose cameras the embodiment does not name would train on black images: an error
    when no camera maps, a warning when some of the dataset's cameras feed no slot while a slot that
    expects a camera gets none (probably a name to add to the embodiment's `cameras`)."""
    expected = {slot: list(embodiment.cameras.get(slot) or []) for slot in slots}
    used = {k for k in keys if k is not None}
    if available and not used:
        raise EmbodimentMismatchError(
            f"dataset {source.root}: none of its cameras {sorted(available)} is one embodiment "
            f"{embodiment.name!r} names for the model's camera slots {expected}; every image would be "
            "black. Add the dataset's camera keys to the embodiment's `cameras` (docs/data.md)")
    unused = sorted(set(available) - used)
    empty = [slot for slot, key in zip(slots, keys) if key is None and expected[slot]]
    if unused and empty:
        warnings.warn(f"dataset {source.root}: cameras {unused} feed no slot while slots {empty} "
                      f"(expecting {[expected[s] for s in empty]}) get black images; add the names to "
                      f"embodiment {embodiment.name!r}'s `cameras` if they are the same views", stacklevel=3)


def check_tasks(source) -> None:
    """Every sample needs its prompt: a dataset without task strings is refused, not trained on an
    empty prompt."""
    if not source.tasks and not any(e.tasks for e in source.episodes):
        raise DatasetFormatError(f"dataset {source.root} has no task strings (meta/tasks.parquet, or "
                                 "the episodes' tasks): every prompt would be empty")


def _available_memory() -> int | None:
    """Bytes of memory available to this process now (Linux), or None when unknown."""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def selected_episodes(source: LeRobotDataset, episodes=None, exclude_episodes=None) -> set[int] | None:
    """The episode indices (episode_index as stored) kept by `episodes` (keep only these) or
    `exclude_episodes` (leave these out); None when neither is given. An index the dataset does not
    hold is an error: it is usually a list meant for another dataset."""
    if episodes is not None and exclude_episodes is not None:
        raise ValueError("give episodes (to keep) or exclude_episodes (to leave out), not both")
    listed = episodes if episodes is not None else exclude_episodes
    if listed is None:
        return None
    name = "episodes" if episodes is not None else "exclude_episodes"
    try:
        listed = {int(i) for i in listed}
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a list of episode indices; got {listed!r}") from None
    stored = {e.index for e in source.episodes}
    unknown = sorted(listed - stored)
    if unknown:
        raise ValueError(f"{name} {unknown[:10]}: {source.root} has no such episode "
                         f"(it holds {len(stored)} episodes, indices {min(stored)}..{max(stored)})")
    kept = listed if episodes is not None else stored - listed
    if not kept:
        raise ValueError(f"{name} leaves no episode of {source.root}")
    return kept


def select_frames(source: LeRobotDataset, window=None, episodes=None, exclude_episodes=None) -> np.ndarray | None:
    """Dataset positions of the frames start <= f < stop (window) of every selected episode
    (selected_episodes), in order; None when nothing is selected away."""
    kept = selected_episodes(source, episodes, exclude_episodes)
    if window is None and kept is None:
        return None
    start, stop = 0, None
    if window is not None:
        try:
            start, stop = window
            start, stop = int(start), (None if stop is None else int(stop))
        except (TypeError, ValueError):
            raise ValueError(f"episode_frames must be [start, stop] (stop may be null); got {window!r}") from None
        if start < 0 or (stop is not None and stop <= start):
            raise ValueError(f"episode_frames [{start}, {stop}]: need 0 <= start < stop")
    positions = []
    for ep, episode in enumerate(source.episodes):
        if kept is not None and episode.index not in kept:
            continue
        end = episode.length if stop is None else min(stop, episode.length)
        positions.append(source.episode_start(ep) + np.arange(min(start, end), end))
    positions = np.concatenate([np.zeros(0, np.int64), *positions]).astype(np.int64)
    if len(positions) == 0:
        raise ValueError(f"episode_frames [{start}, {stop}] selects no frame of {source.root}")
    return positions


def collate(samples: list[dict]) -> dict:
    """Samples -> exactly the batch contract of lingvla.batch (plus the optional `embodiment`)."""
    return collate_with_report(samples)[0]


def collate_with_report(samples: list[dict]) -> tuple[dict, list[str]]:
    """As `collate`, also returning the reasons of samples skipped while producing these."""
    batch = {}
    for key in CONTRACT_KEYS + tuple(k for k in OPTIONAL_KEYS if k in samples[0]):
        values = [s[key] for s in samples]
        # numpy's single-threaded copy: torch.stack's thread pool stalls on a busy loader host
        batch[key] = values if key in ("prompt", "embodiment") else \
            torch.from_numpy(np.stack([v.numpy() for v in values]))
    skipped = [reason for s in samples for reason in s.get("_skipped", [])]
    return batch, skipped
