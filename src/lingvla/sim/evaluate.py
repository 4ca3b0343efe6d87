"""Closed-loop evaluation in the ALOHA simulator through the policy's own `infer(obs)`.

    report = evaluate("runs/aloha/export", "transfer_cube", episodes=20, out="runs/eval")
    report.summary()   # success_rate, progress (mean max reward / 4), episodes, seed, wall_s, ...

Any object with `infer(obs) -> {"actions": [T, 14]}` can be evaluated (`policy=`); a checkpoint
directory is loaded with `lingvla.serve.policy.Policy`, the object the policy server uses. Each
episode starts from an evaluation seed (lingvla.sim.seeds; `seed`, `seed + 1`, ...) and runs
until reward 4 (success) or 400 steps, its chunks executed as the `execution` says
(lingvla.serve.broker.Execution): mode "chunk" asks for a chunk, executes its first
`execute_horizon` actions, asks again, ...; mode "ensemble" averages the chunks overlapping a step
with ACT's weights exp(-ensemble_decay * i) (i = 0 for the oldest); mode "rtc" samples each new
chunk by real-time chunking (lingvla.serve.rtc) to continue the actions of the previous chunk that
were not executed, its first `delay` equal to them (the steps a real robot executes while it
waits). Flow noise is seeded per episode, so a result depends only on (checkpoint, seed, settings),
not on the number of worker processes.

The report directory holds results.json (settings, summary, one row per episode), chart.png
(each episode's best reward stage and the running success rate) and videos/ with the first few
successes and failures (the three cameras side by side, 50 fps).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from lingvla.serve.broker import Execution

from .seeds import EVAL_SEED_START, eval_seeds
from .tasks import CAMERAS, EPISODE_STEPS, FPS, MAX_REWARD, get_task

ACTION_DIM = 14
VIDEO_MIN_HEIGHT = 168  # small renders are scaled up (nearest) so the videos are watchable


class CheckpointMismatchError(ValueError):
    """A checkpoint (or policy) that cannot drive the task; raised before any rollout."""


@dataclass
class EpisodeResult:
    seed: int
    success: bool
    max_reward: int
    progress: float                    # max_reward / 4
    steps: int                         # steps executed (the episode ends at the first success)
    first_success_step: int | None
    inferences: int
    infer_ms: float                    # mean time of one infer() call
    wall_s: float
    video: str | None = None           # relative to the report directory


@dataclass
class EvalReport:
    task: str
    checkpoint: str
    seed: int
    execution: Execution               # as check_policy resolves it (execute_horizon set)
    image_size: int
    workers: int
    wall_s: float
    episodes: list[EpisodeResult] = field(default_factory=list)
    out: str | None = None
    max_steps: int = EPISODE_STEPS
    num_steps: int | None = None       # Euler denoising steps per chunk (the policy's)

    @property
    def actions_per_chunk(self) -> int:
        """Actions executed per chunk (the execution's horizon)."""
        return self.execution.execute_horizon

    @property
    def success_rate(self) -> float:
        return sum(e.success for e in self.episodes) / len(self.episodes) if self.episodes else 0.0

    @property
    def progress(self) -> float:
        return float(np.mean([e.progress for e in self.episodes])) if self.episodes else 0.0

    @property
    def success_interval(self) -> tuple[float, float]:
        """The success rate's 95% Wilson score interval."""
        return wilson_interval(sum(e.success for e in self.episodes), len(self.episodes))

    def summary(self) -> dict:
        """The one JSON line `lingvla eval-sim` prints."""
        firsts = [e.first_success_step for e in self.episodes if e.success]
        ex = self.execution
        rtc = ex.rtc if ex.mode == "rtc" else None
        return {
            "task": self.task, "checkpoint": self.checkpoint,
            "success_rate": round(self.success_rate, 4),
            "success_ci95": [round(v, 4) for v in self.success_interval],
            "progress": round(self.progress, 4),
            "successes": sum(e.success for e in self.episodes), "episodes": len(self.episodes),
            "seed": self.seed, "actions_per_chunk": ex.execute_horizon,
            "ensemble_decay": ex.ensemble_decay if ex.mode == "ensemble" else None,
            "image_size": self.image_size, "max_steps": self.max_steps, "num_steps": self.num_steps,
            "rtc": rtc.method if rtc else None,
            "rtc_delay": ex.delay if rtc else None,
            "rtc_max_guidance": rtc.max_guidance if rtc and rtc.method == "guidance" else None,
            "median_success_step": int(np.median(firsts)) if firsts else None,
            "infer_ms": round(float(np.mean([e.infer_ms for e in self.episodes])), 2) if self.episodes else None,
            "wall_s": round(self.wall_s, 1), "workers": self.workers, "report": self.out,
        }


def wilson_interval(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95% for the default z); (0, 1) for no trials."""
    if trials <= 0:
        return 0.0, 1.0
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z / (1 + z * z / trials) * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: of the pairs where exactly one side succeeded, is the split
    `only_a` : `only_b` plausible under a fair coin (both sides equally good)? 1.0 with no such pairs."""
    n, k = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)


