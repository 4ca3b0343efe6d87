"""ALOHA environment: seeds, observations, depth, gym-aloha equivalence, seed ranges, headless GL."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("gym_aloha")
pytest.importorskip("mujoco")

from lingvla.sim import gl  # noqa: E402
from lingvla.sim.env import make_env, obs_to_numpy  # noqa: E402
from lingvla.sim.seeds import (EVAL_SEED_START, SeedRangeError, check_demo_seeds,  # noqa: E402
                               check_eval_seeds, demo_seeds, eval_seeds)
from lingvla.sim.tasks import CAMERAS, get_task  # noqa: E402

SIZE = 32


@pytest.fixture(scope="module")
def cube_env():
    env = make_env("transfer_cube", image_size=SIZE, render_depth=True)
    yield env
    env.close()


@pytest.mark.parametrize("task", ["transfer_cube", "insertion"])
def test_seed_reproduces_initial_pose_and_differs_across_seeds(task):
    env = make_env(task, cameras=())
    try:
        env.reset(seed=11)
        first = env.object_poses().copy()
        env.reset(seed=12)
        other = env.object_poses().copy()
        env.reset(seed=11)
        again = env.object_poses().copy()
    finally:
        env.close()
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).max() > 1e-3
    n_objects = len(get_task(task).objects)
    assert first.shape == (7 * n_objects,)


def test_initial_poses_are_gym_alohas():
    # Seed s starts where gym-aloha's reset(seed=s) starts.
    from gym_aloha.utils import sample_box_pose, sample_insertion_pose

    np.testing.assert_array_equal(get_task("transfer_cube").sample_object_poses(5),
                                  sample_box_pose(5))
    np.testing.assert_array_equal(get_task("insertion").sample_object_poses(5),
                                  np.concatenate(sample_insertion_pose(5)))


def test_observation_shapes_dtypes_and_zero_copy(cube_env):
    obs = cube_env.reset(seed=3)
    assert set(obs["images"]) == set(CAMERAS)
    for cam in CAMERAS:
        image = obs["images"][cam]
        assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
        assert image.std() > 5, f"{cam} looks blank"
    assert obs["state"].shape == (14,) and obs["state"].dtype == np.float32
    arrays = obs_to_numpy(obs)
    assert arrays["images"].shape == (3, SIZE, SIZE, 3)
    assert np.shares_memory(arrays["images"], obs["images"]["top"])  # no copy
    np.testing.assert_array_equal(arrays["images"][1], obs["images"]["left_wrist"])
    # Another camera order cannot be a view of the render buffer: stacked instead.
    swapped = obs_to_numpy(obs, ("right_wrist", "top", "left_wrist"))
    np.testing.assert_array_equal(swapped["images"][0], obs["images"]["right_wrist"])
    assert arrays["depth"].shape == (3, SIZE, SIZE)


def test_rendering_is_deterministic_and_follows_the_state(cube_env):
    first = cube_env.reset(seed=4)["images"]["top"].copy()
    again = cube_env.reset(seed=4)["images"]["top"].copy()
    np.testing.assert_array_equal(first, again)
    moved = cube_env.reset(seed=9)["images"]["top"]  # the cube elsewhere
    assert np.abs(moved.astype(int) - first).sum() > 0


def test_depth_is_metres_along_the_camera_axis(cube_env):
    obs = cube_env.reset(seed=0)  # cube at x=0.11, clear of the image centre
    depth = obs["depth"]["top"]
    assert depth.dtype == np.float32
    # The top camera sits 0.8 m above the table top (z = 0), looking straight down at it.
    centre = depth[SIZE // 2 - 1:SIZE // 2 + 1, SIZE // 2 - 1:SIZE // 2 + 1]
    assert np.all(np.abs(centre - 0.8) < 0.01), centre
    # Wrist cameras see their gripper's fingers closer than anything else.
    assert obs["depth"]["left_wrist"].min() < 0.3


def test_step_contract(cube_env):
    obs = cube_env.reset(seed=1)
    action = obs["state"].copy()
    obs2, reward, done, info = cube_env.step(action)
    assert reward == 0 and not done and info["step"] == 1 and not info["success"]
    assert obs2["images"]["top"].shape == (SIZE, SIZE, 3)
    assert set(cube_env.step(action, render=False)[0]) == {"state"}
    with pytest.raises(ValueError, match="shape"):
        cube_env.step(np.zeros(7))
    with pytest.raises(ValueError, match="NaN"):
        cube_env.step(np.full(14, np.nan))


def test_episode_ends_after_max_steps():
    env = make_env("transfer_cube", cameras=(), max_steps=3)
    try:
        action = env.reset(seed=0)["state"]
        dones = [env.step(action)[2] for _ in range(3)]
        assert dones == [False, False, True]
        with pytest.raises(RuntimeError, match="reset"):
            env.step(action)
    finally:
        env.close()


@pytest.mark.parametrize("task", ["transfer_cube", "insertion"])
def test_dynamics_and_rewards_match_gym_aloha(task):
    """A scripted episode replayed in our env and in gym-aloha's (dm_control) env."""
    from dm_control import mujoco as dm_mujoco
    from dm_control.rl import control
    from gym_aloha.constants import ASSETS_DIR, DT
    from gym_aloha.tasks import sim as aloha_sim

    from lingvla.sim.scripted import record_joint_actions

    base = {"transfer_cube": aloha_sim.TransferCubeTask, "insertion": aloha_sim.InsertionTask}[task]

    class StateOnly(base):  # gym-aloha's task without its three 480x640 renders per step
        def get_observation(self, physics):
            return {"qpos": self.get_qpos(physics)}

    seed = 2
    actions = record_joint_actions(task, seed).actions.astype(np.float64)
    physics = dm_mujoco.Physics.from_xml_path(str(ASSETS_DIR / get_task(task).model_file))
    theirs = control.Environment(physics, StateOnly(), float("inf"), control_timestep=DT,
                                 flat_observation=False)
    aloha_sim.BOX_POSE[0] = get_task(task).sample_object_poses(seed)
    theirs.reset()
    ours = make_env(task, cameras=(), stop_on_success=False)
    ours.reset(seed)
    try:
        worst, rewards = 0.0, []
        for action in actions:
            step = theirs.step(action)
            obs, reward, _, _ = ours.step(action)
            worst = max(worst, float(np.abs(step.observation["qpos"] - obs["state"]).max()))
            rewards.append((step.reward, reward))
    finally:
        ours.close()
    assert worst < 1e-5  # float32 state vs float64
    assert all(theirs_r == ours_r for theirs_r, ours_r in rewards)
    seen = {r for r, _ in rewards}
    assert max(seen) == 4 and len(seen) >= 4, seen


