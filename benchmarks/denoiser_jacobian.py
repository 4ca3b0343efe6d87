"""How much does a policy's clean-chunk estimate depend on the noisy chunk? RTC guidance corrects
through d(A_hat)/d(x_t) (lingvla.serve.rtc), so a small ratio means weak guidance. For the first
observation of an evaluation seed, prints ||A_hat(x + e) - A_hat(x)|| / ||e|| on the robot's real
dims at a few flow times, A_hat = x - t v(x, t), e a small random perturbation.

    python benchmarks/denoiser_jacobian.py CHECKPOINT_DIR --task insertion [--times 0.9 0.5 0.2]
"""

from __future__ import annotations

import argparse
import json


def main() -> None:
    import torch

    from lingvla.serve.policy import Policy
    from lingvla.sim.env import make_env
    from lingvla.sim.seeds import EVAL_SEED_START

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--task", default="transfer_cube")
    parser.add_argument("--seed", type=int, default=EVAL_SEED_START)
    parser.add_argument("--times", type=float, nargs="+", default=[0.9, 0.5, 0.2])
    parser.add_argument("--scale", type=float, default=1e-2, help="size of the perturbation")
    args = parser.parse_args()

    policy = Policy.from_checkpoint(args.checkpoint)
    env = make_env(args.task, image_size=policy.config.image_size)
    try:
        obs = env.reset(args.seed)
        prompt = env.prompt
    finally:
        env.close()
    batch = policy.batch_from_obs({"images": obs["images"], "state": obs["state"], "prompt": prompt})
    velocity = policy.model.velocity_fn(batch)
    g = torch.Generator().manual_seed(0)
    shape = (1, policy.config.chunk_size, policy.config.action_dim)
    x = torch.randn(shape, generator=g)
    e = args.scale * torch.randn(shape, generator=g)
    real = policy.dim_mask[:, None, :].float()
    ratios = {}
    with torch.no_grad():
        for t in args.times:
            time = torch.full((1,), t)
            a0 = x - t * velocity(x, time)
            a1 = (x + e) - t * velocity(x + e, time)
            ratios[str(t)] = round(float(((a1 - a0) * real).norm() / (e * real).norm()), 4)
    print(json.dumps({"checkpoint": args.checkpoint, "task": args.task, "seed": args.seed, "ratio": ratios}))


if __name__ == "__main__":
    main()
