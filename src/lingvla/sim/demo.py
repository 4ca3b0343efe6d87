"""`lingvla demo`: the main job on the embedded default, end to end on a CPU.

    scripted demonstrations (ALOHA transfer cube) -> LeRobot v3.0 dataset -> train a small policy
    of the tiny preset's classes -> closed-loop evaluation through Policy.infer -> report

Each stage calls the same function its own command does (`generate_dataset` = gen-demos, `train` =
lingvla train, `evaluate` = eval-sim). The whole run fits a time budget (`minutes`, default 30):
training takes what the demonstrations and the evaluation leave, measured on this machine - a few
warm-up steps are timed, then training resumes from them with the step count that fits (the
learning-rate warm-up covers the timed steps, so the schedule is the same as one run's), and the
trainer re-plans that count every few hundred steps at the pace it sees (`train(deadline=...)`).

Where the time goes on a CPU, and what the recipe does about it:
- every frame is decoded once into memory (`data.preload_images`), so no loader process decodes
  video per sample and both cores compute;
- the demonstrations are trained on up to shortly after their success (`episode_frames`): the
  scripted episodes hold still for their last ~180 of 400 steps, which a rollout never reaches
  (it ends at the first success).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from .seeds import EVAL_SEED_START

# The demo's recipe (docs/recipes.md has the measurements behind it). Paths, the frame window and
# the step count are filled in by run_demo.
DEMO_TASK = "transfer_cube"
DEMO_EPISODES = 100     # scripted demonstrations (why 100: docs/demo.md)
DEMO_EVAL_EPISODES = 100
WINDOW_MARGIN = 25       # frames kept after the last demonstration's first success
DEMO_RECIPE: dict = {
    "model": {
        "preset": "tiny",
        "num_cameras": 1,        # the top camera, as ACT's simulated tasks
        "image_size": 112,
        "vision": {"depth": 2, "hidden_size": 128, "intermediate_size": 256, "num_heads": 2},
        "llm": {"hidden_size": 128, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2,
                "intermediate_size": 256},
        "expert": {"hidden_size": 128, "intermediate_size": 256},
        "chunk_size": 50,
        "max_token_len": 24,
        "loss": "l1",
        "initializer_range": 0.08,
    },
    "data": {"num_workers": 0, "preload_images": True, "normalization": "mean_std"},
    "batch_size": 32,
    "steps": 20000,
    "optim": {"lr": 5.0e-4, "warmup_steps": 100},
    "save_every": 1000,
    "tensorboard": False,
}
TIMED_STEPS = 60         # warm-up steps timed to size the run (within the lr warm-up)
STEP_TIME_MARGIN = 1.10  # a run's mean step was 3-19% slower than its first steps' median (measured);
                         # the trainer then re-plans the step count to the deadline as it goes
MIN_STEPS = 50
EVAL_SETUP_S = 30.0      # evaluation: worker start-up, pre-flight, videos
EVAL_EPISODE_S = 1.0     # per episode and worker (measured ~0.6 s for transfer cube at 112 px)
REPORT_S = 15.0
MARKER = ".lingvla-demo"


@dataclass
class DemoResult:
    out: str
    task: str
    success_rate: float
    success_ci95: tuple[float, float]
    progress: float
    eval_episodes: int
    eval_seed: int
    demo_episodes: int
    train_steps: int
    final_loss: float
    stage_s: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0
    report: str = ""

    def to_json(self) -> str:
        return json.dumps({"demo": self.task, "success_rate": round(self.success_rate, 4),
                           "success_ci95": [round(v, 4) for v in self.success_ci95],
                           "progress": round(self.progress, 4), "eval_episodes": self.eval_episodes,
                           "eval_seeds": [self.eval_seed, self.eval_seed + self.eval_episodes - 1],
                           "demo_episodes": self.demo_episodes, "train_steps": self.train_steps,
                           "final_loss": round(self.final_loss, 5),
                           "stage_s": {k: round(v, 1) for k, v in self.stage_s.items()},
                           "wall_s": round(self.wall_s, 1), "report": self.report})


def prepare_out(out: Path, overwrite: bool) -> None:
    """A fresh demo directory. An existing one is replaced only with overwrite, and only if a
    demo made it (its marker file is there)."""
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} exists and is not empty; choose another --out or pass --overwrite")
        if not (out / MARKER).exists():
            raise FileExistsError(f"{out} was not written by `lingvla demo` (no {MARKER}); "
                                  "refusing to overwrite it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by lingvla demo\n")


def demo_train_config(data_dir: Path, train_dir: Path, image_size: int, overrides=(), *,
                      window_stop: int | None = None, seed: int = 0):
    from lingvla.config import apply_overrides
    from lingvla.train.config import TrainConfig

    raw = json.loads(json.dumps(DEMO_RECIPE))
    raw["model"]["image_size"] = image_size
    entry = {"path": str(data_dir), "embodiment": "aloha"}
    if window_stop is not None:
        entry["episode_frames"] = [0, int(window_stop)]
    raw["data"]["datasets"] = [entry]
    raw["output_dir"] = str(train_dir)
    raw["seed"] = int(seed)
    # Full structure first, so every key can be overridden (as on the train command line).
    full = TrainConfig.from_dict(raw).to_dict()
    return TrainConfig.from_dict(apply_overrides(full, list(overrides)))


def window_stop_from_dataset(root, margin: int = WINDOW_MARGIN) -> int | None:
    """The frame window's end for a demonstration dataset: the last episode's first success (its
    next.reward reaching the task's maximum) plus `margin`; None when that is not shorter than an
    episode, or the dataset records no reward."""
    import numpy as np

    from lingvla.data.lerobot import LeRobotDataset

    from .tasks import MAX_REWARD

    source = LeRobotDataset(root, columns=["next.reward"])
    if "next.reward" not in source.features:
        return None
    firsts, shortest = [], min(e.length for e in source.episodes)
    for ep in range(source.num_episodes):
        reached = np.flatnonzero(source.episode_data(ep, ["next.reward"])["next.reward"][:, 0] >= MAX_REWARD)
        if len(reached) == 0:
            return None
        firsts.append(int(reached[0]) + 1)
    stop = max(firsts) + margin
    return stop if stop < shortest else None


def median_step_s(metrics: Path, skip: int = 10) -> float:
    import numpy as np

    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    times = [r["data_s"] + r["forward_s"] + r["backward_s"] + r["optimizer_s"] for r in records]
    return float(np.median(times[skip:] if len(times) > skip else times))


def evaluation_seconds(episodes: int, workers: int) -> float:
    return EVAL_SETUP_S + EVAL_EPISODE_S * episodes / max(1, workers)


def run_demo(out: str | Path = "runs/demo", minutes: float = 30.0, *, task: str = DEMO_TASK,
             episodes: int = DEMO_EPISODES, eval_episodes: int = DEMO_EVAL_EPISODES,
             eval_seed: int = EVAL_SEED_START, seed: int = 0, image_size: int | None = None,
             train_overrides=(), eval_max_steps: int | None = None, workers: int = 2,
             overwrite: bool = False, progress: bool = True, log=print) -> DemoResult:
    """Run the four stages into `out` (data/, train/, eval/, report.md, demo.json).

    seed: the training seed (initialisation, sampling order, flow noise); eval_seed: the first of
    the `eval_episodes` evaluation seeds; workers: processes for demonstrations and evaluation."""
    from lingvla.sim.seeds import eval_seeds
    from lingvla.train.loop import train

    from .demonstrations import generate_dataset
    from .evaluate import evaluate
    from .tasks import EPISODE_STEPS, get_task

    start = time.perf_counter()
    deadline = start + 60.0 * minutes
    out = Path(out)
    get_task(task)
    eval_seeds(eval_episodes, eval_seed)  # a bad range fails before anything is written
    image_size = image_size or DEMO_RECIPE["model"]["image_size"]
    # validated before anything is written; the model's camera slots say which cameras to render
    cameras = demo_cameras(demo_train_config(out / "data", out / "train", image_size, train_overrides,
                                             seed=seed))
    prepare_out(out, overwrite)
    stage_s: dict[str, float] = {}

    def stage(n: int, text: str) -> float:
        log(f"[{n}/4] {text}", flush=True)
        return time.perf_counter()

    # 1. demonstrations
    t = stage(1, f"scripted demonstrations: {episodes} {task} episodes, {', '.join(cameras)} at "
                 f"{image_size} px -> {out / 'data'}")
    gen = generate_dataset(out / "data", task, episodes, image_size=image_size, cameras=cameras,
                           workers=workers, progress=progress)
    stage_s["demonstrations"] = time.perf_counter() - t
    log(f"      {gen.episodes} episodes ({gen.attempts} seeds tried) in {stage_s['demonstrations']:.0f} s",
        flush=True)
    window_stop = window_stop_from_dataset(out / "data")
    config = demo_train_config(out / "data", out / "train", image_size, train_overrides,
                               window_stop=window_stop, seed=seed)

    # 2. training, sized to the time left
    eval_s = evaluation_seconds(eval_episodes, workers) + REPORT_S
    t = stage(2, f"training ({_describe(config)}) -> {out / 'train'}")
    wanted = config.steps
    timed = min(TIMED_STEPS, wanted, max(1, config.optim.warmup_steps))
    if timed < wanted:
        config.steps = timed
        train(config, progress=progress)
        step_s = median_step_s(out / "train" / "metrics.jsonl") * STEP_TIME_MARGIN
        # the second call decodes the frames into memory again: count it as the first call took
        setup_s = max(0.0, time.perf_counter() - t - step_s * timed)
        left = deadline - time.perf_counter() - eval_s - setup_s
        fits = int(left / step_s) if left > 0 else 0
        config.steps = max(min(wanted, fits), min(wanted, MIN_STEPS), timed)
        log(f"      {step_s:.3f} s/step: ~{config.steps} steps fit the budget (recipe: up to {wanted}); "
            "re-planned as training goes", flush=True)
    # re-planned every few hundred steps at the pace of the machine, which drifts on shared cores
    summary = train(config, progress=progress, deadline=deadline - eval_s, max_steps=wanted)
    config.steps = summary["steps"]
    stage_s["training"] = time.perf_counter() - t
    log(f"      {config.steps} steps, final loss {summary['final_loss']:.4f}, "
        f"{stage_s['training'] / 60:.1f} min", flush=True)

    # 3. closed-loop evaluation
    t = stage(3, f"closed-loop evaluation: {eval_episodes} episodes, seeds {eval_seed}.."
                 f"{eval_seed + eval_episodes - 1} -> {out / 'eval'}")
    report = evaluate(summary["export"], task, eval_episodes, seed=eval_seed, out=out / "eval",
                      max_steps=eval_max_steps or EPISODE_STEPS, workers=workers, videos=1,
                      progress=progress)
    stage_s["evaluation"] = time.perf_counter() - t

    # 4. report
    stage(4, f"report -> {out / 'report.md'}")
    result = DemoResult(out=str(out), task=task, success_rate=report.success_rate,
                        success_ci95=report.success_interval, progress=report.progress,
                        eval_episodes=len(report.episodes), eval_seed=eval_seed,
                        demo_episodes=gen.episodes, train_steps=config.steps,
                        final_loss=float(summary["final_loss"]), stage_s=stage_s,
                        wall_s=time.perf_counter() - start, report=str(out / "report.md"))
    write_demo_report(out, result, config, gen, report, minutes)
    return result


def _describe(config) -> str:
    m = config.model
    return (f"image {m.image_size} px, vision {m.vision.depth}x{m.vision.hidden_size}, "
            f"llm {m.llm.num_layers}x{m.llm.hidden_size}, expert {m.expert.hidden_size}, chunk "
            f"{m.chunk_size}, batch {config.batch_size}, up to {config.steps} steps")


def demo_cameras(config) -> tuple[str, ...]:
    """The simulator cameras a demo config's model takes (its first num_cameras slots)."""
    from .tasks import CAMERAS

    return CAMERAS[:config.model.num_cameras]


def write_demo_report(out: Path, result: DemoResult, config, gen, report, minutes: float) -> None:
    import platform

    import torch

    summary = report.summary()
    lo, hi = result.success_ci95
    last_seed = report.seed + len(report.episodes) - 1
    window = config.data.datasets[0].get("episode_frames")
    lines = [
        f"# lingvla demo: {result.task}",
        "",
        f"**Success rate {result.success_rate:.1%}** ({summary['successes']}/{summary['episodes']} "
        f"evaluation episodes; 95% interval {lo:.1%}-{hi:.1%}, Wilson), evaluation seeds "
        f"{report.seed}..{last_seed}; progress (mean best reward stage / 4) {result.progress:.2f}.",
        "",
        f"Total {result.wall_s / 60:.1f} min (budget {minutes:g} min) on {platform.machine()} with "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}; training seed {config.seed}.",
        "",
        "| stage | minutes | output |",
        "|---|---|---|",
        f"| scripted demonstrations ({gen.episodes} episodes, {gen.attempts} seeds tried) | "
        f"{result.stage_s['demonstrations'] / 60:.1f} | [data/](data) |",
        f"| training ({result.train_steps} steps of {config.batch_size}, frames "
        f"{'all' if window is None else f'{window[0]}..{window[1] - 1}'} of each episode, final loss "
        f"{result.final_loss:.4f}) | {result.stage_s['training'] / 60:.1f} | [train/export/](train/export) |",
        f"| closed-loop evaluation ({summary['episodes']} episodes, {report.actions_per_chunk} actions "
        f"per chunk) | {result.stage_s['evaluation'] / 60:.1f} | [eval/](eval) |",
        "",
        "Training loss:",
        "",
        "![training loss](train/loss.png)",
        "",
        "Each evaluation episode's best reward stage (green: success) and the running success rate:",
        "",
        "![success and progress per episode](eval/chart.png)",
        "",
        f"Videos ({', '.join(c.replace('_', ' ') for c in demo_cameras(config))} camera"
        f"{'s' if len(demo_cameras(config)) > 1 else ''}, as the policy saw them):",
        "",
    ]
    lines += [f"- [seed {e.seed}: {'success' if e.success else 'failure'}, best reward {e.max_reward}]"
              f"(eval/{e.video})" for e in report.episodes if e.video]
    lines += ["", "Training configuration: [train/train_config.yaml](train/train_config.yaml). "
              "Reproduce a stage on its own:", "", "```",
              f"lingvla gen-demos --task {result.task} --episodes {gen.episodes} --image-size "
              f"{config.model.image_size} --cameras {' '.join(demo_cameras(config))} --out {out / 'data'}",
              f"lingvla train {out / 'train' / 'train_config.yaml'}",
              f"lingvla eval-sim {out / 'train' / 'export'} --task {result.task} --episodes "
              f"{summary['episodes']} --seed {report.seed} --workers {report.workers} --out {out / 'eval'}",
              "```", ""]
    (out / "report.md").write_text("\n".join(lines))
    (out / "demo.json").write_text(result.to_json() + "\n")
