"""The MuJoCo side of the ALOHA tasks: reset, stepping and reward, as gym-aloha defines them.

Stepping follows dm_control (which gym-aloha runs on): 10 physics steps of 2 ms per 20 ms
control step, finishing with mj_step1 so positions and contacts match the state returned; the
reward reads those contacts. Tests check the trajectories and rewards against gym-aloha's.
"""

from __future__ import annotations

from contextlib import contextmanager

from . import gl

gl.configure()

import mujoco  # noqa: E402  (after gl.configure)
import numpy as np  # noqa: E402

from .tasks import (CONTROL_DT, START_ARM_QPOS, Task, assets_dir, get_task,  # noqa: E402
                    normalize_gripper, unnormalize_gripper)

ARMS = ("left", "right")
# Stiff enough that the gripper follows its mocap target: MuJoCo 3's weld with gym-aloha's
# solimp (0.25 0.25 0.001) lets the gripper sag and twist several centimetres and degrees.
STIFF_WELD_SOLIMP = (0.9, 0.95, 0.001)
# Rotation stiffness relative to translation. At 1 the gripper still tilts 3-5 degrees when the
# held peg meets the socket, enough to jam the joint-space replay (0/20 insertions replayed);
# at 5 and above 40/40 replay.
WELD_TORQUESCALE = 10.0
# Forearm roll range (rad) in the mocap variant, with a limit as stiff as the weld. Near the wrist's
# singularity (wrist angle ~0) the weld can turn forearm roll and wrist rotate half a turn in
# opposite directions - the same gripper pose on another joint-space branch. Without the limit,
# 43 of 400 scripted transfer-cube demonstrations took that branch, depending on which side of
# the arm the cube lay, and a policy trained on them failed mostly there (docs/recipes.md). A
# demonstration that stays within the limit is unchanged (the constraint is inactive there); without
# a flip, none of those 400 went past 1.04 rad.
MOCAP_FOREARM_ROLL_LIMIT = 1.0


def load_model(task: Task, mocap: bool = False) -> mujoco.MjModel:
    model = mujoco.MjModel.from_xml_path(
        str(assets_dir() / (task.mocap_model_file if mocap else task.model_file)))
    if mocap:
        for weld in range(model.neq):
            model.eq_solimp[weld, :3] = STIFF_WELD_SOLIMP
            # Weld each gripper to its mocap body with no offset, so a mocap pose *is* the
            # gripper_link pose. (The shipped files weld them 13 cm apart: the offset between
            # the two bodies in the model's reference pose.)
            model.eq_data[weld, 3:10] = (0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0)
            model.eq_data[weld, 10] = WELD_TORQUESCALE
        if MOCAP_FOREARM_ROLL_LIMIT is not None:
            for arm in ARMS:
                joint = model.joint(f"vx300s_{arm}/forearm_roll").id
                model.jnt_range[joint] = (-MOCAP_FOREARM_ROLL_LIMIT, MOCAP_FOREARM_ROLL_LIMIT)
                model.jnt_solimp[joint, :3] = (0.95, 0.99, 0.001)
                model.jnt_solref[joint] = (0.004, 1.0)
    return model