def round_p(p: float) -> float:
    """A p-value to 3 significant digits: 2e-05, not 0.0."""
    return float(f"{p:.3g}")


def paired_successes(a: dict, b: dict) -> dict:
    """Two evaluations of the same seeds (seed, or any episode key -> success), episode by episode: the counts of each
    outcome on the seeds both ran and the exact McNemar p-value. Refuses evaluations with no common seed."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError("the two evaluations share no seed; a paired comparison needs the same seeds")
    only_a = sum(a[s] and not b[s] for s in seeds)
    only_b = sum(b[s] and not a[s] for s in seeds)
    return {"pairs": len(seeds), "successes_a": sum(a[s] for s in seeds), "successes_b": sum(b[s] for s in seeds),
            "only_a": only_a, "only_b": only_b, "p": round_p(mcnemar_exact(only_a, only_b))}


def load_episode_successes(path: str | Path) -> dict[int, bool]:
    """seed -> success from an evaluation report (its results.json, or the directory holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"no evaluation report at {path} (eval-sim writes OUT/results.json)")
    episodes = json.loads(path.read_text()).get("episodes")
    if not isinstance(episodes, list):
        raise ValueError(f"{path} has no 'episodes' list; is it an eval-sim results.json?")
    return {int(e["seed"]): bool(e["success"]) for e in episodes}


# ------------------------------------------------------------------------------ checks

def check_policy(policy, task: str, execution: Execution) -> Execution:
    """Refuse a policy that cannot drive `task` with `execution`; return the execution resolved
    against the policy's chunk (execute_horizon filled in as Execution.resolve does, mode "rtc"
    given the default RTCConfig when it has none).

    A `lingvla.serve.policy.Policy` must have a 14-D action and state embodiment whose cameras include
    the simulator's top / left_wrist / right_wrist; other objects are checked by the pre-flight
    inference in `evaluate`. The simulator waits for each chunk, so `delay` is only for mode "rtc"
    (the steps a robot would execute meanwhile).
    """
    get_task(task)
    chunk = None
    embodiment = getattr(policy, "embodiment", None)
    if embodiment is not None:
        where = f"checkpoint embodiment {embodiment.name!r}"
        if embodiment.action_dim != ACTION_DIM or embodiment.state_dim != ACTION_DIM:
            raise CheckpointMismatchError(
                f"{where} has action_dim={embodiment.action_dim}, state_dim={embodiment.state_dim}; the "
                f"ALOHA {task} task needs 14 (per arm 6 joints + gripper)")
        policy_cameras(policy)
        chunk = policy.config.chunk_size
    if execution.execute_horizon is None:
        if chunk is None:
            raise ValueError("execute_horizon must be given for a policy without a config")
        execution = execution.resolve(chunk)
    horizon, delay = execution.execute_horizon, execution.delay
    if chunk is not None and horizon > chunk:
        raise ValueError(f"execute_horizon={horizon} (actions executed per chunk) must be in 1..{chunk}")
    if execution.mode == "ensemble" and execution.ensemble_decay < 0:
        raise ValueError(f"ensemble_decay must be a finite number >= 0; got {execution.ensemble_decay}")
    if execution.mode != "rtc" and delay:
        raise ValueError(f"delay={delay} is for real-time chunking (mode 'rtc'): the simulator waits "
                         f"for each chunk")
    if execution.mode == "rtc":
        if chunk is None or not hasattr(policy, "model"):
            raise ValueError("mode 'rtc' needs a lingvla Policy (it samples through the model)")
        if delay > chunk - horizon or horizon >= chunk:
            raise ValueError(f"rtc: the {chunk - horizon} actions a chunk leaves unexecuted "
                             f"(chunk {chunk} - execute_horizon {horizon}) must be >= 1 and >= "
                             f"delay ({delay})")
        if execution.rtc is None:
            from lingvla.serve.rtc import RTCConfig

            execution = replace(execution, rtc=RTCConfig())
    return execution


