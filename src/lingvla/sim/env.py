"""The ALOHA environments policies run in: joint position control, camera images and joint state.

    env = make_env("transfer_cube", image_size=96)
    obs = env.reset(seed=100_000)          # {"images": {cam: uint8 HxWx3}, "state": float32[14]}
    obs, reward, done, info = env.step(action14)

Actions are gym-aloha's 14 absolute targets: per arm 6 joint angles and the gripper opening
0 (closed) .. 1 (open). Rewards are gym-aloha's stages 0..4; success is reward 4.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .physics import AlohaPhysics
from .render import CameraRenderer
from .tasks import CAMERAS, EPISODE_STEPS, MAX_REWARD, get_task


class AlohaEnv:
    """One ALOHA task under joint control, rendering only the cameras asked for.

    The episode ends after `max_steps` steps, or at the first success when `stop_on_success`.
    `render_depth` adds obs["depth"][cam]: float32 HxW, distance along the camera axis in metres.
    """

    def __init__(self, task: str, *, image_size: int = 224, cameras: Sequence[str] = CAMERAS,
                 render_depth: bool = False, max_steps: int = EPISODE_STEPS,
                 stop_on_success: bool = True, antialias: bool = False):
        self.task = get_task(task)
        self.prompt = self.task.prompt
        self.cameras = tuple(cameras)
        self.image_size = image_size
        self.render_depth = render_depth
        self.max_steps = max_steps
        self.stop_on_success = stop_on_success
        self.physics = AlohaPhysics(self.task)
        self._renderer = (CameraRenderer(self.physics.model, self.cameras, image_size, image_size,
                                         depth=render_depth, antialias=antialias)
                          if self.cameras else None)
        self._steps = 0
        self._max_reward = 0
        self._started = False

    @property
    def action_dim(self) -> int:
        return 14

    def reset(self, seed: int, *, out: dict | None = None) -> dict:
        """Start an episode from the initial object poses that `seed` draws."""
        self.physics.reset(self.task.sample_object_poses(seed))
        self._steps = 0
        self._max_reward = 0
        self._started = True
        return self._observe(True, out)

    def step(self, action: np.ndarray, *, render: bool = True,
             out: dict | None = None) -> tuple[dict, int, bool, dict]:
        """Apply one 14-D joint-target action for 20 ms.

        render=False skips the cameras (obs has only "state"), e.g. for the last step of a
        recording. `out` = {"images": {cam: array}, "depth": {cam: array}} renders into those
        arrays instead of new ones.
        """
        if not self._started:
            raise RuntimeError("call reset(seed) before step()")
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (14,):
            raise ValueError(f"action must have shape (14,); got {action.shape}")
        if not np.isfinite(action).all():
            raise ValueError("action contains NaN or inf")
        self.physics.set_joint_targets(action)
        self.physics.step()
        self._steps += 1
        reward = self.physics.reward()
        self._max_reward = max(self._max_reward, reward)
        success = reward == MAX_REWARD
        done = (success and self.stop_on_success) or self._steps >= self.max_steps
        self._started = not done
        info = {"success": success, "max_reward": self._max_reward, "step": self._steps}
        return self._observe(render, out), reward, done, info

    def object_poses(self) -> np.ndarray:
        """Current object poses [n_objects * 7] (xyz + wxyz), e.g. to check a seed's layout."""
        return self.physics.object_poses()

    def _observe(self, render: bool, out: dict | None) -> dict:
        obs = {"state": self.physics.joint_state()}
        if not render or self._renderer is None:
            return obs
        n, size = len(self.cameras), self.image_size
        if out is None:
            # One buffer for all cameras: obs_to_numpy hands it out without copying.
            stack = np.empty((n, size, size, 3), np.uint8)
            images = {cam: stack[i] for i, cam in enumerate(self.cameras)}
            depth = None
            if self.render_depth:
                depth_stack = np.empty((n, size, size), np.float32)
                depth = {cam: depth_stack[i] for i, cam in enumerate(self.cameras)}
        else:
            images, depth = out["images"], out.get("depth") if self.render_depth else None
            if self.render_depth and depth is None:
                raise ValueError("render_depth=True needs out['depth'] arrays as well")
        self._renderer.render(self.physics.data, images, depth)
        obs["images"] = images
        if depth is not None:
            obs["depth"] = depth
        return obs

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    def __enter__(self) -> AlohaEnv:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def make_env(task: str, *, image_size: int = 224, cameras: Sequence[str] = CAMERAS,
             render_depth: bool = False, max_steps: int = EPISODE_STEPS,
             stop_on_success: bool = True, antialias: bool = False) -> AlohaEnv:
    """An ALOHA environment: task 'transfer_cube' or 'insertion'. See AlohaEnv."""
    return AlohaEnv(task, image_size=image_size, cameras=cameras, render_depth=render_depth,
                    max_steps=max_steps, stop_on_success=stop_on_success, antialias=antialias)


def _stacked(arrays: list[np.ndarray]) -> np.ndarray | None:
    """The [N, ...] array whose consecutive rows these arrays are, if there is one."""
    base = arrays[0].base
    if not isinstance(base, np.ndarray) or base.shape != (len(arrays),) + arrays[0].shape:
        return None
    if not base.flags.c_contiguous:
        return None
    start = base.__array_interface__["data"][0]
    stride = base.strides[0]
    for index, array in enumerate(arrays):
        if array.base is not base or array.__array_interface__["data"][0] != start + index * stride:
            return None
    return base


def obs_to_numpy(obs: dict, cameras: Sequence[str] | None = None) -> dict:
    """{"images": uint8 [C, H, W, 3], "state": float32 [14]} (+ "depth": float32 [C, H, W]).

    For observations from AlohaEnv in its camera order this returns the render buffer itself
    (no copy); any other order or source is stacked.
    """
    cameras = tuple(obs["images"]) if cameras is None else tuple(cameras)
    result = {"state": np.asarray(obs["state"], np.float32)}
    for key in ("images", "depth"):
        if key in obs:
            arrays = [obs[key][cam] for cam in cameras]
            stacked = _stacked(arrays)
            result[key] = stacked if stacked is not None else np.stack(arrays)
    return result
