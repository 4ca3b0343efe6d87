"""Where a policy leaves the demonstrated path: its grippers' tool points in a closed-loop rollout
against the scripted demonstration of the same seed (benchmarks/tracking.py, docs/recipes.md)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def tool_points(env) -> np.ndarray:
    """[2, 3] tool points (between the finger pads) of the left and right grippers, metres."""
    from .scripted import tool_point

    return np.stack([tool_point(pose) for pose in env.physics.gripper_poses()])


def scripted_path(env, seed: int, steps: int) -> tuple[np.ndarray, int]:
    """Tool points [steps, 2, 3] after each step, and the best stage, of the scripted
    demonstration of `seed` replayed in joint space (what `gen-demos` records)."""
    from .scripted import record_joint_actions

    actions = record_joint_actions(env.task.name, seed, steps).actions
    return policy_path(env, _Replay(actions), seed, steps, per_chunk=steps)


def policy_path(env, policy, seed: int, steps: int, per_chunk: int = 50) -> tuple[np.ndarray, int]:
    """Tool points [steps, 2, 3] after each step, and the best stage, of the closed-loop rollout
    `eval-sim` runs for `seed` (evaluate.run_episode, `per_chunk` actions executed per chunk)."""
    from lingvla.serve.broker import Execution

    from .evaluate import check_policy, run_episode

    execution = check_policy(policy, env.task.name, Execution(execute_horizon=per_chunk))
    _check_env(env, steps)
    path = np.empty((steps, 2, 3))

    def record(step: int, env) -> None:
        path[step - 1] = tool_points(env)

    result, _ = run_episode(policy, env, seed, execution, max_steps=steps, on_step=record)
    return path, result.max_reward


def _check_env(env, steps: int) -> None:
    """The environment must run all `steps` steps of every rollout."""
    if env.stop_on_success:
        raise ValueError("tracking needs an environment made with stop_on_success=False")
    if steps > env.max_steps:
        raise ValueError(f"step {steps - 1} is past the environment's {env.max_steps} steps")


class _Replay:
    """Plays a fixed action sequence as one chunk."""

    def __init__(self, actions: np.ndarray):
        self.actions = actions

    def infer(self, obs: dict) -> dict:
        return {"actions": self.actions}


@dataclass
class Tracking:
    seeds: list[int]
    steps: list[int]
    gaps_cm: np.ndarray        # [seeds, steps, 2 arms (left, right)]
    stages: list[int]          # the policy's best stage per seed
    demo_stages: list[int]     # the demonstration's, over the same steps

    def mean_cm(self) -> np.ndarray:
        """[steps, 2]: mean distance over seeds."""
        return self.gaps_cm.mean(axis=0)


def track(env, policy, seeds: Sequence[int], steps: Sequence[int], per_chunk: int = 50,
          on_seed=None) -> Tracking:
    """Distance (cm) of each gripper's tool point from the demonstration's at `steps` (0-based:
    after step t) for each seed; `on_seed(index, tracking_so_far)` is called after each seed."""
    steps = sorted(int(t) for t in steps)
    if not steps or steps[0] < 0:
        raise ValueError(f"steps must be non-negative step indices; got {steps}")
    horizon = steps[-1] + 1
    _check_env(env, horizon)  # before any rollout
    gaps, stages, demo_stages = [], [], []
    for i, seed in enumerate(seeds):
        demo, demo_best = scripted_path(env, seed, horizon)
        run, best = policy_path(env, policy, seed, horizon, per_chunk)
        gaps.append(100 * np.linalg.norm(run[steps] - demo[steps], axis=-1))
        stages.append(best)
        demo_stages.append(demo_best)
        result = Tracking(list(seeds[:i + 1]), steps, np.stack(gaps), stages, demo_stages)
        if on_seed is not None:
            on_seed(i, result)
    return result
