"""AdamW with 8-bit moment estimates (`optim.states: 8bit`): 2 bytes of optimizer state per
parameter instead of 8.

The idea is that of blockwise 8-bit optimizers (Dettmers et al., arXiv:2110.02861): each moment is
stored as one byte per value, an index into a fixed 256-entry code, times a per-block scale (the
block's largest magnitude). Here
  - blocks run along a weight's last dimension (256 values of one row), so the quantized states
    have the weight's shape and the scales its shape with the last dimension in blocks: under FSDP2
    (which shards dimension 0) they are DTensors placed like the weight, and a distributed
    checkpoint reshards them like any other state (resume on another world size);
  - the first moment uses a signed code, log-spaced magnitudes from 1e-6 to 1 (relative to the
    block's largest), and 0; the second moment is stored as its square root in an unsigned code,
    0 and log-spaced values from 1e-8 to 1, and a positive value never rounds to 0 (the update
    divides by it). Rounding is to the nearest code value on the log scale, computed with a
    logarithm (no search), within 5.6% and 3.7% of each value;
  - each step dequantizes one weight's moments (in row slices of at most `SLICE` values, so the
    temporaries stay small), updates them in fp32 as torch.optim.AdamW does (decoupled weight
    decay, bias correction), and quantizes them back;
  - weights under `min_8bit_size` values or with fewer than 2 dimensions (norms, biases) keep
    fp32 moments.
"""

from __future__ import annotations

import math

import torch

BLOCK = 256  # values per scale, along a weight's last dimension
SLICE = 1 << 22  # values dequantized at once
MIN_8BIT_SIZE = 4096


SIGNED_DECADES, UNSIGNED_DECADES = 6, 8  # the codes' ranges below the block's largest magnitude


def _codes(device) -> tuple[torch.Tensor, torch.Tensor]:
    """(signed code [256], unsigned code [256]): what each byte stands for, times its block's scale.

    signed: index 127 is 0; 128 + k and 126 - k are +-10^(-6 + k / 21), k = 0..126 (255: 1 again);
    unsigned: index 0 is 0; j >= 1 is 10^(-8 + 8 (j - 1) / 254)."""
    k = torch.arange(127, dtype=torch.float64)
    mags = 10 ** (-SIGNED_DECADES + k * SIGNED_DECADES / 126)
    one = torch.ones(1, dtype=torch.float64)
    signed = torch.cat([-mags.flip(0), torch.zeros(1, dtype=torch.float64), mags, one])
    j = torch.arange(255, dtype=torch.float64)
    unsigned = torch.cat([torch.zeros(1, dtype=torch.float64), 10 ** (-UNSIGNED_DECADES + j * UNSIGNED_DECADES / 254)])
    return signed.float().to(device), unsigned.float().to(device)


def _index(normed: torch.Tensor, signed: bool, positive_floor: bool) -> torch.Tensor:
    """The code index nearest each value of normed (in [-1, 1]) on the log scale: a logarithm and a
    rounding, no search."""
    a = normed.abs()
    if signed:
        k = ((torch.log10(a.clamp(min=1e-30)) + SIGNED_DECADES) * (126 / SIGNED_DECADES)).round_().clamp_(0, 126)
        index = torch.where(normed > 0, 128 + k, 126 - k)
        return torch.where(a < 0.5 * 10 ** -SIGNED_DECADES, torch.full_like(index, 127), index)
    j = 1 + ((torch.log10(a.clamp(min=1e-30)) + UNSIGNED_DECADES) * (254 / UNSIGNED_DECADES)).round_().clamp_(0, 254)
    zero = (a < 0.5 * 10 ** -UNSIGNED_DECADES) & ~(positive_floor & (a > 0))
    return torch.where(zero, torch.zeros_like(j), j)


