"""Normalization of a robot's state and actions, shared by the training loader and inference.

    norm = Normalizer.from_file("norm_stats.json", "aloha", mode="quantile")
    s = norm.normalize_state(raw_state)            # [..., 14] numpy or torch, same type back
    a = norm.unnormalize_action(model_chunk_14d)   # back to robot units
    s_unified = pad_to_unified(s, 32, positions)   # into the model's padded width (zeros elsewhere)
    a_robot = cut_from_unified(chunk_32d, positions)

Modes (both are y = (x - center) / scale, per dim):
  "quantile" (default, the released recipe): center = (q01 + q99) / 2, scale = (q99 - q01) / 2, so
             q01..q99 -> [-1, 1]; values outside are not clipped unless ``clip`` is given.
  "mean_std": center = mean, scale = std.
  "bounds_99_woclip": the released LingBot-VLA formula exactly, (x - q01) / (q99 - q01 + 1e-6) * 2 - 1:
             center = (q01 + q99 + 1e-6) / 2, scale = (q99 - q01 + 1e-6) / 2, no clipping and no floor
             (use it with released weights; "quantile" differs from it only by that constant and
             the floor).
Scale floor: a dim whose scale is below ``min_scale`` (raw units, default 1e-3) uses min_scale
instead - a constant or nearly constant dim would otherwise blow small deviations up to huge values;
such dims are listed in a warning and in ``Normalizer.floored``.

Stats files: ours ({"norm_stats": {embodiment: {"state": {...}, "action": {...}}}, ...}, written by
`lingvla stats`) and the released/OpenPI layout ({"norm_stats": {"state"|"observation.state": {...},
"action"|"actions": {...}}}), which holds one robot and is used for whichever embodiment is asked.
The released RoboTwin files split that robot's vector by body part (`observation.state.arm.position`
with 2n arm joints, `observation.state.effector.position` with 2 grippers; the same under `action.`):
they are joined in the robot's order, left arm + left gripper + right arm + right gripper
(arm[:n] + effector[0] + arm[n:] + effector[1]).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from lingvla.data.errors import MissingStatsError

MODES = ("quantile", "mean_std", "bounds_99_woclip")
RELEASED_EPS = 1e-6
DEFAULT_MIN_SCALE = 1e-3
KEY_ALIASES = {"state": ("state", "observation.state"), "action": ("action", "actions")}
SPLIT_SUFFIXES = (".arm.position", ".effector.position")


def join_arm_effector(arm: dict, effector: dict, where: str) -> dict:
    """One robot's stats from the released body-part split: for every per-dim field both parts
    hold, arm[:n] + effector[0] + arm[n:] + effector[1] (two arms of n joints, two grippers)."""
    out = {}
    for field, values in arm.items():
        if field not in effector or not isinstance(values, list):
            continue
        a, e = np.asarray(values, dtype=np.float64), np.asarray(effector[field], dtype=np.float64)
        if a.ndim != 1 or e.shape != (2,) or len(a) % 2:
            raise MissingStatsError(f"{where}: {field!r} has {a.shape} arm and {e.shape} effector values; "
                                    "the split layout needs an even number of arm joints and 2 grippers")
        n = len(a) // 2
        out[field] = np.concatenate([a[:n], e[:1], a[n:], e[1:]]).tolist()
    return out


def _split_stats(scope: dict, aliases, where: str) -> dict | None:
    for prefix in aliases:
        arm, effector = (scope.get(prefix + suffix) for suffix in SPLIT_SUFFIXES)
        if arm is None and effector is None:
            continue
        if arm is None or effector is None:
            names = [prefix + suffix for suffix in SPLIT_SUFFIXES]
            have, lack = names if arm is not None else names[::-1]
            raise MissingStatsError(f"{where} has {have!r} but not {lack!r}: the split layout needs both")
        return join_arm_effector(arm, effector, f"{where} {prefix}")
    return None


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def pad_to_unified(x, width: int, positions=None):
    """[..., n] -> [..., width] with x at ``positions`` (default: the first n) and zeros elsewhere."""
    n = x.shape[-1]
    positions = np.arange(n) if positions is None else np.asarray(positions, dtype=np.int64)
    if len(positions) != n:
        raise ValueError(f"got {n} values for {len(positions)} unified positions")
    if n and positions.max() >= width:
        raise ValueError(f"{n} robot dims do not fit the unified width {width}")
    if _is_torch(x):
        import torch

        out = x.new_zeros((*x.shape[:-1], width))
        out[..., torch.as_tensor(positions, device=x.device)] = x
        return out
    out = np.zeros((*x.shape[:-1], width), dtype=np.asarray(x).dtype)
    out[..., positions] = x
    return out


def cut_from_unified(y, positions):
    """[..., width] -> the robot's dims: ``positions`` may be an int n (the first n) or indices."""
    if isinstance(positions, (int, np.integer)):
        return y[..., :int(positions)]
    positions = np.asarray(positions, dtype=np.int64)
    if _is_torch(y):
        import torch

        return y[..., torch.as_tensor(positions, device=y.device)]
    return y[..., positions]


