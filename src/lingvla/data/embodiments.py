"""Embodiments: how one robot's dataset columns and cameras map into the unified model space.

An embodiment is declared in YAML (built-ins in lingvla/data/embodiments/*.yaml; users add their
own files or directories through ``LINGVLA_EMBODIMENTS=path[:path...]`` or the ``paths`` argument,
no code needed; a later definition of a name replaces an earlier one):

    my_robot:
      description: two 7-DoF arms with grippers
      status: public            # or "assumed": the layout is our guess, check it against your data
      robot_types: [my_robot]   # info.json robot_type values that select this entry automatically
      state:                    # ordered fields; by convention [left arm, left gripper, right arm,
        - {name: left_arm, column: observation.state, start: 0, stop: 7}    #  right gripper, ...]
        - {name: left_gripper, column: observation.state, start: 7, stop: 8}
        - {name: right_arm, column: observation.state, indices: [8, 9, 10, 11, 12, 13, 14]}
        - {name: right_gripper, column: observation.state, start: 15, stop: 16}
      action: [...]             # same form, usually column: action
      cameras:                  # model slot -> dataset video/image key, or a list of candidates
        head: [observation.images.top, observation.images.cam_high]
        left_wrist: observation.images.left_wrist
        right_wrist: null       # no such camera: a zero image with image_mask False

The robot's own vector is its fields concatenated in order. In the unified vector of width D the
fields are packed from position 0 in that order (the released recipe), unless a field gives
``offset: k`` to pin it at position k (e.g. to line up grippers of 6- and 7-DoF arms). The action
dim mask is True exactly at the action fields' positions. A robot that needs more than D
positions is an error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lingvla.data.errors import EmbodimentMismatchError

BUILTIN_DIR = Path(__file__).parent / "embodiments"
CAMERA_SLOTS = ("head", "left_wrist", "right_wrist")
ENV_VAR = "LINGVLA_EMBODIMENTS"


@dataclass(frozen=True)
class Field:
    name: str
    column: str
    indices: tuple[int, ...]
    offset: int | None = None

    @property
    def dim(self) -> int:
        return len(self.indices)


@dataclass
class Embodiment:
    name: str
    state: list[Field]
    action: list[Field]
    cameras: dict[str, list[str]] = field(default_factory=dict)
    description: str = ""
    status: str = "public"
    robot_types: list[str] = field(default_factory=list)
    source: str = ""

    def fields(self, kind: str) -> list[Field]:
        if kind not in ("state", "action"):
            raise ValueError(f"kind must be 'state' or 'action'; got {kind!r}")
        return self.state if kind == "state" else self.action

    def dim(self, kind: str) -> int:
        return sum(f.dim for f in self.fields(kind))

    @property
    def state_dim(self) -> int:
        return self.dim("state")

    @property
    def action_dim(self) -> int:
        return self.dim("action")

    def columns(self) -> list[str]:
        return list(dict.fromkeys(f.column for f in self.state + self.action))

    def dim_names(self, kind: str) -> list[str]:
        return [f"{f.name}.{i}" if f.dim > 1 else f.name for f in self.fields(kind) for i in range(f.dim)]

    def positions(self, kind: str, width: int) -> np.ndarray:
        """Unified positions of the robot's dims, in the robot vector's order."""
        out, cursor = [], 0
        for f in self.fields(kind):
            start = cursor if f.offset is None else f.offset
            out.extend(range(start, start + f.dim))
            cursor = start + f.dim
        pos = np.asarray(out, dtype=np.int64)
        if len(pos) and pos.max() >= width:
            raise ValueError(f"embodiment {self.name!r} needs {int(pos.max()) + 1} unified {kind} positions "
                             f"({self.dim(kind)} dims) but the unified width is {width}; "
                             "use a model with a larger action_dim")
        if len(set(out)) != len(out):
            raise ValueError(f"embodiment {self.name!r}: {kind} field offsets overlap")
        return pos

    def dim_mask(self, width: int) -> np.ndarray:
        """bool [width]: True on the unified positions of the robot's action dims."""
        mask = np.zeros(width, dtype=bool)
        mask[self.positions("action", width)] = True
        return mask

    def gather(self, kind: str, columns: dict[str, np.ndarray]) -> np.ndarray:
        """Dataset columns ({column: [N, w]}) -> the robot's vector [N, dim] (float32 or wider)."""
        parts = []
        for f in self.fields(kind):
            col = columns[f.column]
            col = col.reshape(col.shape[0], -1) if col.ndim != 2 else col
            parts.append(col[:, list(f.indices)])
        return np.concatenate(parts, axis=1)

    def pack(self, kind: str, x, width: int):
        """Robot vector [..., dim] -> unified [..., width], zeros elsewhere (numpy or torch)."""
        from lingvla.data.normalize import pad_to_unified

        return pad_to_unified(x, width, self.positions(kind, width))

    def unpack(self, kind: str, y, width: int | None = None):
        """Unified [..., width] -> the robot vector [..., dim] (numpy or torch)."""
        from lingvla.data.normalize import cut_from_unified

        return cut_from_unified(y, self.positions(kind, width if width is not None else y.shape[-1]))

    def camera_key(self, slot: str, available) -> str | None:
        """The first of the slot's candidate keys present in ``available``, else None."""
        for key in self.cameras.get(slot) or []:
            if key in available:
                return key
        return None

    def validate(self, dataset) -> None:
        """Check a LeRobotDataset against this layout; raise EmbodimentMismatchError naming the
        dataset, column and widths when they disagree."""
        for kind in ("state", "action"):
            for f in self.fields(kind):
                ft = dataset.features.get(f.column)
                if ft is None:
                    raise EmbodimentMismatchError(
                        f"dataset {dataset.root} has no column {f.column!r} that embodiment {self.name!r} "
                        f"maps {kind} field {f.name!r} from; its columns: {sorted(dataset.features)}")
                shape = [int(s) for s in ft.get("shape", [])]
                width = int(np.prod(shape)) if shape else 0
                if ft.get("dtype") in ("video", "image", "string") or len(shape) != 1:
                    raise EmbodimentMismatchError(
                        f"dataset {dataset.root}: column {f.column!r} is {ft.get('dtype')} {shape}; "
                        f"embodiment {self.name!r} needs a numeric vector")
                if max(f.indices) >= width:
                    raise EmbodimentMismatchError(
                        f"dataset {dataset.root}: column {f.column!r} has {width} dims but embodiment "
                        f"{self.name!r} reads index {max(f.indices)} for {kind} field {f.name!r} "
                        f"(declared in {self.source or 'code'}); the dataset does not match its embodiment")

    def to_spec(self) -> dict:
        """This embodiment as the YAML mapping it is declared with (e.g. to ship beside a checkpoint)."""
        def fields(items):
            out = []
            for f in items:
                spec = {"name": f.name, "column": f.column, "indices": list(f.indices)}
                if f.offset is not None:
                    spec["offset"] = f.offset
                out.append(spec)
            return out

        return {"description": self.description, "status": self.status, "robot_types": list(self.robot_types),
                "state": fields(self.state), "action": fields(self.action),
                "cameras": {slot: list(keys) for slot, keys in self.cameras.items()}}

    def summary(self) -> dict:
        return {"name": self.name, "status": self.status, "state_dim": self.state_dim,
                "action_dim": self.action_dim, "cameras": {k: v for k, v in self.cameras.items()},
                "description": self.description}


