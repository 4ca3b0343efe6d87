"""Scripted demonstrations recorded in the joint-control task, and written as a LeRobot dataset.

    report = generate_dataset("runs/demos", "transfer_cube", num_episodes=50, image_size=96)

Each seed: the scripted mocap episode gives joint actions (lingvla.sim.scripted); they are
replayed in the joint-control task with the cameras on, and the episode is kept only if the
replay reaches reward 4. Frame t holds the observation before action t and the reward after it.
Seeds are tried upward from `seed_start` (all must be demonstration seeds, lingvla.sim.seeds)
until `num_episodes` succeed; the kept episodes are the first successful seeds in order, however
many worker processes run.

With `noise` > 0 the replay is perturbed (DART-style corrective demonstrations): smooth random
offsets, `noise` radians in scale, are added to the arm joints' targets during the approach and
faded out before the first grasp (with `noise_phases="all"` also while the objects are carried,
faded out before the handover or the insertion), while the recorded actions stay the scripted ones. The states
and images then show the arms off the planned path and the actions lead back to it, which a
policy that misjudges the object's position at first has to learn (docs/recipes.md).
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .seeds import DEMO_SEED_START, EVAL_SEED_START, check_demo_seeds
from .tasks import (CAMERAS, EPISODE_STEPS, FPS, JOINT_NAMES, LEFT_GRIPPER, MAX_REWARD, RIGHT_GRIPPER,
                    get_task)


@dataclass
class Demo:
    task: str
    seed: int
    prompt: str
    success: bool                      # the joint-space replay reached reward 4
    first_success_step: int | None     # 1-based step of the first reward 4
    states: np.ndarray                 # float32 [T, 14] joint state before each action
    actions: np.ndarray                # float32 [T, 14] joint targets
    rewards: np.ndarray                # float32 [T] reward after each action
    images: dict[str, np.ndarray]      # cam -> uint8 [T, H, W, 3]
    depth: dict[str, np.ndarray] = field(default_factory=dict)  # cam -> float32 [T, H, W] metres


ARM_JOINT_INDICES = np.array([j for j in range(len(JOINT_NAMES))
                              if j not in (LEFT_GRIPPER, RIGHT_GRIPPER)])  # all but the grippers
NOISE_KNOT_STEPS = 25  # the corrective noise changes direction about twice a second


NOISE_PHASES = ("approach", "all")


def check_noise(scale: float, phases: str = "approach") -> None:
    if scale < 0 or not np.isfinite(scale):
        raise ValueError(f"noise scale must be a finite number >= 0; got {scale}")
    if phases not in NOISE_PHASES:
        raise ValueError(f"noise phases must be one of {NOISE_PHASES}; got {phases!r}")


def corrective_noise(task: str, seed: int, scale: float, steps: int = EPISODE_STEPS,
                     phases: str = "approach") -> np.ndarray:
    """float32 [steps, 14] offsets for the arm joints' targets: independent N(0, scale) values at
    knots every NOISE_KNOT_STEPS steps (zero at step 0), eased between knots, faded linearly to
    zero over the 20 steps that end 10 steps before the task's approach_end, zero afterwards.
    phases="all" adds the task's later windows (Task.later_noise: ramped in over 20 steps, out
    over the 20 before the window's end). Grippers get none. The same arguments always give the
    same offsets, and the approach's offsets do not depend on `phases`."""
    from .scripted import ease

    check_noise(scale, phases)
    noise = np.zeros((steps, 14), np.float32)
    if scale == 0:
        return noise
    rng = np.random.default_rng([seed, 0xDA27])
    knots = np.arange(0, steps + NOISE_KNOT_STEPS, NOISE_KNOT_STEPS)
    values = rng.normal(0.0, scale, (len(knots), len(ARM_JOINT_INDICES)))
    values[0] = 0.0
    t = np.arange(steps)
    segment = np.minimum(t // NOISE_KNOT_STEPS, len(knots) - 2)
    f = ease((t - knots[segment]) / NOISE_KNOT_STEPS)[:, None]
    offsets = values[segment] * (1 - f) + values[segment + 1] * f
    spec = get_task(task)
    envelope = np.clip((spec.approach_end - 10 - t) / 20.0, 0.0, 1.0)
    if phases == "all":
        for start, end in spec.later_noise:
            window = np.clip(np.minimum(t - start, end - t) / 20.0, 0.0, 1.0)
            envelope = np.maximum(envelope, window)
    noise[:, ARM_JOINT_INDICES] = offsets * envelope[:, None]
    return noise


def generate_demo(task: str, seed: int, *, image_size: int = 96,
                  cameras: Sequence[str] = CAMERAS, render_depth: bool = False,
                  steps: int = EPISODE_STEPS, env=None, noise: float = 0.0,
                  noise_phases: str = "approach") -> Demo:
    """One scripted demonstration, successful or not; `env` (an AlohaEnv of the same task and
    cameras, with stop_on_success=False) is reused if given. `noise`: corrective-noise scale in
    radians, in the `noise_phases` (corrective_noise); the arms execute action + offset, the demo
    records the action."""
    from .env import AlohaEnv
    from .scripted import record_joint_actions

    check_demo_seeds([seed])
    own_env = env is None
    if own_env:
        env = AlohaEnv(task, image_size=image_size, cameras=cameras, render_depth=render_depth,
                       max_steps=steps, stop_on_success=False)
    try:
        actions = record_joint_actions(task, seed, steps).actions
        executed = actions + corrective_noise(task, seed, noise, steps, noise_phases)
        size, cams = env.image_size, env.cameras
        images = {cam: np.empty((steps, size, size, 3), np.uint8) for cam in cams}
        depth = ({cam: np.empty((steps, size, size), np.float32) for cam in cams}
                 if env.render_depth else {})
        states = np.empty((steps, 14), np.float32)
        rewards = np.empty(steps, np.float32)
        out = lambda t: {"images": {c: images[c][t] for c in cams},  # noqa: E731
                         "depth": {c: depth[c][t] for c in depth}}
        obs = env.reset(seed, out=out(0))
        first_success = None
        for t in range(steps):
            states[t] = obs["state"]
            last = t + 1 == steps
            obs, reward, _, _ = env.step(executed[t], render=not last,
                                         out=None if last else out(t + 1))
            rewards[t] = reward
            if reward == MAX_REWARD and first_success is None:
                first_success = t + 1
    finally:
        if own_env:
            env.close()
    return Demo(task, seed, get_task(task).prompt, first_success is not None, first_success,
                states, actions, rewards, images, depth)


# ---- worker processes: one environment each, reused across episodes ----

_worker_env = None


def _init_worker(task: str, image_size: int, cameras: tuple[str, ...], render_depth: bool,
                 steps: int) -> None:
    global _worker_env
    from .env import AlohaEnv

    _worker_env = AlohaEnv(task, image_size=image_size, cameras=cameras,
                           render_depth=render_depth, max_steps=steps, stop_on_success=False)


def _worker_demo(task: str, seed: int, steps: int, noise: float, noise_phases: str) -> Demo:
    return generate_demo(task, seed, steps=steps, env=_worker_env, noise=noise, noise_phases=noise_phases)


def iter_demos(task: str, seeds: Iterator[int], *, image_size: int = 96,
               cameras: Sequence[str] = CAMERAS, render_depth: bool = False,
               steps: int = EPISODE_STEPS, workers: int = 2, noise: float = 0.0,
               noise_phases: str = "approach") -> Iterator[Demo]:
    """Demos for `seeds` in order (successful or not), generated by `workers` processes.

    Only a few seeds run ahead of the consumer, so stopping early wastes little work.
    """
    cameras = tuple(cameras)
    init_args = (task, image_size, cameras, render_depth, steps)
    if workers <= 1:
        from .env import AlohaEnv

        with AlohaEnv(task, image_size=image_size, cameras=cameras, render_depth=render_depth,
                      max_steps=steps, stop_on_success=False) as env:
            for seed in seeds:
                yield generate_demo(task, seed, steps=steps, env=env, noise=noise, noise_phases=noise_phases)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn: a forked child would inherit the parent's OpenGL and thread state.
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=init_args)
    pending: deque = deque()
    try:
        for seed in seeds:
            pending.append(pool.submit(_worker_demo, task, seed, steps, noise, noise_phases))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def demo_features(image_size: int, cameras: Sequence[str] = CAMERAS, depth_size: int | None = None) -> dict:
    """LeRobot features of the demonstration datasets; with `depth_size`, each camera's depth as
    `observation.depth.<cam>` uint16 [depth_size, depth_size] millimetres (lingvla.data.depth)."""
    features = {
        "observation.state": {"dtype": "float32", "shape": [14], "names": list(JOINT_NAMES)},
        "action": {"dtype": "float32", "shape": [14], "names": list(JOINT_NAMES)},
    }
    for cam in cameras:
        features[f"observation.images.{cam}"] = {"dtype": "video",
                                                 "shape": [image_size, image_size, 3]}
    if depth_size is not None:
        for cam in cameras:
            features[f"observation.depth.{cam}"] = {"dtype": "uint16", "shape": [depth_size, depth_size],
                                                    "names": ["height", "width"]}
    features["next.reward"] = {"dtype": "float32", "shape": [1]}
    return features