def load_stats_file(path_or_dict) -> tuple[dict, str]:
    if isinstance(path_or_dict, dict):
        return path_or_dict, "<dict>"
    path = Path(path_or_dict)
    if not path.exists():
        raise MissingStatsError(f"normalization stats file {path} does not exist "
                                "(compute it with `lingvla stats DATASET_DIR --embodiment NAME --out FILE`)")
    return json.loads(path.read_text()), str(path)


def is_single_robot(data: dict) -> bool:
    """A stats file in a single-robot layout (the released ones: flat, or split by body part),
    rather than ours with one entry per embodiment."""
    table = data.get("norm_stats", data) if isinstance(data, dict) else None
    return isinstance(table, dict) and any(isinstance(v, dict) and "mean" in v for v in table.values())


def embodiment_stats_file(data: dict, embodiment: str, source: str = "<dict>") -> dict:
    """Any stats layout -> ours, holding `embodiment`'s entry (a single-robot file's stats under
    that name), with where it came from."""
    return {"norm_stats": {embodiment: select_stats(data, embodiment, source)}, "count": data.get("count"),
            "converted_from": source}


def select_stats(data: dict, embodiment: str, source: str = "<dict>") -> dict[str, dict]:
    """{"state": stats, "action": stats} for one embodiment from either file layout."""
    table = data.get("norm_stats", data)
    if not isinstance(table, dict):
        raise MissingStatsError(f"{source}: 'norm_stats' is not a mapping")
    if is_single_robot(data):
        scope, where = table, f"{source} (single-robot layout)"
    else:
        if embodiment not in table:
            raise MissingStatsError(f"{source} has no normalization stats for embodiment {embodiment!r}; "
                                    f"it has {sorted(table)}. Run `lingvla stats DATASET_DIR "
                                    f"--embodiment {embodiment} --out {source}`")
        scope, where = table[embodiment], f"{source} embodiment {embodiment!r}"
    out = {}
    for key, aliases in KEY_ALIASES.items():
        found = next((scope[a] for a in aliases if a in scope), None)
        if found is None:
            found = _split_stats(scope, aliases, where)
        if found is None:
            raise MissingStatsError(f"{where} has no {key!r} stats (looked for {list(aliases)}; "
                                    f"found {sorted(scope)}) for embodiment {embodiment!r}")
        out[key] = found
    return out


