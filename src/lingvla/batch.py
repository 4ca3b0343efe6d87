"""The batch contract between data code and the model.

Data code produces these keys (torch tensors, batch first); the model consumes them and knows
nothing else about where they came from. Sizes: B batch, C cameras, T chunk length, D unified
action/state width (config.action_dim), H = W = config.image_size.

    images          uint8  [B, C, 3, H, W]  current frame per camera, already resized with padding
    image_mask      bool   [B, C]           False where a camera is missing (its tokens are masked)
    prompt          list[str] of length B   task text; the model's tokenizer turns it into tokens
    state           float  [B, D]           normalized, zero-padded to D
    actions         float  [B, T, D]        normalized, zero-padded to D (training only)
    action_dim_mask bool   [B, D]           True on the robot's real dims
    action_is_pad   bool   [B, T]           True for chunk steps past the episode end (training only)

Optional: `embodiment` list[str] (bookkeeping), `depth` float [B, C, H, W] (metres, for an online
depth teacher), `depth_targets` float [B, C, N, Dt] (depth-teacher tokens; required when the
model's depth distillation is on).
"""

from __future__ import annotations

import torch

REQUIRED_INFER_KEYS = ("images", "image_mask", "prompt", "state", "action_dim_mask")
REQUIRED_TRAIN_KEYS = REQUIRED_INFER_KEYS + ("actions", "action_is_pad")


def check_batch(batch: dict, *, num_cameras: int, image_size: int, action_dim: int,
                chunk_size: int | None = None, train: bool = True) -> int:
    """Validate a batch against the contract; raise ValueError naming the field. Returns B."""
    keys = REQUIRED_TRAIN_KEYS if train else REQUIRED_INFER_KEYS
    missing = [k for k in keys if k not in batch]
    if missing:
        raise ValueError(f"batch is missing required key(s) {missing}")
    images = batch["images"]
    if images.dtype != torch.uint8 or images.ndim != 5:
        raise ValueError(f"images must be uint8 [B, C, 3, H, W]; got {images.dtype} {tuple(images.shape)}")
    b, c, ch, h, w = images.shape
    if c != num_cameras:
        raise ValueError(f"images has {c} cameras; the model expects num_cameras={num_cameras}")
    if ch != 3 or h != image_size or w != image_size:
        raise ValueError(f"images must be [B, {num_cameras}, 3, {image_size}, {image_size}]; "
                         f"got {tuple(images.shape)} (image_size={image_size})")
    if tuple(batch["image_mask"].shape) != (b, c):
        raise ValueError(f"image_mask must be [B, C] = {(b, c)}; got {tuple(batch['image_mask'].shape)}")
    if len(batch["prompt"]) != b:
        raise ValueError(f"prompt has {len(batch['prompt'])} entries; batch size is {b}")
    state = batch["state"]
    if state.ndim != 2 or state.shape[0] != b:
        raise ValueError(f"state must be [B, D]; got {tuple(state.shape)}")
    if state.shape[1] > action_dim:
        raise ValueError(f"state has width {state.shape[1]}, wider than the unified width action_dim={action_dim}")
    if state.shape[1] != action_dim:
        raise ValueError(f"state must be zero-padded to action_dim={action_dim}; got width {state.shape[1]}")
    if tuple(batch["action_dim_mask"].shape) != (b, action_dim):
        raise ValueError(f"action_dim_mask must be [B, {action_dim}]; got {tuple(batch['action_dim_mask'].shape)}")
    if not torch.isfinite(state).all():
        raise ValueError("state contains NaN or inf")
    if train:
        actions = batch["actions"]
        t = chunk_size if chunk_size is not None else actions.shape[1]
        if tuple(actions.shape) != (b, t, action_dim):
            raise ValueError(f"actions must be [B, {t}, {action_dim}]; got {tuple(actions.shape)}")
        if tuple(batch["action_is_pad"].shape) != (b, t):
            raise ValueError(f"action_is_pad must be [B, {t}]; got {tuple(batch['action_is_pad'].shape)}")
        if not torch.isfinite(actions).all():
            raise ValueError("actions contain NaN or inf")
    return b


def random_batch(config, batch_size: int, *, seed: int = 0, real_dims: int = 14,
                 prompts: list[str] | None = None) -> dict:
    """A training batch of `config`'s shapes (benchmarks and tests): random images, state and
    actions on the first `real_dims` dims, zero elsewhere, no padded chunk steps."""
    g = torch.Generator().manual_seed(seed)
    c, d, t, s = config.num_cameras, config.action_dim, config.chunk_size, config.image_size
    dim_mask = torch.zeros(batch_size, d, dtype=torch.bool)
    dim_mask[:, :real_dims] = True
    keep = dim_mask.float()
    return {
        "images": torch.randint(0, 256, (batch_size, c, 3, s, s), generator=g, dtype=torch.uint8),
        "image_mask": torch.ones(batch_size, c, dtype=torch.bool),
        "prompt": prompts or ["pick up the cube"] * batch_size,
        "state": torch.randn(batch_size, d, generator=g) * keep,
        "actions": torch.randn(batch_size, t, d, generator=g) * keep[:, None],
        "action_dim_mask": dim_mask,
        "action_is_pad": torch.zeros(batch_size, t, dtype=torch.bool),
    }