def demo_frames(demo: Demo, depth_size: int | None = None) -> dict[str, np.ndarray]:
    """The episode's columns; with `depth_size`, its rendered depth in millimetres at that size."""
    from lingvla.data.depth import encode_depth, resize_depth

    frames = {"observation.state": demo.states, "action": demo.actions,
              "next.reward": demo.rewards[:, None]}
    for cam, video in demo.images.items():
        frames[f"observation.images.{cam}"] = video
    if depth_size is not None:
        if not demo.depth:
            raise ValueError(f"demo of seed {demo.seed} has no depth: generate it with render_depth=True")
        for cam, depth in demo.depth.items():
            frames[f"observation.depth.{cam}"] = np.stack([encode_depth(resize_depth(d, depth_size))
                                                           for d in depth])
    return frames


@dataclass
class GenerationReport:
    dataset: str
    task: str
    episodes: int
    attempts: int
    seeds: list[int]           # the seeds kept, in episode order
    failed_seeds: list[int]
    seconds: float
    first_success_steps: list[int]
    noise: float = 0.0
    noise_phases: str = "approach"

    @property
    def success_rate(self) -> float:
        return self.episodes / self.attempts if self.attempts else 0.0

    def to_json(self) -> str:
        steps = self.first_success_steps
        return json.dumps({
            "task": self.task, "dataset": self.dataset, "episodes": self.episodes,
            "attempts": self.attempts, "success_rate": round(self.success_rate, 4),
            "seeds": [self.seeds[0], self.seeds[-1]] if self.seeds else [],
            "failed_seeds": self.failed_seeds, "noise": self.noise,
            "noise_phases": self.noise_phases, "seconds": round(self.seconds, 1),
            "median_first_success_step": int(np.median(steps)) if steps else None})


