"""Half-turn wrist flips: ALOHA episodes whose forearm roll leaves +-pi/2 (forearm roll and wrist
rotate turned half a turn in opposite directions: the same gripper pose on another joint branch).

Datasets: list the episodes that flip, as `exclude_episodes` lists for a training config
(docs/data.md). Demonstrations generated before the mocap forearm-roll limit
(lingvla.sim.physics.MOCAP_FOREARM_ROLL_LIMIT) hold such episodes.

    python benchmarks/wrist_flips.py runs/demos/tcd84 runs/demos/tcn84

A policy: roll it out like `lingvla eval-sim` (one worker, whole chunks) and split the successes by
whether the rollout flipped (docs/recipes.md).

    python benchmarks/wrist_flips.py --checkpoint EXPORT_DIR --task transfer_cube --episodes 150
"""

from __future__ import annotations

import argparse
import json

import numpy as np

FOREARM_ROLL = [3, 10]   # left and right forearm roll in ALOHA's 14-D state and action
FLIP = np.pi / 2


def dataset_flips(path: str) -> list[int]:
    from lingvla.data.lerobot import LeRobotDataset

    source = LeRobotDataset(path)
    flipped: set[int] = set()
    for _, columns in source.iter_data_files(["observation.state"]):
        rolls = np.abs(columns["observation.state"][:, FOREARM_ROLL]).max(axis=1)
        flipped.update(int(e) for e in np.unique(columns["episode_index"].reshape(-1)[rolls > FLIP]))
    return sorted(flipped)


def policy_flips(checkpoint: str, task: str, episodes: int, seed: int) -> dict:
    import torch

    from lingvla.serve.broker import Execution
    from lingvla.serve.policy import Policy
    from lingvla.sim.env import make_env
    from lingvla.sim.evaluate import run_episode

    torch.set_num_threads(1)
    policy = Policy.from_checkpoint(checkpoint)
    whole_chunks = Execution(execute_horizon=policy.model.config.chunk_size)
    rows = []
    with make_env(task, image_size=policy.model.config.image_size) as env:
        for s in range(seed, seed + episodes):
            peak = [0.0]

            def on_step(step, env, peak=peak):
                peak[0] = max(peak[0], float(np.abs(env.physics.joint_state()[FOREARM_ROLL]).max()))

            result, _ = run_episode(policy, env, s, whole_chunks, on_step=on_step)
            rows.append({"seed": s, "success": result.success, "flipped": peak[0] > FLIP})
    flipped = [r for r in rows if r["flipped"]]
    kept = [r for r in rows if not r["flipped"]]
    return {"checkpoint": checkpoint, "task": task, "episodes": episodes, "seed": seed,
            "flipped": len(flipped), "flipped_successes": sum(r["success"] for r in flipped),
            "not_flipped": len(kept), "not_flipped_successes": sum(r["success"] for r in kept),
            "flipped_seeds": [r["seed"] for r in flipped]}


def main() -> None:
    from lingvla.sim.seeds import EVAL_SEED_START

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="*")
    parser.add_argument("--checkpoint")
    parser.add_argument("--task", default="transfer_cube")
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--seed", type=int, default=EVAL_SEED_START)
    args = parser.parse_args()
    if bool(args.datasets) == bool(args.checkpoint):
        parser.error("give dataset directories or --checkpoint, not both")
    if args.checkpoint:
        print(json.dumps(policy_flips(args.checkpoint, args.task, args.episodes, args.seed)))
        return
    for path in args.datasets:
        flipped = dataset_flips(path)
        print(f"# {path}: {len(flipped)} episodes flip")
        print(f"- {{path: {path}, exclude_episodes: {flipped}}}")


if __name__ == "__main__":
    main()