def quantize(x: torch.Tensor, signed: bool, *, positive_floor: bool = False):
    """x [..., n] float -> (indices uint8 [..., n], scales float32 [..., ceil(n / BLOCK)]) in the
    signed or the unsigned code (x >= 0).

    positive_floor: a value > 0 maps to index >= 1 (never to the code's 0)."""
    n = x.shape[-1]
    blocks = -(-n // BLOCK)
    padded = torch.nn.functional.pad(x.float(), (0, blocks * BLOCK - n)).reshape(*x.shape[:-1], blocks, BLOCK)
    scales = padded.abs().amax(dim=-1)
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    normed = (padded / safe.unsqueeze(-1)).clamp_(-1, 1)
    index = _index(normed, signed, positive_floor).reshape(*x.shape[:-1], blocks * BLOCK)[..., :n]
    return index.to(torch.uint8), scales


def dequantize(index: torch.Tensor, scales: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    n = index.shape[-1]
    blocks = scales.shape[-1]
    values = code[index.long()]
    values = torch.nn.functional.pad(values, (0, blocks * BLOCK - n)).reshape(*index.shape[:-1], blocks, BLOCK)
    return (values * scales.unsqueeze(-1)).reshape(*index.shape[:-1], blocks * BLOCK)[..., :n]


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def _like(param: torch.Tensor, local: torch.Tensor, global_shape: tuple[int, ...]) -> torch.Tensor:
    """A state tensor placed as `param` is: a DTensor with its mesh and placements, else `local`."""
    if not hasattr(param, "device_mesh"):
        return local
    from torch.distributed.tensor import DTensor

    stride = [1] * len(global_shape)
    for i in range(len(global_shape) - 2, -1, -1):
        stride[i] = stride[i + 1] * global_shape[i + 1]
    return DTensor.from_local(local, param.device_mesh, param.placements, run_check=False,
                              shape=torch.Size(global_shape), stride=tuple(stride))


def _eight_bit(param: torch.Tensor, min_size: int) -> bool:
    if param.dim() < 2 or param.numel() < min_size:
        return False
    # blocks run along the last dimension: a weight sharded on it keeps fp32 moments
    last = param.dim() - 1
    return all(p.dim % param.dim() != last for p in getattr(param, "placements", ()) if p.is_shard())


class AdamW8bit(torch.optim.Optimizer):
    """torch.optim.AdamW's update with 8-bit blockwise moments (module doc)."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, min_8bit_size: int = MIN_8BIT_SIZE):
        if not lr >= 0 or not eps >= 0 or not weight_decay >= 0:
            raise ValueError(f"lr, eps and weight_decay must be >= 0; got {lr}, {eps}, {weight_decay}")
        if not all(0 <= b < 1 for b in betas):
            raise ValueError(f"betas must be in [0, 1); got {betas}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))
        self.min_8bit_size = int(min_8bit_size)
        self._code_cache: dict = {}

    def _code(self, device):
        if device not in self._code_cache:
            self._code_cache[device] = _codes(device)
        return self._code_cache[device]

    def _init_state(self, p: torch.Tensor) -> dict:
        x = _local(p)
        state = {"step": torch.tensor(0.0)}
        if _eight_bit(p, self.min_8bit_size):
            blocks = -(-p.shape[-1] // BLOCK)
            scale_shape = (*p.shape[:-1], blocks)
            zeros_scale = torch.zeros((*x.shape[:-1], blocks), dtype=torch.float32, device=x.device)
            # scale 0: both moments start at 0 whatever the index
            state["exp_avg_q"] = _like(p, torch.zeros(x.shape, dtype=torch.uint8, device=x.device), tuple(p.shape))
            state["exp_avg_scale"] = _like(p, zeros_scale, scale_shape)
            state["exp_avg_sq_q"] = _like(p, torch.zeros(x.shape, dtype=torch.uint8, device=x.device),
                                          tuple(p.shape))
            state["exp_avg_sq_scale"] = _like(p, zeros_scale.clone(), scale_shape)
        else:
            state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
            state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
        return state

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("AdamW8bit does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state.update(self._init_state(p))
                state["step"] += 1
                t = float(state["step"])
                c1, c2 = 1 - b1 ** t, math.sqrt(1 - b2 ** t)
                x, g = _local(p), _local(p.grad)
                if "exp_avg" in state:
                    m, v = _local(state["exp_avg"]), _local(state["exp_avg_sq"])
                    self._update(x, g, m, v, lr, b1, b2, eps, wd, c1, c2)
                else:
                    self._update_8bit(x, g, state, lr, b1, b2, eps, wd, c1, c2)
        return loss

    @staticmethod
    def _update(x, g, m, v, lr, b1, b2, eps, wd, c1, c2):
        """One AdamW step of weights x [.., n] with fp32 moments m, v (updated in place)."""
        g = g.float()
        m.lerp_(g, 1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        step = (m / c1) / (v.sqrt() / c2 + eps)
        if wd:
            x.mul_(1 - lr * wd)
        x.add_(step.to(x.dtype), alpha=-lr)

    def _update_8bit(self, x, g, state, lr, b1, b2, eps, wd, c1, c2):
        signed, unsigned = self._code(x.device)
        mq, ms = _local(state["exp_avg_q"]), _local(state["exp_avg_scale"])
        vq, vs = _local(state["exp_avg_sq_q"]), _local(state["exp_avg_sq_scale"])
        n = x.shape[-1]
        rows = x.reshape(-1, n)
        grads, mq2, vq2 = g.reshape(-1, n), mq.view(-1, n), vq.view(-1, n)
        ms2, vs2 = ms.view(-1, ms.shape[-1]), vs.view(-1, vs.shape[-1])
        per_slice = max(1, SLICE // max(n, 1))
        for r0 in range(0, rows.shape[0], per_slice):
            r = slice(r0, r0 + per_slice)
            m = dequantize(mq2[r], ms2[r], signed)
            v = dequantize(vq2[r], vs2[r], unsigned).square_()
            self._update(rows[r], grads[r], m, v, lr, b1, b2, eps, wd, c1, c2)
            mq2[r], ms2[r] = quantize(m, True)
            index, scales = quantize(v.sqrt_(), False, positive_floor=True)
            vq2[r], vs2[r] = index, scales
        if not rows.data_ptr() == x.data_ptr():  # reshape copied (non-contiguous weights)
            x.copy_(rows.view_as(x))
