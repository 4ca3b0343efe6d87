"""Training-time image augmentation: random shifts.

Each camera image of a training batch is padded by ``pad`` pixels on every side (the edge pixels
repeated) and cropped back to its size at a random offset, so the policy sees the scene moved by up
to ``pad`` pixels in each direction. This is the random-shift augmentation of DrQ (Kostrikov et al.,
arXiv:2004.13649) and Diffusion Policy's random crop (Chi et al., arXiv:2303.04137): with a few
dozen demonstrations it keeps a small vision tower from memorising exact pixel positions.

The offsets are drawn from a generator keyed by (seed, step, micro-batch), as the flow-matching
noise is, so a resumed run and any number of processes shift the images one process would.
Inference never shifts.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def shift_offsets(seed: int, step: int, micro: int, rows, global_batch: int, cameras: int,
                  pad: int) -> torch.Tensor:
    """Integer offsets [b, cameras, 2] in [0, 2 * pad] (row, column) for this rank's ``rows`` of one
    global micro-batch."""
    g = torch.Generator().manual_seed(seed * 1_000_033 + step * 7_919 + micro * 31 + 17)
    offsets = torch.randint(0, 2 * pad + 1, (global_batch, cameras, 2), generator=g)
    return offsets[torch.as_tensor(list(rows))]


def shift_images(images: torch.Tensor, offsets: torch.Tensor, pad: int) -> torch.Tensor:
    """``images`` [b, cameras, C, H, W] (any dtype) shifted by ``offsets`` [b, cameras, 2]: padded by
    ``pad`` with the edge pixels, then cropped at (offset_row, offset_col). Offset (pad, pad) is the
    identity."""
    if images.dim() != 5 or offsets.shape != (*images.shape[:2], 2):
        raise ValueError(f"images {tuple(images.shape)} and offsets {tuple(offsets.shape)}: expected "
                         "[b, cameras, C, H, W] and [b, cameras, 2]")
    if pad <= 0:
        return images
    b, n, c, h, w = images.shape
    flat = images.reshape(b * n, c, h, w)
    padded = F.pad(flat.float(), (pad, pad, pad, pad), mode="replicate").to(images.dtype)
    out = torch.empty_like(flat)
    for i, (dy, dx) in enumerate(offsets.reshape(b * n, 2).tolist()):
        out[i] = padded[i, :, dy:dy + h, dx:dx + w]
    return out.reshape(b, n, c, h, w)
