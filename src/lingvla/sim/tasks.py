"""The two bimanual ALOHA tasks of gym-aloha: models, prompts, initial poses, rewards.

No mujoco import here: these are facts about the tasks (the MJCF files are gym-aloha's).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FPS = 50
CONTROL_DT = 1.0 / FPS
EPISODE_STEPS = 400  # ACT-era datasets: 8 s at 50 Hz
MAX_REWARD = 4
CAMERAS = ("top", "left_wrist", "right_wrist")  # camera order everywhere: head, left, right
ALL_CAMERAS = CAMERAS + ("angle", "front_close", "left_pillar", "right_pillar")

# 14-D joint state and action layout (gym-aloha's): per arm 6 joints then the gripper, whose
# value is the finger opening normalized to 0 (closed) .. 1 (open).
JOINT_NAMES = tuple(
    f"{side}_{joint}" for side in ("left", "right")
    for joint in ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate",
                  "gripper"))
ARM_JOINTS = ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate")
LEFT_GRIPPER, RIGHT_GRIPPER = 6, 13

# Raw model pose of one arm at the start: 6 joints and the two finger slides.
START_ARM_QPOS = (0.0, -0.96, 1.16, 0.0, -0.3, 0.0, 0.02239, -0.02239)
# The finger slide (metres) that the normalized gripper value 0 and 1 map to.
FINGER_CLOSED, FINGER_OPEN = 0.01844, 0.05800


def normalize_gripper(finger: np.ndarray | float) -> np.ndarray | float:
    return (finger - FINGER_CLOSED) / (FINGER_OPEN - FINGER_CLOSED)


def unnormalize_gripper(value: np.ndarray | float) -> np.ndarray | float:
    return value * (FINGER_OPEN - FINGER_CLOSED) + FINGER_CLOSED


@dataclass(frozen=True)
class Task:
    name: str
    prompt: str
    model_file: str            # joint position control (the task policies are evaluated in)
    mocap_model_file: str      # end-effector (mocap) control, for scripted demonstrations
    objects: tuple[str, ...]   # free joints of the movable objects, in qpos order
    # Uniform ranges (low, high) of each object's (x, y, z), sampled in this order.
    object_ranges: tuple[tuple[tuple[float, float], ...], ...]
    # Step by which the scripted arms have reached their first grasp pose (the fingers close
    # after it): corrective noise in demonstrations (lingvla.sim.demonstrations) is faded out by then.
    approach_end: int = 90
    # Later windows (start, end) of corrective noise, with `noise_phases="all"`: the arms carry an
    # object there, and the offsets ramp in over 20 steps from start and out over the 20 before end,
    # so the arms are back on the plan before the next contact (the handover, the insertion).
    later_noise: tuple[tuple[int, int], ...] = ()

    def sample_object_poses(self, seed: int) -> np.ndarray:
        """Initial object poses [n_objects * 7] (xyz + wxyz quaternion) for a seed.

        Same draws as gym-aloha's reset(seed) (one RandomState, objects in order), so seed s
        here starts where gym-aloha's seed s starts.
        """
        rng = np.random.RandomState(seed)
        poses = []
        for ranges in self.object_ranges:
            low, high = np.array(ranges, dtype=np.float64).T
            poses += [rng.uniform(low, high), np.array([1.0, 0.0, 0.0, 0.0])]
        return np.concatenate(poses)


TASKS = {
    "transfer_cube": Task(
        name="transfer_cube",
        prompt="pick up the cube with the right arm and transfer it to the left arm",
        model_file="bimanual_viperx_transfer_cube.xml",
        mocap_model_file="bimanual_viperx_end_effector_transfer_cube.xml",
        objects=("red_box_joint",),
        object_ranges=(((0.0, 0.2), (0.4, 0.6), (0.05, 0.05)),),
        approach_end=100,   # TransferCubePolicy: down at the cube at 100, closed at 120
        # Cube lifted to the meeting point (120-170) and held; the left arm closes in from 175 to 205.
        later_noise=((125, 195),),
    ),
    "insertion": Task(
        name="insertion",
        prompt="insert the peg into the socket",
        model_file="bimanual_viperx_insertion.xml",
        mocap_model_file="bimanual_viperx_end_effector_insertion.xml",
        objects=("red_peg_joint", "blue_socket_joint"),
        object_ranges=(((0.1, 0.2), (0.4, 0.6), (0.05, 0.05)),
                       ((-0.2, -0.1), (0.4, 0.6), (0.05, 0.05))),
        approach_end=95,    # InsertionPolicy.down
        # Objects lifted (115-170) and carried to face each other (aligned at 205).
        later_noise=((125, 200),),
    ),
}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; choose from {sorted(TASKS)}") from None


def assets_dir() -> Path:
    """gym-aloha's MJCF directory, found without importing gym_aloha (which imports gymnasium)."""
    spec = importlib.util.find_spec("gym_aloha")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the ALOHA simulator needs gym-aloha: pip install -e '.[sim]'")
    return Path(next(iter(spec.submodule_search_locations))) / "assets"
