"""Does a policy use its images? Predict the first chunk at frame t of training episodes with the
episode's own images and with another episode's images (same state, same noise), and print both
errors against the demonstrated actions. Equal errors at t = 0 mean the policy ignores where the
object is (docs/recipes.md).

    python benchmarks/image_reliance.py CHECKPOINT_DIR DATASET_DIR [--episodes 12] [--frames 0 30 60 90 120]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

CAMERAS = ["top", "left_wrist", "right_wrist"]


def dataset_observation(ds, ep: int, t: int, cameras=CAMERAS) -> dict:
    """The policy's observation at frame t of episode ep of a LeRobotDataset."""
    frame = ds.frame(ds.episode_start(ep) + t)
    prompt = ds.episodes[ep].tasks[0] if ds.episodes[ep].tasks else ""
    return {"images": {c: frame[f"observation.images.{c}"] for c in cameras},
            "state": np.asarray(frame["observation.state"]), "prompt": prompt}


def predict(policy, obs: dict) -> np.ndarray:
    """The chunk for obs with the same sampling noise every call."""
    torch.manual_seed(0)
    return policy.infer(obs)["actions"]


def main() -> None:
    from lingvla.data.lerobot import LeRobotDataset
    from lingvla.serve.policy import Policy

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("dataset")
    parser.add_argument("--episodes", type=int, default=12)
    parser.add_argument("--frames", type=int, nargs="+", default=[0, 30, 60, 90, 120])
    parser.add_argument("--cameras", nargs="+", default=CAMERAS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    policy = Policy.from_checkpoint(args.checkpoint)
    ds = LeRobotDataset(args.dataset)
    n = min(args.episodes, ds.num_episodes)
    if n < 2:
        raise SystemExit("need at least 2 episodes")

    def observation(ep: int, t: int) -> dict:
        return dataset_observation(ds, ep, t, args.cameras)

    for t in args.frames:
        own, other = [], []
        for ep in range(n):
            obs = observation(ep, t)
            actions = ds.episode_data(ep)["action"][t:t + 50]
            swapped = dict(obs, images=observation((ep + 5) % n if n > 5 else (ep + 1) % n, t)["images"])
            k = len(actions)
            own.append(np.abs(predict(policy, obs)[:k, :actions.shape[1]] - actions).mean())
            other.append(np.abs(predict(policy, swapped)[:k, :actions.shape[1]] - actions).mean())
        print(f"t={t:4d}  error with own images {np.mean(own):.4f}  with another episode's images "
              f"{np.mean(other):.4f}", flush=True)


if __name__ == "__main__":
    main()