def generate_dataset(out: str | Path, task: str, num_episodes: int, *,
                     seed_start: int = DEMO_SEED_START, image_size: int = 96,
                     cameras: Sequence[str] = CAMERAS, workers: int = 2,
                     steps: int = EPISODE_STEPS, max_attempts: int | None = None,
                     overwrite: bool = False, progress: bool = True, depth: bool = False,
                     depth_size: int | None = None, noise: float = 0.0,
                     noise_phases: str = "approach") -> GenerationReport:
    """Generate `num_episodes` successful demonstrations and write them as a LeRobot v3.0
    dataset at `out`. Gives up after `max_attempts` seeds (default 2 * num_episodes + 10).
    `depth`: also render depth and store it per camera (`observation.depth.<cam>`, uint16 mm) at
    `depth_size` (default: image_size; nearest samples of the image-size render).
    `noise`: corrective-noise scale in radians, in `noise_phases` ("approach" or "all";
    module docstring)."""
    from lingvla.data.lerobot import LeRobotDatasetWriter

    task_spec = get_task(task)
    if num_episodes < 1:
        raise ValueError("num_episodes must be at least 1")
    max_attempts = 2 * num_episodes + 10 if max_attempts is None else max_attempts
    last_seed = min(seed_start + max_attempts, EVAL_SEED_START) - 1
    check_demo_seeds([seed_start])
    check_noise(noise, noise_phases)  # before the writer creates anything
    if depth_size is not None and not depth:
        raise ValueError("depth_size is given but depth is off")
    depth_size = (depth_size or image_size) if depth else None
    if depth_size is not None and depth_size < 1:
        raise ValueError(f"depth_size must be >= 1; got {depth_size}")
    writer = LeRobotDatasetWriter(out, fps=FPS, robot_type="aloha",
                                  features=demo_features(image_size, cameras, depth_size),
                                  overwrite=overwrite)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=num_episodes, desc=f"gen-demos {task}", unit="ep")
    kept, failed, firsts = [], [], []
    start = time.perf_counter()
    demos = iter_demos(task, iter(range(seed_start, last_seed + 1)), image_size=image_size,
                       cameras=cameras, render_depth=depth, steps=steps, workers=workers,
                       noise=noise, noise_phases=noise_phases)
    try:
        for demo in demos:
            if demo.success:
                writer.add_episode(task=task_spec.prompt, frames=demo_frames(demo, depth_size))
                kept.append(demo.seed)
                firsts.append(demo.first_success_step)
            else:
                failed.append(demo.seed)
            if bar is not None:
                bar.set_postfix(tried=len(kept) + len(failed),
                                success=f"{len(kept) / (len(kept) + len(failed)):.0%}",
                                refresh=False)
                bar.update(int(demo.success))
            if len(kept) == num_episodes:
                break
    finally:
        demos.close()
        if bar is not None:
            bar.close()
    path = writer.finalize()
    report = GenerationReport(str(path), task, len(kept), len(kept) + len(failed), kept, failed,
                              time.perf_counter() - start, firsts, noise, noise_phases)
    if len(kept) < num_episodes:
        raise RuntimeError(f"only {len(kept)} of {num_episodes} demonstrations succeeded in "
                           f"{report.attempts} seeds (dataset written with those): "
                           f"{report.to_json()}")
    return report
