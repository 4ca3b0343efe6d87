"""Scripted demonstrations: waypoint policies in end-effector space, replayed in joint space.

Each policy plans timed waypoints for both grippers - a tool point between the finger pads, its
orientation and the gripper opening - from the objects' privileged poses, and drives gym-aloha's
mocap (end-effector) task variant by interpolating between them. The joint angles the arms take
become the joint-space actions (with the commanded gripper openings, since a gripper closed on an
object never reaches its target); `record_joint_actions` returns them and the mocap episode's
reward, and the caller replays them in the joint-control task, keeping only replays that succeed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .physics import AlohaPhysics
from .tasks import EPISODE_STEPS, LEFT_GRIPPER, MAX_REWARD, RIGHT_GRIPPER, get_task

TOOL_OFFSET = 0.13  # metres from gripper_link along its x axis to the middle of the finger pads
OPEN, CLOSED = 1.0, 0.0


# ---- quaternions (w, x, y, z) ----

def quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    aw, ax, ay, az = a
    bw, bx, by, bz = b
    return np.array([aw * bw - ax * bx - ay * by - az * bz,
                     aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx,
                     aw * bz + ax * by - ay * bx + az * bw])


def axis_angle(axis, degrees: float) -> np.ndarray:
    half = np.radians(degrees) / 2
    return np.concatenate([[np.cos(half)], np.sin(half) * np.asarray(axis, np.float64)])


def slerp(q0: np.ndarray, q1: np.ndarray, f: float) -> np.ndarray:
    dot = float(np.dot(q0, q1))
    if dot < 0:  # take the short way round
        q1, dot = -q1, -dot
    if dot > 0.9995:
        q = q0 + f * (q1 - q0)
        return q / np.linalg.norm(q)
    theta = np.arccos(dot)
    return (np.sin((1 - f) * theta) * q0 + np.sin(f * theta) * q1) / np.sin(theta)


def quat_conj(q: np.ndarray) -> np.ndarray:
    return q * [1.0, -1.0, -1.0, -1.0]


def quat_rotate(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    return quat_mul(quat_mul(q, np.concatenate([[0.0], v])), quat_conj(q))[1:]


def quat_x_axis(q: np.ndarray) -> np.ndarray:
    """The rotated x axis (the direction the gripper points)."""
    w, x, y, z = q
    return np.array([1 - 2 * (y * y + z * z), 2 * (x * y + w * z), 2 * (x * z - w * y)])


def quat_z_axis(q: np.ndarray) -> np.ndarray:
    w, x, y, z = q
    return np.array([2 * (x * z + w * y), 2 * (y * z - w * x), 1 - 2 * (x * x + y * y)])


# Each arm's gripper_link frame when its joints are zero: the left arm faces +x, the right arm
# (mounted turned half round) faces -x. Heading turns the gripper about the vertical, pitch tilts
# the fingers down, roll turns them about their own axis (90 degrees: they close vertically).
ARM_BASES = np.array([[-0.469, 0.5, 0.0], [0.469, 0.5, 0.0]])
_ARM_HEADING = (0.0, 180.0)


def gripper_quat(arm: int, pitch: float = 0.0, roll: float = 0.0,
                 heading: float | None = None) -> np.ndarray:
    heading = _ARM_HEADING[arm] if heading is None else heading
    return quat_mul(quat_mul(axis_angle((0, 0, 1), heading), axis_angle((0, 1, 0), pitch)),
                    axis_angle((1, 0, 0), roll))


def heading_to(arm: int, target: np.ndarray) -> float:
    """Heading (degrees) that points the arm's gripper from its base toward `target`: what the
    waist would give; other headings near the base can need more than the wrist's range."""
    dx, dy = (target - ARM_BASES[arm])[:2]
    return float(np.degrees(np.arctan2(dy, dx)))


# ---- waypoint trajectories ----

def ease(f):
    """Smoothstep: 0 -> 0 and 1 -> 1 with zero slope at both ends (scalar or array)."""
    return f * f * (3.0 - 2.0 * f)


@dataclass
class Waypoint:
    t: int
    tool: np.ndarray      # tool point position (world)
    quat: np.ndarray      # gripper orientation (world, wxyz)
    gripper: float        # opening, 0 closed .. 1 open


class ArmPlan:
    """Eased interpolation between timed waypoints; holds the last one afterwards.

    Each segment starts and ends at rest (smoothstep timing): a held object swings much less
    than with constant-velocity segments, whose corners jerk it.
    """

    def __init__(self, waypoints: list[Waypoint]):
        self.waypoints = sorted(waypoints, key=lambda w: w.t)

    def add(self, waypoint: Waypoint) -> None:
        self.waypoints = sorted(self.waypoints + [waypoint], key=lambda w: w.t)

    def __call__(self, t: float) -> tuple[np.ndarray, np.ndarray, float]:
        points = self.waypoints
        if t <= points[0].t:
            w = points[0]
            return w.tool, w.quat, w.gripper
        for a, b in zip(points, points[1:]):
            if t <= b.t:
                f = ease((t - a.t) / max(b.t - a.t, 1))
                return (a.tool + f * (b.tool - a.tool), slerp(a.quat, b.quat, f),
                        a.gripper + f * (b.gripper - a.gripper))
        w = points[-1]
        return w.tool, w.quat, w.gripper


