"""How a LeRobot dataset maps onto an embodiment and the unified space, shown before training.

`inspect_dataset(dataset_dir, embodiment, registry, width)` returns a report (a dict) of: each
state and action dim (its name, the dataset column and index it is read from, its unified
position), each camera slot (the dataset key that fills it, or none), the dataset's columns and
cameras that nothing reads, and the tasks. It refuses to guess: without an embodiment name and
without a robot_type that names one it is an error listing the known embodiments; a column the
embodiment reads that the dataset lacks, or one too narrow, is an error naming it; no camera slot
filled is an error (training would see black images).

`template(dataset_dir, name)` writes a starting YAML for a new embodiment from a dataset's
columns: each state/action column as one field over its whole width, and the camera slots empty
with the dataset's video keys listed, for a person to fill in.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from lingvla.data.embodiments import CAMERA_SLOTS, EmbodimentRegistry, load_registry
from lingvla.data.errors import EmbodimentMismatchError
from lingvla.data.lerobot import LeRobotDataset


def inspect_dataset(dataset_dir: str | Path, embodiment: str | None = None,
                    registry: EmbodimentRegistry | None = None, width: int = 75) -> dict:
    registry = registry or load_registry()
    dataset = LeRobotDataset(dataset_dir)
    if embodiment is None:
        emb = registry.for_robot_type(dataset.robot_type)
        if emb is None:
            raise EmbodimentMismatchError(
                f"dataset {dataset.root}: its robot_type {dataset.robot_type!r} names no embodiment, and none "
                f"was given; pass --embodiment (known: {registry.names()}) or write one "
                f"(`lingvla embodiment template {dataset.root} NAME`)")
        chosen_by = f"robot_type {dataset.robot_type!r}"
    else:
        emb = registry.get(embodiment)
        chosen_by = "given"
    emb.validate(dataset)
    dims = {}
    for kind in ("state", "action"):
        positions = emb.positions(kind, width)
        rows, i = [], 0
        for f in emb.fields(kind):
            for j, index in enumerate(f.indices):
                name = f"{f.name}.{j}" if f.dim > 1 else f.name
                rows.append({"name": name, "column": f.column, "index": int(index), "unified": int(positions[i])})
                i += 1
        dims[kind] = rows
    cameras_available = dataset.video_keys + dataset.image_keys
    cameras = {}
    for slot in CAMERA_SLOTS:
        candidates = emb.cameras.get(slot) or []
        cameras[slot] = {"key": emb.camera_key(slot, cameras_available), "candidates": list(candidates)}
    if not any(c["key"] for c in cameras.values()):
        raise EmbodimentMismatchError(
            f"dataset {dataset.root}: none of its cameras {cameras_available} is one embodiment {emb.name!r} "
            f"expects ({ {s: c['candidates'] for s, c in cameras.items()} }); training would see no images. "
            "Name the dataset's keys under the embodiment's cameras")
    read = set(emb.columns())
    used_cameras = {c["key"] for c in cameras.values() if c["key"]}
    return {
        "dataset": str(dataset.root), "version": dataset.version, "robot_type": dataset.robot_type,
        "episodes": dataset.num_episodes, "frames": dataset.num_frames, "fps": dataset.fps,
        "tasks": sorted(set(dataset.tasks.values())) if dataset.tasks else [],
        "embodiment": emb.name, "chosen_by": chosen_by, "status": emb.status, "width": width,
        "state": dims["state"], "action": dims["action"], "cameras": cameras,
        "unused_columns": [k for k in dataset.numeric_keys if k not in read and not _is_index(k)],
        "unused_cameras": [k for k in cameras_available if k not in used_cameras],
        "missing_cameras": [s for s, c in cameras.items() if c["candidates"] and not c["key"]],
    }


def _is_index(key: str) -> bool:
    return key in ("timestamp", "frame_index", "episode_index", "index", "task_index") or key.startswith("next.")


def format_report(report: dict) -> str:
    lines = [f"dataset   {report['dataset']} (LeRobot {report['version']}, robot_type {report['robot_type']!r}, "
             f"{report['episodes']} episodes, {report['frames']} frames at {report['fps']} fps)",
             f"embodiment {report['embodiment']} ({report['chosen_by']}; status {report['status']}), "
             f"unified width {report['width']}"]
    if report["status"] != "public":
        lines.append(f"  note: this embodiment's layout is {report['status']}: check it against the dataset")
    for kind in ("state", "action"):
        lines.append(f"{kind} ({len(report[kind])} dims):")
        for row in report[kind]:
            lines.append(f"  {row['name']:<22} <- {row['column']}[{row['index']}]  -> unified[{row['unified']}]")
    lines.append("cameras:")
    for slot, cam in report["cameras"].items():
        lines.append(f"  {slot:<12} <- {cam['key'] or '(none: masked out)'}")
    if report["missing_cameras"]:
        lines.append(f"  warning: no dataset camera for {report['missing_cameras']} although the embodiment names "
                     "candidates; those slots are masked out in training")
    if report["unused_cameras"]:
        lines.append(f"cameras nothing reads: {report['unused_cameras']}")
    if report["unused_columns"]:
        lines.append(f"columns nothing reads: {report['unused_columns']}")
    lines.append(f"tasks ({len(report['tasks'])}): {report['tasks'][:5]}{' ...' if len(report['tasks']) > 5 else ''}")
    return "\n".join(lines)


def template(dataset_dir: str | Path, name: str) -> str:
    """A YAML embodiment for the dataset, to be completed by hand (field names, camera slots)."""
    dataset = LeRobotDataset(dataset_dir)
    fields = {}
    for kind, column in (("state", "observation.state"), ("action", "action")):
        if column not in dataset.features:
            raise EmbodimentMismatchError(f"dataset {dataset.root} has no {column!r} column; its columns: "
                                          f"{sorted(dataset.features)}")
        width = int(dataset.feature_shape(column)[0])
        fields[kind] = [{"name": "joints", "column": column, "start": 0, "stop": width}]
    spec = {name: {
        "description": "TODO: what the robot is and what its vector holds",
        "status": "assumed",
        "robot_types": [dataset.robot_type] if dataset.robot_type else [],
        "state": fields["state"],
        "action": fields["action"],
        "cameras": {slot: None for slot in CAMERA_SLOTS},
    }}
    cams = dataset.video_keys + dataset.image_keys
    header = (f"# Embodiment template for {dataset.root}.\n"
              "# Split each column into named fields in the order [left arm, left gripper, right arm, right gripper]\n"
              "# (start/stop or indices), and name the camera key of each slot; the dataset's cameras:\n"
              + "".join(f"#   {k}\n" for k in cams)
              + "# Check it with `lingvla embodiment inspect DATASET --embodiment NAME --embodiments THIS.yaml`.\n")
    return header + yaml.safe_dump(spec, sort_keys=False)