def test_seed_ranges_never_overlap():
    check_demo_seeds([0, EVAL_SEED_START - 1])
    check_eval_seeds([EVAL_SEED_START, EVAL_SEED_START + 5])
    with pytest.raises(SeedRangeError, match="reserved for evaluation"):
        check_demo_seeds([EVAL_SEED_START])
    with pytest.raises(SeedRangeError):
        check_demo_seeds([-1])
    with pytest.raises(SeedRangeError, match="demonstration seeds"):
        check_eval_seeds([7])
    with pytest.raises(SeedRangeError):
        demo_seeds(10, start=EVAL_SEED_START - 5)
    assert list(eval_seeds(2)) == [EVAL_SEED_START, EVAL_SEED_START + 1]
    assert set(demo_seeds(1000)).isdisjoint(eval_seeds(1000))


def test_gl_backend_choice(monkeypatch):
    monkeypatch.setenv("MUJOCO_GL", "osmesa")
    assert gl.configure() == "osmesa"  # the user's choice wins, nothing probed

    monkeypatch.delenv("MUJOCO_GL")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.delenv("PYOPENGL_PLATFORM", raising=False)
    tried = []

    def fake_probe(backend):
        tried.append(backend)
        return None if backend == "osmesa" else "no EGL device"

    monkeypatch.setattr(gl, "probe", fake_probe)
    assert gl.configure() == "osmesa" and tried == ["egl", "osmesa"]
    import os
    assert os.environ["MUJOCO_GL"] == "osmesa"

    monkeypatch.delenv("MUJOCO_GL")
    monkeypatch.setattr(gl, "probe", lambda backend: f"{backend} broken")
    with pytest.raises(gl.HeadlessGLError, match="libosmesa6") as error:
        gl.configure()
    assert "egl broken" in str(error.value) and "osmesa broken" in str(error.value)


def test_gl_probe_reports_a_failing_backend():
    assert gl.probe("no-such-backend") is not None
