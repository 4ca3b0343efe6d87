"""Where does a policy leave the demonstrated path? Roll the policy out in closed loop, replay the
scripted demonstration of the same seed, and print how far each gripper's tool point (between the
finger pads) is from the demonstration's at chosen steps, with each rollout's best reward stage
(lingvla.sim.tracking).

Seeds below 100000 are demonstration seeds: a policy that stays far from its own training
demonstrations underfits them; one that tracks them there but not on evaluation seeds does not
generalize (docs/recipes.md).

    python benchmarks/tracking.py CHECKPOINT_DIR --task transfer_cube [--seeds 100000 100001 ...]
        [--steps 25 49 99 149 199] [--actions-per-chunk 50]
"""

from __future__ import annotations

import argparse

import torch


def main() -> None:
    from lingvla.serve.policy import Policy
    from lingvla.sim.env import make_env
    from lingvla.sim.tracking import track

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--task", required=True, choices=["transfer_cube", "insertion"])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(100000, 100010)))
    parser.add_argument("--steps", type=int, nargs="+", default=[25, 49, 99, 149, 199])
    parser.add_argument("--actions-per-chunk", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(1)
    policy = Policy.from_checkpoint(args.checkpoint)
    env = make_env(args.task, image_size=policy.model.config.image_size, max_steps=max(args.steps) + 1,
                   stop_on_success=False)

    def show(i, result):
        cells = "  ".join(f"{left:5.1f}/{right:5.1f}" for left, right in result.gaps_cm[i])
        print(f"seed {result.seeds[i]}: {cells}  stage {result.stages[i]} "
              f"(demonstration: {result.demo_stages[i]})", flush=True)

    print(f"left/right tool point distance from the demonstration (cm) after steps {sorted(args.steps)}")
    with env:
        result = track(env, policy, args.seeds, args.steps, args.actions_per_chunk, on_seed=show)
    cells = "  ".join(f"t={t}: {left:.1f}/{right:.1f}"
                      for t, (left, right) in zip(result.steps, result.mean_cm()))
    print(f"mean over {len(result.seeds)} seeds: {cells}; best stages (0-4): "
          f"{[result.stages.count(s) for s in range(5)]}")


if __name__ == "__main__":
    main()
