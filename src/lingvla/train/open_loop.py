"""Open-loop action error on recorded frames: what a policy predicts against what was recorded.

For each frame the model samples a chunk from the frame's observation (images, state, prompt), with
flow noise drawn from a generator seeded per call, and the error is the mean absolute difference
from the recorded chunk in the normalized space the model works in, over the robot's real dims and
the steps before the episode's end (`action_dim_mask`, `action_is_pad`). A trained policy's error
on frames it never saw should fall well below an untrained one's and below always predicting the
mean action (a zero chunk in mean/std-normalized space).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lingvla.data.samples import collate


@torch.no_grad()
def open_loop_error(model, dataset, indices: Sequence[int], *, batch_size: int = 16,
                    seed: int = 0) -> dict[str, float]:
    """{"policy": mean |predicted - recorded|, "mean_action": mean |recorded|} over `indices` of a
    RobotDataset (normalized actions), both over real dims and unpadded steps only."""
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    total = baseline = count = 0.0
    try:
        for start in range(0, len(indices), batch_size):
            batch = collate([dataset[int(i)] for i in indices[start:start + batch_size]])
            noise = model.initial_noise(len(batch["prompt"]), generator=generator)
            predicted = model.sample_actions(batch, noise=noise).float().cpu()
            recorded = batch["actions"].float()
            keep = (batch["action_dim_mask"][:, None, :] & ~batch["action_is_pad"][:, :, None]).float()
            total += float(((predicted - recorded).abs() * keep).sum())
            baseline += float((recorded.abs() * keep).sum())
            count += float(keep.sum())
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("no real action entries in the frames given")
    return {"policy": total / count, "mean_action": baseline / count}
