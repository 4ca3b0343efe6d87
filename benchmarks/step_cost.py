"""What does a model change cost per training step? Times forward + backward + AdamW of a training
config's model on random batches, for the config as is and for each variant (config overrides), in
one process one after another, and prints each variant's median step time and its ratio to the
config's. Ratios from one run are what to compare on a shared machine.

    python benchmarks/step_cost.py configs/aloha_transfer_cube_dart.yaml \\
        --variant model.image_size=112 --variant model.image_size=168 \\
        --variant model.vision.patch_size=7 [--batch 32] [--steps 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def step_times(model_config, batch_size: int, steps: int, warmup: int = 2) -> list[float]:
    from lingvla.batch import random_batch
    from lingvla.model.lingvla import LingVLA

    torch.manual_seed(0)
    model = LingVLA(model_config).train()
    prompt = "pick up the cube with the right arm and transfer it to the left arm"
    batch = random_batch(model.config, batch_size, prompts=[prompt] * batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        loss, _ = model(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    from lingvla.train.config import load_train_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="a training YAML (its model section is timed)")
    parser.add_argument("--variant", action="append", default=[],
                        help="KEY=VALUE[,KEY=VALUE...] overrides of one variant (repeatable)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = None
    for variant in [""] + args.variant:
        overrides = [item for item in variant.split(",") if item]
        config = load_train_config(args.config, overrides)
        median = statistics.median(step_times(config.model, args.batch, args.steps))
        base = median if base is None else base
        print(f"{variant or '(config as is)'}: {median:.3f} s/step, {median / base:.2f}x", flush=True)


if __name__ == "__main__":
    main()
