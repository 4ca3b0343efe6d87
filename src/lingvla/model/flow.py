"""Flow matching in the released model's convention.

t = 1 is noise, t = 0 is data:  x_t = t * eps + (1 - t) * A,  target velocity u = dx_t/dt = eps - A.
Sampling (lingvla/model/sampling.py) integrates from t = 1 to t = 0 with Euler steps of dt = -1 / num_steps.
(The paper writes the mirrored time s = 1 - t: A_s = s*A + (1-s)*eps, v = A - eps.)
"""

from __future__ import annotations

import torch


def sample_time(batch: int, mode: str, generator: torch.Generator | None = None,
                alpha: float = 1.5, beta: float = 1.0, device=None) -> torch.Tensor:
    """Flow time per sample in (0, 1]. "beta": 0.999 * Beta(alpha, beta) + 0.001 (skewed toward
    noise, as the released code and pi0 do); "uniform": U[0, 1]."""
    if mode == "uniform":
        return torch.rand(batch, generator=generator, device=device)
    if mode == "beta":
        # Beta(a, b) = X / (X + Y) with X ~ Gamma(a), Y ~ Gamma(b); torch's Beta has no generator.
        u = torch.rand(batch, generator=generator, device=device)
        if beta == 1.0:
            # Beta(a, 1) has CDF x^a: invert it exactly (fast and generator-driven).
            x = u.pow(1.0 / alpha)
        else:
            x = torch.distributions.Beta(alpha, beta).sample((batch,)).to(device)
        return 0.999 * x + 0.001
    raise ValueError(f"unknown time sampling {mode!r}; expected 'beta' or 'uniform'")


def interpolate(actions: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = t * noise + (1 - t) * actions, t [B] broadcast over [B, T, D]."""
    t = t.to(actions.dtype)[:, None, None]
    return t * noise + (1 - t) * actions


def target_velocity(actions: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    return noise - actions


def masked_loss(pred: torch.Tensor, target: torch.Tensor, dim_mask: torch.Tensor,
                is_pad: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """Mean error over the robot's real dims (dim_mask [B, D]) and real steps (~is_pad [B, T]).

    Padded steps past an episode's end do not count (the released code counts them: we do not).
    """
    err = pred.float() - target.float()
    if kind == "l1":
        err = err.abs()
    elif kind == "mse":
        err = err.pow(2)
    else:
        raise ValueError(f"unknown loss {kind!r}; expected 'mse' or 'l1'")
    weight = (dim_mask.bool()[:, None, :] & ~is_pad.bool()[:, :, None]).float()
    count = weight.sum()
    if count == 0:
        raise ValueError("batch has no real action entries: every step is padded (action_is_pad) "
                         "or no dim is set in action_dim_mask")
    # where() rather than a product: a NaN in a padded entry must not leak into the loss.
    return torch.where(weight > 0, err, torch.zeros_like(err)).sum() / count