def mocap_pose(tool: np.ndarray, quat: np.ndarray) -> np.ndarray:
    """gripper_link pose (xyz + wxyz) that puts the tool point at `tool`."""
    return np.concatenate([tool - TOOL_OFFSET * quat_x_axis(quat), quat])


def tool_point(link_pose: np.ndarray) -> np.ndarray:
    return link_pose[:3] + TOOL_OFFSET * quat_x_axis(link_pose[3:])


class ScriptedPolicy:
    """Two ArmPlans (left, right), planned from the physics state at reset."""

    def __init__(self, physics: AlohaPhysics):
        self.physics = physics
        start = physics.gripper_poses()
        grippers = physics.gripper_commands()
        self.start = [Waypoint(0, tool_point(start[arm]), start[arm, 3:], float(grippers[arm]))
                      for arm in range(2)]
        self.plans = self.plan(physics.object_poses())

    def plan(self, objects: np.ndarray) -> tuple[ArmPlan, ArmPlan]:
        raise NotImplementedError

    def observe(self, t: int) -> None:
        """Hook called before each step, for plans that adjust to what happened."""

    def __call__(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        self.observe(t)
        poses, grippers = np.empty((2, 7)), np.empty(2)
        for arm, plan in enumerate(self.plans):
            tool, quat, gripper = plan(t)
            poses[arm] = mocap_pose(tool, quat)
            grippers[arm] = gripper
        return poses, grippers


class TransferCubePolicy(ScriptedPolicy):
    """Right arm picks the cube from above and holds it up mid-air; the left arm, fingers turned
    to close vertically, takes it from the side; the right arm lets go and backs off."""

    meet = np.array([0.0, 0.5, 0.25])

    def plan(self, objects):
        # Grasp 1 cm above the centre of the cube as it rests on the table (it starts 3 cm up).
        cube = objects[:3] * [1, 1, 0] + [0, 0, 0.03]
        left0, right0 = self.start
        pick = gripper_quat(1, pitch=60.0, heading=heading_to(1, cube))
        down = gripper_quat(1, pitch=60.0)
        side = gripper_quat(0, pitch=0.0, roll=90.0)
        meet = self.meet
        right = ArmPlan([
            right0,
            Waypoint(70, cube + [0, 0, 0.10], pick, OPEN),
            Waypoint(100, cube, pick, OPEN),
            Waypoint(120, cube, pick, CLOSED),
            Waypoint(170, meet + [0.02, 0, 0], down, CLOSED),
            Waypoint(235, meet + [0.02, 0, 0], down, CLOSED),
            Waypoint(250, meet + [0.02, 0, 0], down, OPEN),
            Waypoint(300, meet + [0.12, 0, 0.05], down, OPEN),
        ])
        left = ArmPlan([
            left0,
            Waypoint(100, meet + [-0.15, 0, 0], side, OPEN),
            Waypoint(175, meet + [-0.15, 0, 0], side, OPEN),
            Waypoint(205, meet + [0.0, 0, -0.01], side, OPEN),
            Waypoint(225, meet + [0.0, 0, -0.01], side, CLOSED),
            Waypoint(260, meet + [0.0, 0, -0.01], side, CLOSED),
            Waypoint(310, meet + [-0.08, 0, 0], side, CLOSED),
        ])
        return left, right


class InsertionPolicy(ScriptedPolicy):
    """Left arm picks the socket, right arm the peg, both from above; they lift them to face each
    other in mid-air and the peg goes in along the socket's axis.

    Where each object sits in its fingers is measured, not assumed (the peg ends up lower in its
    gripper than the socket's opening, and both may turn a little while the fingers close): once
    lifted, the left gripper is moved so the socket lies level along x at `socket_at`, then the
    right gripper so the peg lies on the socket's axis short of the opening, then along the axis
    until the peg's end is `depth` inside (the pin starts 2 cm in).
    """

    meet = np.array([0.0, 0.5, 0.22])
    socket_at = meet + [-0.06, 0.0, 0.0]
    clearance = 0.03      # peg end to socket opening before going in
    depth = 0.035         # peg end past the opening at the end (the pin starts 2 cm in)
    # Aim the peg's end this far below the socket's axis: replayed under joint control, the
    # peg arm lags and the peg tips up in its fingers, ending up 4-10 mm higher than here.
    aim_below = 0.004
    peg_half, socket_half = 0.06, 0.06
    # Step at which each phase ends: above the objects, down, fingers closed, lifted; aligned;
    # peg re-measured (a swing in its fingers has died down by then); at the entry; inserted.
    above, down, closed, lifted = 70, 95, 115, 170
    aligned, refine_at, at_entry, inserted = 205, 220, 235, 305

    def plan(self, objects):
        # Grasp points: 1.5 cm above the peg's (2 cm tall) and the socket's (4.4 cm) centres
        # as they rest on the table (both start a little above it).
        peg = objects[:3] * [1, 1, 0] + [0, 0, 0.025]
        socket = objects[7:10] * [1, 1, 0] + [0, 0, 0.037]
        left0, right0 = self.start
        left_pick = gripper_quat(0, pitch=60.0, heading=heading_to(0, socket))
        right_pick = gripper_quat(1, pitch=60.0, heading=heading_to(1, peg))
        left = ArmPlan([
            left0,
            Waypoint(self.above, socket + [0, 0, 0.10], left_pick, OPEN),
            Waypoint(self.down, socket, left_pick, OPEN),
            Waypoint(self.closed, socket, left_pick, CLOSED),
            Waypoint(self.lifted, self.socket_at, left_pick, CLOSED),
        ])
        right = ArmPlan([
            right0,
            Waypoint(self.above, peg + [0, 0, 0.10], right_pick, OPEN),
            Waypoint(self.down, peg, right_pick, OPEN),
            Waypoint(self.closed, peg, right_pick, CLOSED),
            Waypoint(self.lifted, self.meet + [0.20, 0.0, 0.0], right_pick, CLOSED),
        ])
        return left, right

    def _move_object(self, arm: int, object_index: int, position: np.ndarray,
                     quat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tool point and orientation of `arm` that put the object it holds at (position, quat)."""
        link = self.physics.gripper_poses()[arm]
        tool, tool_quat = tool_point(link), link[3:]
        obj = self.physics.object_poses()[7 * object_index:7 * object_index + 7]
        # The object's pose in the tool frame stays fixed while it is held.
        relative_quat = quat_mul(quat_conj(tool_quat), obj[3:])
        relative_pos = quat_rotate(quat_conj(tool_quat), obj[:3] - tool)
        new_tool_quat = quat_mul(quat, quat_conj(relative_quat))
        return position - quat_rotate(new_tool_quat, relative_pos), new_tool_quat

    def observe(self, t: int) -> None:
        left, right = self.plans
        level = np.array([1.0, 0.0, 0.0, 0.0])
        reach = self.socket_half + self.peg_half
        if t == self.lifted:
            tool, quat = self._move_object(0, 1, self.socket_at, level)
            left.add(Waypoint(self.aligned, tool, quat, CLOSED))
            entry = self.socket_at + [reach + self.clearance, 0, 0]
            tool, quat = self._move_object(1, 0, entry, level)
            right.add(Waypoint(self.aligned, tool, quat, CLOSED))
            right.add(Waypoint(self.refine_at, tool, quat, CLOSED))
        elif t == self.refine_at:
            socket = self.physics.object_poses()[7:14]
            axis = quat_x_axis(socket[3:])
            low = socket[:3] - self.aim_below * quat_z_axis(socket[3:])
            entry = low + (reach + self.clearance) * axis
            inside = low + (reach - self.depth) * axis
            tool, quat = self._move_object(1, 0, entry, socket[3:])
            right.add(Waypoint(self.at_entry, tool, quat, CLOSED))
            tool, quat = self._move_object(1, 0, inside, socket[3:])
            right.add(Waypoint(self.inserted, tool, quat, CLOSED))


POLICIES = {"transfer_cube": TransferCubePolicy, "insertion": InsertionPolicy}


@dataclass
class ScriptedEpisode:
    seed: int
    actions: np.ndarray        # float32 [steps, 14] joint-space actions for the joint task
    mocap_max_reward: int      # best reward reached in the mocap episode
    object_trace: np.ndarray   # [steps, n_objects * 7] object poses in the mocap episode

    @property
    def mocap_success(self) -> bool:
        return self.mocap_max_reward == MAX_REWARD


def record_joint_actions(task: str, seed: int, steps: int = EPISODE_STEPS) -> ScriptedEpisode:
    """Run the task's scripted policy in the mocap variant; return the joint-space actions."""
    physics = AlohaPhysics(get_task(task), mocap=True)
    physics.reset(physics.task.sample_object_poses(seed))
    policy = POLICIES[task](physics)
    actions = np.empty((steps, 14), np.float32)
    objects = np.empty((steps, len(physics.object_poses())))
    max_reward = 0
    for t in range(steps):
        poses, grippers = policy(t + 1)
        physics.set_mocap_targets(poses, grippers)
        physics.step()
        max_reward = max(max_reward, physics.reward())
        physics.joint_state(out=actions[t])
        actions[t, [LEFT_GRIPPER, RIGHT_GRIPPER]] = grippers
        objects[t] = physics.object_poses()
    return ScriptedEpisode(seed, actions, max_reward, objects)
