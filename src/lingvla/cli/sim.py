"""`lingvla demo`, `lingvla gen-demos`, `lingvla eval-sim` and `lingvla bench sim`."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from lingvla.sim.seeds import EVAL_SEED_START
from lingvla.sim.tasks import CAMERAS

if TYPE_CHECKING:
    from lingvla.serve.broker import Execution

TASK_NAMES = ("transfer_cube", "insertion")


def add_commands(commands, bench) -> None:
    gen = commands.add_parser(
        "gen-demos", help="scripted ALOHA demonstrations -> LeRobot v3.0 dataset",
        description="Generate scripted demonstrations of an ALOHA task (end-effector waypoints "
                    "replayed in joint space; only successful replays are kept) and write them as "
                    "a LeRobot v3.0 dataset. Prints a JSON line with the scripted success rate.")
    gen.add_argument("--task", choices=TASK_NAMES, default="transfer_cube")
    gen.add_argument("--episodes", type=int, default=50, help="successful episodes to write")
    gen.add_argument("--out", required=True, help="dataset directory")
    gen.add_argument("--image-size", type=int, default=96, help="square camera images, pixels")
    gen.add_argument("--cameras", nargs="+", choices=list(CAMERAS), default=list(CAMERAS),
                     help="cameras to render and store (default: all three)")
    gen.add_argument("--seed-start", type=int, default=0,
                     help="first seed tried (demonstration seeds are below 100000)")
    gen.add_argument("--workers", type=int, default=2, help="processes generating episodes")
    gen.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    gen.add_argument("--no-progress", action="store_true", help="no progress bar")
    gen.add_argument("--depth", action="store_true",
                     help="also render depth and store it per camera (observation.depth.<cam>, uint16 mm)")
    gen.add_argument("--depth-size", type=int, default=None,
                     help="square size of the stored depth maps (default: --image-size)")
    gen.add_argument("--noise", type=float, default=0.0,
                     help="corrective demonstrations: scale in radians of smooth random offsets "
                          "added to the arm joints during the approach, while the scripted actions "
                          "are recorded (0: none; the recipes use 0.2)")
    gen.add_argument("--noise-phases", default="approach", choices=["approach", "all"],
                     help="where --noise applies: the approach to the first grasp, or also while the "
                          "objects are carried (faded out before the handover / the insertion)")
    gen.set_defaults(func=_gen_demos)

    ev = commands.add_parser(
        "eval-sim", help="closed-loop success rate of a checkpoint in the ALOHA simulator",
        description="Roll out a checkpoint (through lingvla.serve.policy.Policy, as the server does) in "
                    "the ALOHA simulator from evaluation seeds. Prints one JSON line (success_rate, "
                    "progress = mean best reward stage / 4, ...) and writes a report directory "
                    "(results.json, chart.png, videos/).")
    ev.add_argument("checkpoint", help="inference checkpoint directory (OUTPUT_DIR/export of lingvla train)")
    ev.add_argument("--task", choices=TASK_NAMES, default="transfer_cube")
    ev.add_argument("--episodes", type=int, default=20)
    ev.add_argument("--seed", type=int, default=EVAL_SEED_START,
                    help=f"first evaluation seed; episodes use seed, seed+1, ... (>= {EVAL_SEED_START})")
    ev.add_argument("--actions-per-chunk", type=int, default=None,
                    help="actions executed per inferred chunk (default: the whole chunk; 1 with "
                         "--ensemble-decay)")
    ev.add_argument("--ensemble-decay", type=float, default=None,
                    help="temporal ensembling: average overlapping chunks with weights exp(-k*i)")
    ev.add_argument("--rtc", choices=["guidance", "inpaint"], default=None,
                    help="real-time chunking: each chunk continues the previous one's unexecuted actions "
                         "(actions per chunk default to half the chunk)")
    ev.add_argument("--rtc-delay", type=int, default=0,
                    help="with --rtc: the new chunk's first D actions are the previous chunk's (the steps "
                         "a robot executes while it waits for the chunk)")
    ev.add_argument("--rtc-max-guidance", type=float, default=5.0,
                    help="with --rtc guidance: clip of the guidance weight (the paper's 5)")
    ev.add_argument("--num-steps", type=int, default=None,
                    help="Euler denoising steps per chunk (default: the checkpoint's, 10)")
    ev.add_argument("--image-size", type=int, default=None,
                    help="rendered camera size (default: the checkpoint's image size)")
    ev.add_argument("--out", default=None, help="report directory (default: CHECKPOINT/../eval_TASK)")
    ev.add_argument("--max-steps", type=int, default=400, help="episode length (400: the task's)")
    ev.add_argument("--workers", type=int, default=1, help="processes, each with a policy and simulator")
    ev.add_argument("--videos", type=int, default=3, help="videos of the first N successes and N failures")
    ev.add_argument("--no-progress", action="store_true", help="no progress bar")
    ev.set_defaults(func=_eval_sim)

    compare = commands.add_parser(
        "eval-compare", help="two evaluations of the same seeds, episode by episode (exact McNemar test)",
        description="Pair two eval-sim reports on the seeds both ran: how many episodes succeeded with "
                    "both, only A, only B, and the two-sided exact McNemar p-value of the only-A : only-B "
                    "split. Prints one JSON line.")
    compare.add_argument("a", help="report A: an eval-sim output directory or its results.json")
    compare.add_argument("b", help="report B")
    compare.set_defaults(func=_eval_compare)

    demo = commands.add_parser(
        "demo", help="the main job: scripted ALOHA demos -> dataset -> train -> closed-loop eval -> report",
        description="The embedded default end to end on a CPU: scripted transfer-cube demonstrations "
                    "-> LeRobot dataset -> train a small policy (the tiny preset's classes) -> "
                    "closed-loop evaluation -> report, within a time budget. Ends with the success "
                    "rate and the path of the report.")
    demo.add_argument("--out", default="runs/demo", help="output directory (data/, train/, eval/, report.md)")
    demo.add_argument("--minutes", type=float, default=30.0,
                      help="time budget for the whole run; training gets what the other stages leave")
    demo.add_argument("--task", choices=TASK_NAMES, default="transfer_cube")
    demo.add_argument("--episodes", type=int, default=None, help="scripted demonstrations (default 100)")
    demo.add_argument("--eval-episodes", type=int, default=None, help="evaluation episodes (default 100)")
    demo.add_argument("--seed", type=int, default=None,
                      help="first evaluation seed (default 100000; seeds from 100000 on are never "
                           "used for demonstrations)")
    demo.add_argument("--train-seed", type=int, default=0,
                      help="training seed: initialisation, sample order and flow noise")
    demo.add_argument("--image-size", type=int, default=None,
                      help="camera and model image size, a multiple of 28 (default 112)")
    demo.add_argument("--workers", type=int, default=2,
                      help="processes generating demonstrations and running evaluation episodes")
    demo.add_argument("--overwrite", action="store_true", help="replace an earlier demo's --out")
    demo.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                      help="training config overrides, e.g. steps=500 optim.lr=1e-4")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.set_defaults(func=_demo)

    sweep = commands.add_parser(
        "sweep", help="a grid of (demonstrations, training seed, variant) cells: train, evaluate, CSV, plot",
        description="Run every cell of a sweep spec (lingvla/sim/sweep.py documents the keys): the demo's "
                    "recipe trained for a fixed number of steps on the first N demonstrations, evaluated "
                    "closed loop; results.csv gets one row per finished cell, sweep.png plots success with "
                    "95%% intervals. Rerun after a kill to finish: finished cells are kept.")
    sweep.add_argument("spec", metavar="SPEC.yaml")
    sweep.add_argument("--out", default=None, help="output directory (default: the spec's out)")
    sweep.add_argument("--jobs", type=int, default=1,
                       help="cells run at once, each in its own process with cores/jobs threads (default 1)")
    sweep.add_argument("--no-progress", action="store_true")
    sweep.set_defaults(func=_sweep)

    sim = bench.add_parser("sim", help="ALOHA simulator steps/s with rendering (JSON lines)")
    sim.add_argument("--task", choices=TASK_NAMES, default="transfer_cube")
    sim.add_argument("--image-sizes", type=int, nargs="+", default=[64, 96, 224])
    sim.add_argument("--steps", type=int, default=200)
    sim.add_argument("--depth", action="store_true", help="also render depth")
    sim.set_defaults(func=_bench_sim)


def _gen_demos(args: argparse.Namespace) -> int:
    import sys

    from lingvla.sim.demonstrations import generate_dataset

    try:
        report = generate_dataset(args.out, args.task, args.episodes, seed_start=args.seed_start,
                                  image_size=args.image_size, cameras=tuple(args.cameras),
                                  workers=args.workers, overwrite=args.overwrite, progress=not args.no_progress,
                                  depth=args.depth, depth_size=args.depth_size, noise=args.noise,
                                  noise_phases=args.noise_phases)
    except (FileExistsError, ValueError) as err:  # bad settings, evaluation seeds, existing output
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    print(report.to_json(), flush=True)
    return 0


def _demo(args: argparse.Namespace) -> int:
    import sys

    from lingvla.sim.demo import DEMO_EPISODES, DEMO_EVAL_EPISODES, run_demo
    from lingvla.sim.seeds import EVAL_SEED_START

    try:
        result = run_demo(args.out, args.minutes, task=args.task, episodes=args.episodes or DEMO_EPISODES,
                          eval_episodes=args.eval_episodes or DEMO_EVAL_EPISODES,
                          eval_seed=EVAL_SEED_START if args.seed is None else args.seed,
                          seed=args.train_seed,
                          image_size=args.image_size, train_overrides=args.set, workers=args.workers,
                          overwrite=args.overwrite, progress=not args.no_progress)
    except (FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    print(result.to_json(), flush=True)
    lo, hi = result.success_ci95
    print(f"success rate {result.success_rate:.1%} (95% interval {lo:.1%}-{hi:.1%}) on {result.task}, "
          f"{result.eval_episodes} episodes, in {result.wall_s / 60:.1f} min; report: {result.report}",
          flush=True)
    return 0


def _eval_sim(args: argparse.Namespace) -> int:
    import json
    import sys
    from pathlib import Path

    from lingvla.sim.evaluate import CheckpointMismatchError, evaluate
    from lingvla.sim.seeds import SeedRangeError

    out = args.out or str(Path(args.checkpoint).resolve().parent / f"eval_{args.task}")
    try:
        report = evaluate(args.checkpoint, args.task, args.episodes, execution=_execution(args),
                          seed=args.seed, image_size=args.image_size, out=out, workers=args.workers,
                          videos=args.videos, max_steps=args.max_steps,
                          progress=not args.no_progress, num_steps=args.num_steps)
    except (CheckpointMismatchError, SeedRangeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    print(json.dumps(report.summary()), flush=True)
    return 0


def _execution(args: argparse.Namespace) -> Execution:
    """The eval-sim flags as a lingvla.serve.broker.Execution (ValueError for a bad combination)."""
    from lingvla.serve.broker import Execution

    if args.rtc is not None:
        from lingvla.serve.rtc import RTCConfig

        if args.ensemble_decay is not None:
            raise ValueError("--rtc and --ensemble-decay are two ways to join chunks: choose one")
        return Execution(mode="rtc", execute_horizon=args.actions_per_chunk, delay=args.rtc_delay,
                         rtc=RTCConfig(method=args.rtc, max_guidance=args.rtc_max_guidance))
    if args.rtc_delay:
        raise ValueError(f"--rtc-delay {args.rtc_delay} is for real-time chunking: give --rtc too")
    if args.ensemble_decay is not None:
        return Execution(mode="ensemble", execute_horizon=args.actions_per_chunk,
                         ensemble_decay=args.ensemble_decay)
    return Execution(execute_horizon=args.actions_per_chunk)


def _bench_sim(args: argparse.Namespace) -> int:
    import json
    import time

    from lingvla.sim.env import make_env
    from lingvla.sim.scripted import record_joint_actions

    # Realistic motion: the scripted episode of seed 0, replayed in joint space.
    actions = record_joint_actions(args.task, 0).actions
    steps = min(args.steps, len(actions))
    for size in [0] + list(args.image_sizes):
        cameras = () if size == 0 else ("top", "left_wrist", "right_wrist")
        with make_env(args.task, image_size=max(size, 1), cameras=cameras,
                      render_depth=args.depth and size > 0, stop_on_success=False) as env:
            env.reset(0)
            start = time.perf_counter()
            for action in actions[:steps]:
                env.step(action)
            seconds = time.perf_counter() - start
        print(json.dumps({"bench": "sim", "task": args.task, "cameras": len(cameras),
                          "image_size": size or None, "depth": bool(args.depth and size),
                          "steps": steps, "steps_per_s": round(steps / seconds, 1),
                          "ms_per_step": round(1000 * seconds / steps, 2)}), flush=True)
    return 0


def _eval_compare(args: argparse.Namespace) -> int:
    import json
    import sys

    from lingvla.sim.evaluate import load_episode_successes, paired_successes

    try:
        result = paired_successes(load_episode_successes(args.a), load_episode_successes(args.b))
    except (FileNotFoundError, ValueError, KeyError, json.JSONDecodeError) as err:
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        return 2
    print(json.dumps({"a": args.a, "b": args.b, **result}), flush=True)
    return 0


def _sweep(args: argparse.Namespace) -> int:
    import json

    from lingvla.sim.sweep import SweepSpec, run_sweep

    try:
        spec = SweepSpec.load(args.spec, out=args.out)
        if args.jobs < 1:
            raise ValueError(f"--jobs {args.jobs}: give 1 or more")
    except (FileNotFoundError, ValueError, TypeError) as err:
        print(f"error: {err}", flush=True)
        return 2
    try:
        result = run_sweep(spec, progress=not args.no_progress, jobs=args.jobs)
    except ValueError as err:  # the spec as a whole cannot run (a cell's own errors are caught per cell)
        print(f"error: {err}", flush=True)
        return 2
    print(json.dumps({"cells": len(result["rows"]), "failed": result["failed"],
                      "running_elsewhere": result["running_elsewhere"], "csv": result["csv"],
                      "plot": result["plot"]}), flush=True)
    return 1 if result["failed"] else 0
