"""Real-time chunking (RTC; Black, Galliker, Levine 2025, "Real-Time Execution of Action Chunking
Flow Policies"): sample the next chunk so that it continues the actions already committed.

While the next chunk is being computed the robot keeps executing the current one. The current
chunk's remaining actions, aligned to the new chunk's first step, are the *prefix*: its first
`delay` actions will certainly be executed before the new chunk arrives (frozen, weight 1), the rest
of the overlap may still change (weights decaying exponentially to 0), nothing beyond it is
constrained (weight 0) - the paper's soft mask (its Eq. 5 with H - s = the prefix length).

Two step rules of the one Euler loop (lingvla/model/sampling.py), on the prefix-cached velocity:

- "guidance" (the paper's): pseudo-inverse guidance (PiGDM). Each Euler step predicts the clean chunk
  A_hat = x_t - t * v(x_t, t), takes the weighted error W * (Y - A_hat) back through the denoiser with
  one vector-Jacobian product, and adds it with weight beta_t = min(beta_max, ((1-t)^2 + t^2) /
  (t (1-t))) (the paper's (1-tau)/(tau r_tau^2) in our time t = 1 - tau). One backward pass per
  step: about 2-3x the cost of plain sampling.
- "inpaint": no gradients. After each Euler step the constrained part of x is blended toward the
  prefix noised to the new time, x <- W * (t' eps + (1 - t') Y) + (1 - W) * x, with the chunk's own
  initial noise eps (RePaint-style replacement). It costs what plain sampling costs; the model does
  not see the constraint's effect through its Jacobian, so the seam between the prefix and the free
  part relies on the soft mask alone.

The default is "inpaint": on our trained ALOHA policies guidance barely moved the chunk towards the
prefix (boundary jumps 0.244 against 0.21 unjoined and 0.022 inpainted, `lingvla bench smoothness
--checkpoint`), because their clean estimate depends little on x_t (|dA_hat/dx| ~0.1-0.3 on the real
dims), so the vector-Jacobian product guidance relies on is small; in closed loop inpainting did as
well or better at every horizon tried (docs/recipes.md).

Flow convention (lingvla.model.flow): t = 1 noise -> t = 0 data, x_t = t eps + (1 - t) A, v = eps - A,
Euler with dt = -1/N. Everything happens in the model's normalized unified space; `infer_with_prefix`
maps the robot-unit prefix there. The returned chunk's first `delay` actions are then set to the
committed ones exactly (they are what the robot executes anyway).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from lingvla.model import sampling

METHODS = ("guidance", "inpaint")
SCHEDULES = ("exp", "linear", "hard")


@dataclass(frozen=True)
class RTCConfig:
    method: str = "inpaint"  # "inpaint" (no gradients) or "guidance" (PiGDM, the paper's; module doc)
    max_guidance: float = 5.0  # beta clip of the guidance weight (the paper uses 5)
    schedule: str = "exp"  # soft-mask decay over the free part of the overlap: exp | linear | hard

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown RTC method {self.method!r}; expected one of {METHODS}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown RTC schedule {self.schedule!r}; expected one of {SCHEDULES}")
        if not self.max_guidance > 0:
            raise ValueError(f"max_guidance must be > 0; got {self.max_guidance}")


def prefix_weights(chunk_size: int, prefix_len: int, delay: int, schedule: str = "exp") -> np.ndarray:
    """Soft mask [chunk_size]: 1 for i < delay, decaying over delay <= i < prefix_len, 0 beyond.

    "exp" is the paper's c_i (e^c_i - 1) / (e - 1) with c_i = (L - i) / (L - d + 1), L = prefix_len;
    "linear" is c_i itself; "hard" constrains only the frozen steps.
    """
    if not 0 <= delay <= prefix_len <= chunk_size:
        raise ValueError(f"need 0 <= delay ({delay}) <= prefix length ({prefix_len}) <= chunk ({chunk_size})")
    w = np.zeros(chunk_size, dtype=np.float64)
    w[:delay] = 1.0
    i = np.arange(delay, prefix_len)
    c = (prefix_len - i) / (prefix_len - delay + 1)
    if schedule == "exp":
        w[delay:prefix_len] = c * np.expm1(c) / (math.e - 1)
    elif schedule == "linear":
        w[delay:prefix_len] = c
    elif schedule != "hard":
        raise ValueError(f"unknown RTC schedule {schedule!r}; expected one of {SCHEDULES}")
    return w


def check_prefix(prefix_actions, prefix_delay, chunk_size: int, action_dim: int) -> tuple[np.ndarray, int]:
    """Validate the RTC inputs (robot units) -> (float32 [k, action_dim], delay); ValueError names
    the problem."""
    prefix = np.asarray(prefix_actions)
    if prefix.dtype.kind not in "fiu":
        raise ValueError(f"prefix_actions must be numeric; got dtype {prefix.dtype}")
    if prefix.ndim != 2 or prefix.shape[1] != action_dim or not 1 <= prefix.shape[0] <= chunk_size:
        raise ValueError(f"prefix_actions must have shape [k, {action_dim}] with 1 <= k <= {chunk_size}; "
                         f"got {list(prefix.shape)}")
    prefix = prefix.astype(np.float32)
    if not np.isfinite(prefix).all():
        bad = np.argwhere(~np.isfinite(prefix))[:5].tolist()
        raise ValueError(f"prefix_actions contains NaN or inf (first at [step, dim] {bad})")
    if isinstance(prefix_delay, (bool, np.bool_)) or not isinstance(prefix_delay, (int, np.integer)):
        raise ValueError(f"prefix_delay must be an int; got {type(prefix_delay).__name__}")
    delay = int(prefix_delay)
    if not 0 <= delay <= prefix.shape[0]:
        raise ValueError(f"prefix_delay must be in [0, {prefix.shape[0]}] (the prefix length); got {delay}")
    return prefix, delay


def infer_with_prefix(policy, batch: dict, prefix_actions, prefix_delay, *, noise: torch.Tensor | None = None,
                      config: RTCConfig | None = None) -> np.ndarray:
    """Sample one chunk for a `lingvla.serve.policy.Policy` batch under the RTC constraint.

    prefix_actions: robot units [k, action_dim], aligned to the new chunk's step 0 (the observation's
    time); prefix_delay: how many of them execute before the chunk arrives. -> robot units [T, dim].
    """
    config = config or RTCConfig()
    model, c = policy.model, policy.config
    prefix, delay = check_prefix(prefix_actions, prefix_delay, c.chunk_size, policy.embodiment.action_dim)
    k = prefix.shape[0]
    unified = policy.embodiment.pack("action", policy.normalizer.normalize_action(prefix), c.action_dim)
    target = torch.zeros(1, c.chunk_size, c.action_dim, dtype=model.dtype, device=model.device)
    target[0, :k] = torch.as_tensor(np.asarray(unified, dtype=np.float32), device=model.device)
    steps = torch.as_tensor(prefix_weights(c.chunk_size, k, delay, config.schedule), dtype=model.dtype)
    weights = steps[None, :, None] * policy.dim_mask.to(model.dtype)[:, None, :]
    weights = weights.to(model.device)
    velocity = model.velocity_fn(batch)
    if noise is None:
        noise = model.initial_noise(1)
    noise = noise.to(model.device, model.dtype)
    if config.method == "guidance":
        step = sampling.guidance_step(target, weights, config.max_guidance)
    else:
        step = sampling.inpaint_step(noise, target, weights)
    with torch.no_grad():  # guidance turns gradients on inside its step
        chunk = sampling.euler_sample(velocity, noise, policy.num_steps, step=step)
    actions = policy.actions_from_model(chunk[0])
    actions[:delay] = prefix[:delay]
    return actions