class AlohaPhysics:
    """Model + data of one task, in joint control (16 actuators) or mocap control (4)."""

    def __init__(self, task: str | Task, *, mocap: bool = False):
        self.task = task if isinstance(task, Task) else get_task(task)
        self.mocap = mocap
        self.model = load_model(self.task, mocap)
        self.data = mujoco.MjData(self.model)
        self.substeps = round(CONTROL_DT / self.model.opt.timestep)
        self._object_qpos = [int(self.model.joint(name).qposadr[0]) for name in self.task.objects]
        self._gripper_bodies = [self.model.body(f"vx300s_{arm}/gripper_link").id for arm in ARMS]
        geom = {self.model.geom(i).name: i for i in range(self.model.ngeom)}
        self._geom_ids = geom
        self._ngeom = self.model.ngeom
        self._reward = _REWARDS[self.task.name]

    # ---- reset and stepping ----

    @contextmanager
    def _no_actuation(self):
        flags = self.model.opt.disableflags
        self.model.opt.disableflags = flags | mujoco.mjtDisableBit.mjDSBL_ACTUATION
        try:
            yield
        finally:
            self.model.opt.disableflags = flags

    def reset(self, object_poses: np.ndarray) -> None:
        """Arms at the start pose, objects at `object_poses` ([n_objects * 7])."""
        model, data = self.model, self.data
        mujoco.mj_resetData(model, data)
        data.qpos[:16] = START_ARM_QPOS * 2
        for index, address in enumerate(self._object_qpos):
            data.qpos[address:address + 7] = object_poses[7 * index:7 * index + 7]
        if self.mocap:
            data.ctrl[:] = START_ARM_QPOS[6:8] * 2
            mujoco.mj_kinematics(model, data)
            for arm, body in enumerate(self._gripper_bodies):
                data.mocap_pos[arm] = data.xpos[body]
                data.mocap_quat[arm] = data.xquat[body]
        else:
            data.ctrl[:] = START_ARM_QPOS * 2
        with self._no_actuation():
            mujoco.mj_forward(model, data)

    def step(self) -> None:
        """Advance one control step with the controls already set (dm_control's order)."""
        mujoco.mj_step2(self.model, self.data)
        if self.substeps > 1:
            mujoco.mj_step(self.model, self.data, self.substeps - 1)
        mujoco.mj_step1(self.model, self.data)

    def set_joint_targets(self, action: np.ndarray) -> None:
        """Joint control: 14-D [6 joints, gripper 0..1] per arm -> the 16 position actuators."""
        ctrl = self.data.ctrl
        for arm in range(2):
            a, c = action[7 * arm:7 * arm + 7], ctrl[8 * arm:8 * arm + 8]
            c[:6] = a[:6]
            finger = unnormalize_gripper(a[6])
            c[6], c[7] = finger, -finger

    def set_mocap_targets(self, poses: np.ndarray, grippers: np.ndarray) -> None:
        """Mocap control: poses [2, 7] (xyz + wxyz per gripper_link), grippers [2] in 0..1."""
        self.data.mocap_pos[:] = poses[:, :3]
        self.data.mocap_quat[:] = poses[:, 3:]
        fingers = unnormalize_gripper(np.asarray(grippers, np.float64))
        self.data.ctrl[:] = (fingers[0], -fingers[0], fingers[1], -fingers[1])

    # ---- readouts ----

    def joint_state(self, out: np.ndarray | None = None) -> np.ndarray:
        """14-D state: per arm 6 joint angles and the normalized finger opening."""
        qpos = self.data.qpos
        out = np.empty(14, np.float32) if out is None else out
        out[0:6], out[7:13] = qpos[0:6], qpos[8:14]
        out[6], out[13] = normalize_gripper(qpos[6]), normalize_gripper(qpos[14])
        return out

    def gripper_commands(self) -> np.ndarray:
        """The normalized finger targets now commanded (left, right)."""
        ctrl = self.data.ctrl
        fingers = (ctrl[0], ctrl[2]) if self.mocap else (ctrl[6], ctrl[14])
        return normalize_gripper(np.array(fingers))

    def gripper_poses(self) -> np.ndarray:
        """[2, 7] world pose (xyz + wxyz) of each gripper_link."""
        return np.array([np.concatenate([self.data.xpos[b], self.data.xquat[b]])
                         for b in self._gripper_bodies])

    def object_poses(self) -> np.ndarray:
        return np.concatenate([self.data.qpos[a:a + 7] for a in self._object_qpos])

    def _contact_pairs(self) -> set[tuple[int, int]]:
        geoms = self.data.contact.geom[: self.data.ncon]
        return {(int(a), int(b)) if a < b else (int(b), int(a)) for a, b in geoms}

    def reward(self) -> int:
        pairs = self._contact_pairs()
        ids = self._geom_ids

        def touching(first: str | tuple[str, ...], second: str) -> bool:
            b = ids[second]
            for name in (first,) if isinstance(first, str) else first:
                a = ids[name]
                if ((a, b) if a < b else (b, a)) in pairs:
                    return True
            return False

        return self._reward(touching)


def _transfer_cube_reward(touching) -> int:
    right = touching("red_box", "vx300s_right/10_right_gripper_finger")
    left = touching("red_box", "vx300s_left/10_left_gripper_finger")
    on_table = touching("red_box", "table")
    if left:
        return 3 if on_table else 4        # transfer attempted / done
    if right:
        return 1 if on_table else 2        # grasped / lifted
    return 0


_SOCKET = ("socket-1", "socket-2", "socket-3", "socket-4")


def _insertion_reward(touching) -> int:
    if touching("red_peg", "pin"):
        return 4
    peg_on_table = touching("red_peg", "table")
    socket_on_table = touching(_SOCKET, "table")
    lifted = not peg_on_table and not socket_on_table
    if lifted and any(touching("red_peg", part) for part in _SOCKET):
        return 3
    both_held = (touching("red_peg", "vx300s_right/10_right_gripper_finger")
                 and touching(_SOCKET, "vx300s_left/10_left_gripper_finger"))
    if both_held:
        return 2 if lifted else 1
    return 0


_REWARDS = {"transfer_cube": _transfer_cube_reward, "insertion": _insertion_reward}
