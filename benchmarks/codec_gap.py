"""Does video compression shift what a policy sees? Predict the chunk at frame t of a generated
dataset's episodes from the stored (decoded) frames and from fresh renders of the same seed, and
print both errors against the demonstrated actions and the gap between the two predictions.

    python benchmarks/codec_gap.py CHECKPOINT_DIR DATASET_DIR --task transfer_cube --seed-start 0 \
        [--episodes 10] [--frames 0 60 90]

DATASET_DIR must be a `lingvla gen-demos` dataset without --noise whose episodes are the seeds
seed-start, seed-start + 1, ... (its JSON line lists no failed seeds).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from image_reliance import dataset_observation, predict  # the script beside this one


def main() -> None:
    from lingvla.data.lerobot import LeRobotDataset
    from lingvla.serve.policy import Policy
    from lingvla.sim.demonstrations import generate_demo
    from lingvla.sim.tasks import CAMERAS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("dataset")
    parser.add_argument("--task", default="transfer_cube")
    parser.add_argument("--seed-start", type=int, default=0)
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--frames", type=int, nargs="+", default=[0, 60, 90])
    args = parser.parse_args()
    torch.set_num_threads(1)
    policy = Policy.from_checkpoint(args.checkpoint)
    ds = LeRobotDataset(args.dataset)
    size = ds.image_shape(f"observation.images.{CAMERAS[0]}")[0]
    results = {t: ([], [], []) for t in args.frames}
    for ep in range(min(args.episodes, ds.num_episodes)):
        demo = generate_demo(args.task, args.seed_start + ep, image_size=size, steps=max(args.frames) + 1)
        actions = ds.episode_data(ep)["action"]
        if not np.allclose(actions[:len(demo.actions)], demo.actions, atol=1e-5):
            raise SystemExit(f"episode {ep} is not seed {args.seed_start + ep}'s demonstration")
        for t, (decoded_err, rendered_err, gap) in results.items():
            obs = dataset_observation(ds, ep, t, CAMERAS)
            rendered = dict(obs, images={c: demo.images[c][t] for c in CAMERAS})
            a = predict(policy, obs)[:, :actions.shape[1]]
            b = predict(policy, rendered)[:, :actions.shape[1]]
            target = actions[t:t + len(a)]
            decoded_err.append(np.abs(a[:len(target)] - target).mean())
            rendered_err.append(np.abs(b[:len(target)] - target).mean())
            gap.append(np.abs(a - b).mean())
    for t, (decoded_err, rendered_err, gap) in results.items():
        print(f"t={t:4d}  error from decoded frames {np.mean(decoded_err):.4f}  from fresh renders "
              f"{np.mean(rendered_err):.4f}  gap between the predictions {np.mean(gap):.4f}", flush=True)


if __name__ == "__main__":
    main()
