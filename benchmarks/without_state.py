"""Closed loop without the state: does a policy trained with state dropout still act from its
images alone? Evaluates CHECKPOINT like `lingvla eval-sim` (one worker) with the normalized state
zeroed, which is what `model.state_dropout` feeds the model for the dropped samples in training.

    python benchmarks/without_state.py CHECKPOINT_DIR --task transfer_cube --episodes 150 --out DIR
"""

from __future__ import annotations

import argparse
import json


def main() -> None:
    from lingvla.serve.policy import Policy
    from lingvla.sim.evaluate import evaluate
    from lingvla.sim.seeds import EVAL_SEED_START

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--task", default="transfer_cube")
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--seed", type=int, default=EVAL_SEED_START)
    parser.add_argument("--out", default=None, help="report directory (results.json, chart, videos)")
    args = parser.parse_args()

    policy = Policy.from_checkpoint(args.checkpoint)
    with_state = policy.batch_from_obs

    def without_state(obs: dict) -> dict:
        batch = with_state(obs)  # the observation is still checked as usual
        batch["state"] = batch["state"] * 0
        return batch

    policy.batch_from_obs = without_state
    report = evaluate(args.checkpoint, args.task, args.episodes, seed=args.seed, policy=policy,
                      out=args.out, videos=1, progress=False)
    print(json.dumps({**report.summary(), "state": "zeroed"}))


if __name__ == "__main__":
    main()