class Normalizer:
    """Per-dim affine normalization of one embodiment's state and action vectors."""

    def __init__(self, stats: dict[str, dict], embodiment: str, *, mode: str = "quantile",
                 min_scale: float = DEFAULT_MIN_SCALE, clip: float | None = None, source: str = "<dict>",
                 state_dim: int | None = None, action_dim: int | None = None):
        if mode not in MODES:
            raise ValueError(f"normalization mode {mode!r}; choose from {MODES}")
        self.embodiment, self.mode, self.min_scale, self.clip = embodiment, mode, float(min_scale), clip
        self.center: dict[str, np.ndarray] = {}
        self.scale: dict[str, np.ndarray] = {}
        self.floored: dict[str, list[int]] = {}
        expected = {"state": state_dim, "action": action_dim}
        for key in ("state", "action"):
            if key not in stats:
                raise MissingStatsError(f"{source}: no {key!r} stats for embodiment {embodiment!r}")
            s = stats[key]
            need = ("mean", "std") if mode == "mean_std" else ("q01", "q99")
            missing = [f for f in need if f not in s]
            if missing:
                raise MissingStatsError(f"{source}: {key!r} stats of embodiment {embodiment!r} lack {missing} "
                                        f"needed by mode {mode!r}")
            if mode == "quantile":
                lo, hi = np.asarray(s["q01"], np.float64), np.asarray(s["q99"], np.float64)
                center, scale = (lo + hi) / 2, (hi - lo) / 2
            elif mode == "bounds_99_woclip":
                lo, hi = np.asarray(s["q01"], np.float64), np.asarray(s["q99"], np.float64)
                center, scale = (lo + hi + RELEASED_EPS) / 2, (hi - lo + RELEASED_EPS) / 2
            else:
                center, scale = np.asarray(s["mean"], np.float64), np.asarray(s["std"], np.float64)
            if expected[key] is not None and len(center) != expected[key]:
                raise MissingStatsError(f"{source}: {key!r} stats of embodiment {embodiment!r} have {len(center)} "
                                        f"dims; the embodiment has {expected[key]}")
            floor = 0.0 if mode == "bounds_99_woclip" else self.min_scale
            small = np.flatnonzero(~(scale >= floor)) if floor > 0 else np.zeros(0, dtype=np.int64)
            if len(small):
                names = s.get("names") or []
                label = [names[i] if i < len(names) else i for i in small]
                warnings.warn(f"normalization ({mode}) of {embodiment} {key}: dims {small.tolist()} {label} have "
                              f"scale < {self.min_scale:g}; using {self.min_scale:g} for them", stacklevel=2)
                scale = np.where(scale >= self.min_scale, scale, self.min_scale)
            self.floored[key] = small.tolist()
            self.center[key], self.scale[key] = center, scale
        self._torch_cache: dict = {}

    @classmethod
    def from_file(cls, path_or_dict, embodiment: str, **kwargs) -> "Normalizer":
        """Build from a norm_stats.json path (or its loaded dict) for one embodiment."""
        data, source = load_stats_file(path_or_dict)
        return cls(select_stats(data, embodiment, source), embodiment, source=source, **kwargs)

    @property
    def state_dim(self) -> int:
        return len(self.center["state"])

    @property
    def action_dim(self) -> int:
        return len(self.center["action"])

    def _params(self, key: str, x):
        if not _is_torch(x):
            return self.center[key], self.scale[key]
        cache_key = (key, x.dtype, x.device)
        if cache_key not in self._torch_cache:
            import torch

            dtype = x.dtype if x.is_floating_point() else torch.float32
            self._torch_cache[cache_key] = tuple(torch.as_tensor(a, dtype=dtype, device=x.device)
                                                 for a in (self.center[key], self.scale[key]))
        return self._torch_cache[cache_key]

    def _check(self, key: str, x) -> None:
        if x.shape[-1] != len(self.center[key]):
            raise ValueError(f"{self.embodiment} {key} has {len(self.center[key])} dims; got an array "
                             f"with last dim {x.shape[-1]} (cut it out of the unified width first)")

    def normalize(self, key: str, x):
        self._check(key, x)
        center, scale = self._params(key, x)
        if not _is_torch(x):
            x = np.asarray(x)
            y = ((x - center) / scale).astype(x.dtype if x.dtype.kind == "f" else np.float32)
            return np.clip(y, -self.clip, self.clip) if self.clip is not None else y
        y = (x - center) / scale
        return y.clamp(-self.clip, self.clip) if self.clip is not None else y

    def unnormalize(self, key: str, y):
        self._check(key, y)
        center, scale = self._params(key, y)
        if not _is_torch(y):
            y = np.asarray(y)
            return (y * scale + center).astype(y.dtype if y.dtype.kind == "f" else np.float64)
        return y * scale + center

    def normalize_state(self, x):
        return self.normalize("state", x)

    def normalize_action(self, x):
        return self.normalize("action", x)

    def unnormalize_action(self, y):
        return self.unnormalize("action", y)

    def unnormalize_state(self, y):
        return self.unnormalize("state", y)