def _parse_field(robot: str, kind: str, spec: dict, source: str) -> Field:
    where = f"{source}: embodiment {robot!r} {kind} field {spec!r}"
    if not isinstance(spec, dict) or "column" not in spec:
        raise ValueError(f"{where}: needs at least 'column' and 'start'/'stop' or 'indices'")
    if "indices" in spec:
        indices = tuple(int(i) for i in spec["indices"])
    elif "start" in spec and "stop" in spec:
        indices = tuple(range(int(spec["start"]), int(spec["stop"])))
    else:
        raise ValueError(f"{where}: give 'start' and 'stop' or 'indices'")
    if not indices or min(indices) < 0:
        raise ValueError(f"{where}: empty or negative indices")
    offset = spec.get("offset")
    return Field(name=str(spec.get("name", spec["column"])), column=str(spec["column"]),
                 indices=indices, offset=None if offset is None else int(offset))


def parse_embodiment(name: str, spec: dict, source: str = "") -> Embodiment:
    if not isinstance(spec, dict):
        raise ValueError(f"{source}: embodiment {name!r} must be a mapping")
    unknown = set(spec) - {"description", "status", "robot_types", "state", "action", "cameras", "notes"}
    if unknown:
        raise ValueError(f"{source}: embodiment {name!r} has unknown key(s) {sorted(unknown)}")
    for kind in ("state", "action"):
        if not spec.get(kind):
            raise ValueError(f"{source}: embodiment {name!r} needs a non-empty {kind!r} field list")
    cameras = {}
    for slot, keys in (spec.get("cameras") or {}).items():
        cameras[str(slot)] = [] if keys is None else ([keys] if isinstance(keys, str) else [str(k) for k in keys])
    status = str(spec.get("status", "public"))
    if status not in ("public", "assumed"):
        raise ValueError(f"{source}: embodiment {name!r} status must be 'public' or 'assumed'")
    return Embodiment(
        name=name,
        state=[_parse_field(name, "state", f, source) for f in spec["state"]],
        action=[_parse_field(name, "action", f, source) for f in spec["action"]],
        cameras=cameras, description=str(spec.get("description", "")).strip(), status=status,
        robot_types=[str(r) for r in spec.get("robot_types") or []], source=source)


