"""Sampling a chunk: prefill the prefix's K/V once, a velocity over the suffix, and ONE Euler loop.

Every sampler of the project runs `euler_sample`: the model's own `sample_actions`, the CUDA-graph
sampler (lingvla/model/graphed.py captures this loop and nothing else) and real-time chunking
(lingvla/serve/rtc.py), whose inpainting and guidance are step rules that plug into the loop.

Flow convention (lingvla/model/flow.py): t = 1 is noise, t = 0 is data, v = eps - A, and the loop
integrates from t = 1 to t = 0 with Euler steps of dt = -1 / num_steps.
"""
from __future__ import annotations

from typing import Callable

import torch

# velocity(x [B, T, D], t [B]) -> v [B, T, D]
Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# step(x, t, dt, velocity) -> x at t + dt; t and dt are Python floats
Step = Callable[[torch.Tensor, float, float, Velocity], torch.Tensor]


def time_vector(x: torch.Tensor, t: float) -> torch.Tensor:
    return torch.full((x.shape[0],), t, dtype=torch.float32, device=x.device)


def euler_step(x: torch.Tensor, t: float, dt: float, velocity: Velocity) -> torch.Tensor:
    return x + dt * velocity(x, time_vector(x, t))


def euler_sample(velocity: Velocity, noise: torch.Tensor, num_steps: int, step: Step = euler_step) -> torch.Tensor:
    """Integrate dx/dt = velocity(x, t) from t = 1 (x = noise) to t = 0 in num_steps steps of
    `step` (plain Euler by default; RTC's rules below)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1; got {num_steps}")
    x = noise
    dt = -1.0 / num_steps
    for i in range(num_steps):
        x = step(x, 1.0 + i * dt, dt, velocity)
    return x


# ------------------------------------------------------------------ real-time chunking's step rules
def inpaint_step(noise: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> Step:
    """An Euler step, then the constrained part of x blended toward the target noised to the new
    time with the chunk's own initial noise: x <- W (t' eps + (1 - t') Y) + (1 - W) x."""

    def step(x, t, dt, velocity):
        x = euler_step(x, t, dt, velocity)
        t_next = max(t + dt, 0.0)
        known = t_next * noise + (1 - t_next) * target
        return weights * known + (1 - weights) * x

    return step


def guidance_weight(t: float, max_guidance: float) -> float:
    """beta_t = min(beta_max, ((1-t)^2 + t^2) / (t (1-t))); beta_max at t = 0 or 1."""
    if t <= 0.0 or t >= 1.0:
        return max_guidance
    return min(max_guidance, ((1 - t) ** 2 + t ** 2) / (t * (1 - t)))


def guidance_step(target: torch.Tensor, weights: torch.Tensor, max_guidance: float) -> Step:
    """Pseudo-inverse guidance (PiGDM): the weighted error between the target and the denoiser's
    clean estimate x - t v, taken back through the denoiser by one vector-Jacobian product and
    added to the Euler step with weight beta_t."""

    def step(x, t, dt, velocity):
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            v = velocity(x_in, time_vector(x, t))
            clean = x_in - t * v
            error = (target - clean) * weights
            (correction,) = torch.autograd.grad(clean, x_in, grad_outputs=error.detach())
        return x.detach() + dt * (v.detach() - guidance_weight(t, max_guidance) * correction)

    return step


# ------------------------------------------------------------------------------ the model's velocity
def cached_velocity(model, prefix, state: torch.Tensor, dim_mask: torch.Tensor,
                    fuse_expert: bool = False) -> Velocity:
    """Prefill: run the embedded prefix through the joint layers once (without gradients) and keep
    its K/V; the returned velocity runs the action expert alone over the suffix (state + noisy
    chunk) against that cache. fuse_expert: concatenate the expert's weights once here
    (FusedExpert) for fewer matmuls per step; no gradients reach the weights through them."""
    from lingvla.model.expert import FusedExpert

    with torch.no_grad():
        cache = model.fill_prefix_cache(prefix)
        plan = model.plan_suffix(prefix, 1 + model.config.chunk_size)
        fused = FusedExpert([layer.expert for layer in model.layers]) if fuse_expert else None

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        suffix, cond = model.embed_suffix(state, x, t, dim_mask)
        return model.velocity_from_suffix(model.forward_suffix(cache, plan, suffix, cond, fused))

    return velocity


def velocity_fn(model, batch: dict, use_cache: bool = True) -> Velocity:
    """The denoiser of one batch. With use_cache, `cached_velocity`; without, every call reruns the
    whole joint model (the reference the cache is tested against). Calls track gradients if the
    caller enables them (guidance needs dv/dx)."""
    inputs = model.prepare(batch, train=False)
    with torch.no_grad():
        prefix = model.embed_prefix(inputs["images"], inputs["image_mask"], inputs["tokens"],
                                    inputs["token_mask"])
    state, dim_mask = inputs["state"], inputs["action_dim_mask"]
    if use_cache:
        return cached_velocity(model, prefix, state, dim_mask)

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        suffix, cond = model.embed_suffix(state, x, t, dim_mask)
        return model.velocity_from_suffix(model.forward_joint(prefix, suffix, cond)[1])

    return velocity


@torch.no_grad()
def sample_actions(model, batch: dict, noise: torch.Tensor | None = None, num_steps: int | None = None,
                   use_cache: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
    """Denoise a chunk -> actions [B, chunk_size, action_dim] (normalized, padded space)."""
    velocity = velocity_fn(model, batch, use_cache=use_cache)
    if noise is None:
        noise = model.initial_noise(len(batch["prompt"]), generator)
    noise = noise.to(model.device, model.dtype)
    return euler_sample(velocity, noise, num_steps or model.config.num_steps)