def policy_cameras(policy) -> tuple[str, ...]:
    """The simulator cameras a policy takes, in the task's order: those its checkpoint maps to a
    camera slot (a policy trained on the top camera alone gets only that one rendered). Every slot
    must be filled - a slot left black would be a silent input change - and no two cameras may
    share one. Objects that are not a lingvla Policy get every camera."""
    names = getattr(policy, "camera_names", None)
    if names is None or getattr(policy, "embodiment", None) is None:
        return tuple(CAMERAS)
    where = f"checkpoint embodiment {policy.embodiment.name!r}"
    cameras = tuple(cam for cam in CAMERAS if cam in names)
    slots = [names[cam] for cam in cameras]
    if len(set(slots)) != len(slots):
        raise CheckpointMismatchError(f"{where} maps several simulator cameras to one slot: "
                                      f"{dict(zip(cameras, slots))}")
    empty = sorted(set(range(len(policy.slots))) - set(slots))
    if empty:
        raise CheckpointMismatchError(
            f"{where}: camera slot(s) {[policy.slots[i] for i in empty]} map to no simulator camera; "
            f"it takes {sorted(names)}, the task renders {list(CAMERAS)} (unused: "
            f"{[cam for cam in CAMERAS if cam not in names]})")
    return cameras


def training_image_size(checkpoint: str | Path | None) -> int | None:
    """The camera size of the datasets a checkpoint was trained on, when its train_info.json names
    them and they can still be read; None otherwise."""
    if checkpoint is None:
        return None
    from lingvla.checkpoint_dir import read_train_info

    try:
        datasets = read_train_info(checkpoint)["train_config"]["data"]["datasets"]
    except (OSError, KeyError, TypeError, ValueError):
        return None
    sizes = set()
    for spec in datasets:
        try:
            features = json.loads((Path(spec["path"]) / "meta" / "info.json").read_text())["features"]
        except (OSError, KeyError, TypeError, ValueError):
            return None
        for cam in CAMERAS:
            shape = features.get(f"observation.images.{cam}", {}).get("shape")
            if shape and shape[0] == shape[1]:
                sizes.add(int(shape[0]))
    return sizes.pop() if len(sizes) == 1 else None


def check_image_size(policy, checkpoint, image_size: int | None) -> int:
    """The rendered camera size: see `evaluate`."""
    trained = training_image_size(checkpoint)
    model_size = getattr(getattr(policy, "config", None), "image_size", None)
    if image_size is None:
        return trained or model_size or 96
    if image_size < 16:
        raise ValueError(f"image_size={image_size} is too small to render the task's cameras")
    if trained is not None and image_size != trained:
        raise CheckpointMismatchError(
            f"the checkpoint was trained on {trained} px camera images (model input {model_size} px); "
            f"rendering at {image_size} px would feed it differently filtered images. Leave out "
            f"--image-size (it defaults to {trained}) or train on {image_size} px demonstrations")
    return image_size


def check_chunk(actions, where: str) -> np.ndarray:
    chunk = np.asarray(actions, dtype=np.float64)
    if chunk.ndim != 2 or chunk.shape[1] != ACTION_DIM or len(chunk) < 1:
        raise CheckpointMismatchError(f"{where}: the policy returned actions of shape {chunk.shape}; "
                                      f"the task needs [chunk, {ACTION_DIM}]")
    if not np.isfinite(chunk).all():
        raise CheckpointMismatchError(f"{where}: the policy returned NaN or inf actions")
    return chunk


# ------------------------------------------------------------------------------ rollouts