class EmbodimentRegistry:
    """Named embodiments: the built-ins, then $LINGVLA_EMBODIMENTS, then explicit paths."""

    def __init__(self, embodiments: dict[str, Embodiment] | None = None):
        self.embodiments: dict[str, Embodiment] = dict(embodiments or {})

    def load(self, path: str | Path) -> "EmbodimentRegistry":
        """Add every embodiment of a YAML file, or of every *.yaml/*.yml in a directory."""
        import yaml

        path = Path(path)
        if path.is_dir():
            files = sorted([*path.glob("*.yaml"), *path.glob("*.yml")])
        elif path.exists():
            files = [path]
        else:
            raise FileNotFoundError(f"embodiment file or directory {path} does not exist")
        for file in files:
            data = yaml.safe_load(file.read_text()) or {}
            if not isinstance(data, dict):
                raise ValueError(f"{file}: expected a mapping of embodiment name -> spec")
            for name, spec in data.items():
                self.embodiments[str(name)] = parse_embodiment(str(name), spec, str(file))
        return self

    def names(self) -> list[str]:
        return sorted(self.embodiments)

    def get(self, name: str) -> Embodiment:
        if name not in self.embodiments:
            raise KeyError(f"unknown embodiment {name!r}; known: {self.names()} "
                           f"(add your own YAML via {ENV_VAR} or --embodiments)")
        return self.embodiments[name]

    def for_robot_type(self, robot_type: str | None) -> Embodiment | None:
        if not robot_type:
            return None
        if robot_type in self.embodiments:
            return self.embodiments[robot_type]
        for emb in self.embodiments.values():
            if robot_type in emb.robot_types:
                return emb
        return None


def load_registry(paths=None) -> EmbodimentRegistry:
    registry = EmbodimentRegistry().load(BUILTIN_DIR)
    for entry in os.environ.get(ENV_VAR, "").split(os.pathsep):
        if entry.strip():
            registry.load(entry.strip())
    if isinstance(paths, (str, Path)):
        paths = [paths]
    for path in paths or []:
        registry.load(path)
    return registry


def get_embodiment(name: str, paths=None) -> Embodiment:
    return load_registry(paths).get(name)


def resolve_embodiment(embodiment, registry: EmbodimentRegistry | None = None, dataset=None) -> Embodiment:
    """An Embodiment from an object, a name, or (name None) the dataset's robot_type."""
    if isinstance(embodiment, Embodiment):
        return embodiment
    registry = registry or load_registry()
    if embodiment is None:
        emb = registry.for_robot_type(getattr(dataset, "robot_type", None))
        if emb is None:
            where = f"dataset {dataset.root} (robot_type {dataset.robot_type!r})" if dataset is not None else "this call"
            raise KeyError(f"no embodiment given for {where}; pass one of {registry.names()}")
        return emb
    return registry.get(str(embodiment))
