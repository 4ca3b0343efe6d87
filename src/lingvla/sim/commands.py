"""`lingvla gen-demos` and `lingvla bench sim`."""

from __future__ import annotations

import argparse

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
    gen.add_argument("--seed-start", type=int, default=0,
                     help="first seed tried (demonstration seeds are below 100000)")
    gen.add_argument("--workers", type=int, default=2, help="processes generating episodes")
    gen.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    gen.add_argument("--no-progress", action="store_true", help="no progress bar")
    gen.set_defaults(func=_gen_demos)

    sim = bench.add_parser("sim", help="ALOHA simulator steps/s with rendering (JSON lines)")
    sim.add_argument("--task", choices=TASK_NAMES, default="transfer_cube")
    sim.add_argument("--image-sizes", type=int, nargs="+", default=[64, 96, 224])
    sim.add_argument("--steps", type=int, default=200)
    sim.add_argument("--depth", action="store_true", help="also render depth")
    sim.set_defaults(func=_bench_sim)


def _gen_demos(args: argparse.Namespace) -> int:
    from .demos import generate_dataset

    report = generate_dataset(args.out, args.task, args.episodes, seed_start=args.seed_start,
                              image_size=args.image_size, workers=args.workers,
                              overwrite=args.overwrite, progress=not args.no_progress)
    print(report.to_json(), flush=True)
    return 0


def _bench_sim(args: argparse.Namespace) -> int:
    import json
    import time

    from .env import make_env
    from .scripted import record_joint_actions

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