def tile_cameras(images: dict, cameras: Sequence[str] = CAMERAS) -> np.ndarray:
    """The cameras side by side, scaled up by an integer factor when small -> uint8 [H, W, 3]."""
    row = np.concatenate([images[cam] for cam in cameras], axis=1)
    scale = max(1, -(-VIDEO_MIN_HEIGHT // row.shape[0]))
    if scale > 1:
        row = row.repeat(scale, axis=0).repeat(scale, axis=1)
    h, w = row.shape[:2]
    return np.ascontiguousarray(row[:h - h % 2, :w - w % 2])


def write_video(path: Path, frames: list[np.ndarray]) -> None:
    from lingvla.data.video import VideoEncoder

    h, w = frames[0].shape[:2]
    encoder = VideoEncoder(path, FPS, w, h, gop=FPS, crf=23)
    try:
        encoder.write(np.stack(frames))
    finally:
        encoder.close()


def run_episode(policy, env, seed: int, execution: Execution, record: bool = False,
                max_steps: int = EPISODE_STEPS, on_step=None) -> tuple[EpisodeResult, list[np.ndarray]]:
    """One closed-loop episode; cameras are rendered only on the steps that ask for a chunk
    (every step when recording a video). Returns the result and the tiled frames if recorded.
    `execution` must have its execute_horizon set (check_policy resolves it).
    `on_step(step, env)` is called after each environment step (step counts from 1).
    With mode "rtc" every chunk after the first continues the previous one's unexecuted actions
    through `policy.infer(..., prefix_actions=, prefix_delay=execution.delay, rtc=execution.rtc)`;
    the simulator waits for the chunk, and its first `delay` actions are the ones a robot would have
    executed meanwhile."""
    import torch

    from lingvla.serve.broker import ActionBroker

    if execution.execute_horizon is None:
        raise ValueError("run_episode needs the execution's execute_horizon (check_policy resolves it)")
    covered = execution.execute_horizon + execution.delay
    torch.manual_seed(seed)  # the flow-matching noise of this episode
    if hasattr(policy, "reset"):
        policy.reset()
    start = time.perf_counter()
    timing = {"infer_s": 0.0, "inferences": 0}

    def source(observation, prefix_actions=None, prefix_delay=0):
        t0 = time.perf_counter()
        if prefix_actions is None:
            out = policy.infer(observation)
        else:
            out = policy.infer(observation, prefix_actions=prefix_actions, prefix_delay=prefix_delay,
                               rtc=execution.rtc)
        timing["infer_s"] += time.perf_counter() - t0
        timing["inferences"] += 1
        chunk = check_chunk(out["actions"], f"episode seed {seed}, step {broker.tick}")
        if len(chunk) < covered:
            raise CheckpointMismatchError(f"a chunk of {len(chunk)} actions cannot cover "
                                          f"{covered} steps between inferences")
        return chunk

    # The path a robot runs: the broker turns chunks into one action per tick. The simulator waits
    # for each chunk (a real robot keeps moving: docs/serve.md), so with rtc the broker executes
    # the previous chunk's next `delay` actions, exactly the ones the new chunk starts with.
    broker = ActionBroker(source, execution)
    obs = env.reset(seed)
    frames = [tile_cameras(obs["images"], env.cameras)] if record else []
    prompt = env.prompt
    max_reward, first_success, step = 0, None, 0
    needed = broker.needs_observation()  # whether this tick's observation (its render) is sent
    while step < max_steps:
        observation = {"images": obs["images"], "state": obs["state"], "prompt": prompt} if needed else None
        action = broker.act(observation)
        step += 1
        needed = step < max_steps and broker.needs_observation()
        render = record or needed
        obs, reward, done, info = env.step(action, render=render)
        if on_step is not None:
            on_step(step, env)
        if record and render:
            frames.append(tile_cameras(obs["images"], env.cameras))
        max_reward = info["max_reward"]
        if info["success"] and first_success is None:
            first_success = step
        if done:
            break
    inferences, infer_s = timing["inferences"], timing["infer_s"]
    result = EpisodeResult(seed=seed, success=first_success is not None, max_reward=int(max_reward),
                           progress=max_reward / MAX_REWARD, steps=step, first_success_step=first_success,
                           inferences=inferences, infer_ms=1000 * infer_s / max(inferences, 1),
                           wall_s=time.perf_counter() - start)
    return result, frames


# ------------------------------------------------------------------- worker processes

_worker: dict = {}


def _init_worker(checkpoint: str, task: str, image_size: int, max_steps: int, threads: int,
                 num_steps: int | None, cameras: Sequence[str] = CAMERAS) -> None:
    import torch

    from lingvla.serve.policy import Policy

    from .env import make_env

    torch.set_num_threads(threads)
    _worker["policy"] = Policy.from_checkpoint(checkpoint, num_steps=num_steps)
    _worker["env"] = make_env(task, image_size=image_size, max_steps=max_steps, cameras=cameras)


def _worker_episode(seed: int, execution: Execution, video: str | None) -> EpisodeResult:
    env = _worker["env"]
    result, frames = run_episode(_worker["policy"], env, seed, execution, record=video is not None,
                                 max_steps=env.max_steps)
    if video is not None:
        write_video(Path(video), frames)
    return result


# ----------------------------------------------------------------------------- evaluate

def evaluate(checkpoint: str | Path | None, task: str, episodes: int, *,
             execution: Execution | None = None, seed: int = EVAL_SEED_START,
             image_size: int | None = None, out: str | Path | None = None, workers: int = 1,
             videos: int = 3, max_steps: int = EPISODE_STEPS, progress: bool = True, policy=None,
             threads: int = 1, num_steps: int | None = None) -> EvalReport:
    """Roll out `episodes` episodes from seeds seed, seed+1, ... (all evaluation seeds).

    checkpoint: an inference directory (loaded with Policy.from_checkpoint); or pass `policy`
        (any object with infer(obs)) and checkpoint=None or a label.
    execution: how chunks are executed (default: whole chunks). Its execute_horizon defaults to the
        whole chunk, 1 for mode "ensemble" and half the chunk for "rtc" (Execution.resolve); `delay`
        is only for "rtc" (the number of frozen steps), and ensemble_decay must be >= 0 here.
    image_size: rendered camera size. Default: the size of the images the checkpoint was trained on
        (its training datasets' camera shape, when they can be read), else the model's input size.
        A size other than the training images' is refused: the policy would see renders filtered
        differently from its training data.
    max_steps: episode length (the task's 400 steps; shorter only for quick checks).
    num_steps: Euler denoising steps per chunk (default: the checkpoint's config; only with a
        checkpoint, not a policy object).
    videos: the first `videos` successes and the first `videos` failures get an mp4 (seed order).
    workers: processes, each with its own policy and simulator (a checkpoint is needed for > 1).
    threads: torch intra-op threads per process. One is fastest for small models: at these sizes
        a second thread gains little, and on a busy machine OpenMP's waiting threads made a tiny
        model's inference ~50x slower (60 ms -> 3 s per chunk, measured on 2 shared cores).
    """
    start = time.perf_counter()
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1; got {episodes}")
    seeds = list(eval_seeds(episodes, seed))
    if num_steps is not None and (policy is not None or num_steps < 1):
        raise ValueError(f"num_steps={num_steps}: must be >= 1 and given with a checkpoint, not a policy object")
    if policy is None:
        if checkpoint is None:
            raise ValueError("give a checkpoint directory or a policy")
        from lingvla.serve.policy import Policy

        try:
            policy = Policy.from_checkpoint(checkpoint, num_steps=num_steps)
        except (FileNotFoundError, ValueError) as err:
            raise CheckpointMismatchError(str(err)) from err
    elif workers > 1:
        raise ValueError("workers > 1 load the policy from a checkpoint in each process; "
                         "a policy object runs with workers=1")
    execution = check_policy(policy, task, execution if execution is not None else Execution())
    image_size = check_image_size(policy, checkpoint, image_size)
    out_dir = Path(out) if out is not None else None
    report = EvalReport(task=task, checkpoint=str(checkpoint), seed=seed, execution=execution,
                        image_size=image_size, workers=max(1, workers), wall_s=0.0,
                        out=str(out_dir) if out_dir is not None else None, max_steps=max_steps,
                        num_steps=getattr(policy, "num_steps", None))
    cameras = policy_cameras(policy)
    with torch_threads(threads), _env(task, image_size, max_steps, cameras) as env:
        preflight(policy, env, seeds[0])
        if out_dir is not None:
            (out_dir / "videos").mkdir(parents=True, exist_ok=True)
        _rollouts(report, policy, env, seeds, out_dir, videos, workers, threads, progress, cameras)
    report.wall_s = time.perf_counter() - start
    if out_dir is not None:
        write_report(report, out_dir)
    return report


@contextlib.contextmanager
def torch_threads(count: int):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _env(task: str, image_size: int, max_steps: int, cameras: Sequence[str] = CAMERAS):
    from .env import make_env

    env = make_env(task, image_size=image_size, max_steps=max_steps, cameras=cameras)
    try:
        yield env
    finally:
        env.close()


def preflight(policy, env, seed: int) -> None:
    """One inference on an episode's first observation, so a policy that does not take the task's
    observations (prompt over its token budget, wrong output width, NaN) fails before any rollout."""
    from lingvla.serve.policy import ObservationError

    obs = env.reset(seed)
    try:
        out = policy.infer({"images": obs["images"], "state": obs["state"], "prompt": env.prompt})
    except ObservationError as err:
        raise CheckpointMismatchError(f"the policy does not accept the {env.task.name} observations: "
                                      f"{err}") from err
    check_chunk(out["actions"], "pre-flight inference")


def _rollouts(report: EvalReport, policy, env, seeds: list[int], out_dir: Path | None, videos: int,
              workers: int, threads: int, progress: bool, cameras: Sequence[str] = CAMERAS) -> None:
    from tqdm import tqdm

    wanted = {True: videos, False: videos}
    bar = tqdm(total=len(seeds), desc=f"eval-sim {report.task}", unit="ep", disable=not progress)

    def video_path(index: int) -> str | None:
        # Decided at submission: record while either outcome may still need a video.
        if out_dir is None or max(wanted.values()) <= 0:
            return None
        return str(out_dir / "videos" / f"episode_{index:03d}_seed{seeds[index]}.mp4")

    def finish(result: EpisodeResult, video: str | None) -> None:
        if video is not None:
            if wanted[result.success] > 0:
                wanted[result.success] -= 1
                final = Path(video).with_name(f"{Path(video).stem}_{'success' if result.success else 'failure'}.mp4")
                os.replace(video, final)
                result.video = str(final.relative_to(out_dir))
            else:
                Path(video).unlink(missing_ok=True)
        report.episodes.append(result)
        done = report.episodes
        bar.set_postfix(success=f"{sum(e.success for e in done)}/{len(done)}",
                        progress=f"{np.mean([e.progress for e in done]):.2f}", refresh=False)
        bar.update(1)

    try:
        if workers <= 1:
            for index, s in enumerate(seeds):
                video = video_path(index)
                result, frames = run_episode(policy, env, s, report.execution, record=video is not None,
                                             max_steps=report.max_steps)
                if video is not None:
                    write_video(Path(video), frames)
                finish(result, video)
        else:
            _rollouts_in_workers(report, seeds, workers, threads, video_path, finish, cameras)
    finally:
        bar.close()


def _rollouts_in_workers(report: EvalReport, seeds, workers, threads, video_path, finish,
                         cameras: Sequence[str] = CAMERAS) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn: a forked child would inherit the parent's OpenGL and torch thread state.
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker,
                               initargs=(report.checkpoint, report.task, report.image_size,
                                         report.max_steps, threads, report.num_steps, tuple(cameras)))
    pending: deque = deque()
    try:
        for index, s in enumerate(seeds):
            video = video_path(index)
            pending.append((pool.submit(_worker_episode, s, report.execution, video), video))
            if len(pending) > workers:
                future, video = pending.popleft()
                finish(future.result(), video)
        while pending:
            future, video = pending.popleft()
            finish(future.result(), video)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# ------------------------------------------------------------------------------ report

def write_report(report: EvalReport, out_dir: Path) -> None:
    data = {"summary": report.summary(), "episodes": [asdict(e) for e in report.episodes]}
    tmp = out_dir / "results.json.tmp"
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(out_dir / "results.json")
    plot_results(report, out_dir / "chart.png")


def plot_results(report: EvalReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    eps = report.episodes
    x = np.arange(1, len(eps) + 1)
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(max(6.0, 0.18 * len(eps) + 3), 5.5), sharex=True,
                                  gridspec_kw={"height_ratios": [2, 1]})
    colors = ["tab:green" if e.success else "tab:red" for e in eps]
    ax.bar(x, [e.max_reward for e in eps], color=colors)
    ax.set_ylim(0, MAX_REWARD + 0.3)
    ax.set_ylabel("best reward stage (0-4)")
    ax.set_title(f"{report.task}: success {report.success_rate:.0%} ({sum(e.success for e in eps)}/{len(eps)}), "
                 f"progress {report.progress:.2f}")
    ax.grid(axis="y", alpha=0.3)
    running = np.cumsum([e.success for e in eps]) / x
    ax2.plot(x, running, marker=".", lw=1)
    ax2.set_ylim(-0.02, 1.02)
    ax2.set_ylabel("success rate so far")
    ax2.set_xlabel(f"episode (seed {report.seed} + n - 1)")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
