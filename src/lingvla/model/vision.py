"""The Qwen2.5-VL vision tower on a fixed image grid: batched, with no host round trips.

transformers' forward serves any mix of image sizes: it builds the window order and the rotary
table on the host for every call, and outside flash-attention it runs one attention call per
window and per image in a Python loop (a 224 px image has 4 windows; a training batch of 16
samples x 3 cameras makes 192 attention calls in each of the 28 windowed blocks). Every image here
has the same size, so the layout is computed once per device and every block runs one batched
attention over [images x windows].

Same weights, same math (tested against transformers' forward); each block still runs through
its own module call, so FSDP's hooks and the parameter names are unchanged.
"""

from __future__ import annotations

import types
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lingvla.model.mot import apply_rope


@dataclass
class GridLayout:
    """Window-major token order of one image and what the blocks need, on one device.

    unit_order [U]: merge units (2x2 patches) in window order; restore [U]: its inverse;
    cos/sin [T, head_dim] float32 in window order; window_len: tokens per window when all windows
    have the same size (batched by reshape), else window_mask [T, T] (block diagonal).
    """

    unit_order: torch.Tensor
    restore: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor
    window_len: int | None
    window_mask: torch.Tensor | None


def grid_layout(grid: int, merge: int, window_units: int, head_dim: int, theta: float = 10000.0,
                device: torch.device | str = "cpu") -> GridLayout:
    """The layout of a grid x grid patch image (merge x merge patches per unit, windows of
    window_units x window_units units, row-major over windows and within each)."""
    units = grid // merge
    index = torch.arange(units * units).view(units, units)
    windows = [index[i:i + window_units, j:j + window_units].flatten()
               for i in range(0, units, window_units) for j in range(0, units, window_units)]
    unit_order = torch.cat(windows)
    sizes = [len(w) * merge * merge for w in windows]
    # Rotary positions: each patch's (row, column), patches ordered unit by unit.
    rows = torch.arange(grid)[:, None].expand(grid, grid)
    cols = torch.arange(grid)[None, :].expand(grid, grid)

    def unit_major(pos: torch.Tensor) -> torch.Tensor:
        return pos.reshape(units, merge, units, merge).transpose(1, 2).reshape(units * units, merge * merge)

    rows, cols = unit_major(rows)[unit_order].flatten(), unit_major(cols)[unit_order].flatten()
    spatial = head_dim // 2
    inv_freq = 1.0 / (theta ** (torch.arange(0, spatial, 2, dtype=torch.float32) / spatial))
    angles = torch.cat([rows[:, None] * inv_freq, cols[:, None] * inv_freq], dim=-1)
    angles = torch.cat([angles, angles], dim=-1)
    window_len, window_mask = sizes[0], None
    if len(set(sizes)) > 1:
        ids = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
        window_len, window_mask = None, (ids[:, None] == ids[None, :]).to(device)
    return GridLayout(unit_order.to(device), torch.argsort(unit_order).to(device), angles.cos().to(device),
                      angles.sin().to(device), window_len, window_mask)


def _block_forward(self: nn.Module, x: torch.Tensor, layout: GridLayout, windowed: bool) -> torch.Tensor:
    """One Qwen2.5-VL vision block on x [N, T, C] (window-major tokens of N same-size images)."""
    n, t, c = x.shape
    attn = self.attn
    heads = attn.num_heads
    qkv = attn.qkv(self.norm1(x)).view(n, t, 3, heads, -1)
    q, k, v = qkv.unbind(2)  # [N, T, heads, d]
    cos, sin = layout.cos[:, None], layout.sin[:, None]
    dtype = q.dtype
    q, k = apply_rope(q.float(), cos, sin).to(dtype), apply_rope(k.float(), cos, sin).to(dtype)
    mask = None
    if windowed and layout.window_len is not None and layout.window_len < t:
        q, k, v = (z.reshape(n * (t // layout.window_len), layout.window_len, heads, -1) for z in (q, k, v))
    elif windowed:
        mask = layout.window_mask
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         attn_mask=mask)
    x = x + attn.proj(out.transpose(1, 2).reshape(n, t, c))
    return x + self.mlp(self.norm2(x))


class FixedGridVision:
    """Runs `visual` (a transformers Qwen2.5-VL vision tower) on same-size images, batched."""

    REQUIRED = ("patch_embed", "blocks", "merger", "fullatt_block_indexes", "window_size",
                "spatial_merge_size", "patch_size")

    def __init__(self, visual: nn.Module, grid: int):
        self.supported = all(hasattr(visual, name) for name in self.REQUIRED) and all(
            hasattr(blk, "attn") and hasattr(blk.attn, "qkv") and hasattr(blk.attn, "num_heads")
            for blk in visual.blocks)
        self.grid = grid
        self.layouts: dict[torch.device, GridLayout] = {}
        if self.supported:
            self.install(visual)

    @staticmethod
    def install(visual: nn.Module) -> None:
        for blk in visual.blocks:  # the block's own call (hooks, names) with our forward
            blk.forward = types.MethodType(_block_forward, blk)

    @staticmethod
    def uninstall(visual: nn.Module) -> None:
        for blk in visual.blocks:
            blk.__dict__.pop("forward", None)

    def layout(self, visual: nn.Module, device: torch.device) -> GridLayout:
        if device not in self.layouts:
            merge = visual.spatial_merge_size
            window_units = max(1, visual.window_size // merge // visual.patch_size)
            head_dim = visual.blocks[0].attn.qkv.in_features // visual.blocks[0].attn.num_heads
            self.layouts[device] = grid_layout(self.grid, merge, window_units, head_dim, device=device)
        return self.layouts[device]

    def __call__(self, visual: nn.Module, patches: torch.Tensor, num_images: int) -> torch.Tensor:
        """patches [N * grid^2, patch_dim] (image processor order) -> merged tokens [N, U, out]."""
        layout = self.layout(visual, patches.device)
        x = visual.patch_embed(patches)
        unit = visual.spatial_merge_size ** 2
        units = self.grid * self.grid // unit
        x = x.view(num_images, units, unit, -1)[:, layout.unit_order].reshape(num_images, units * unit, -1)
        full = set(visual.fullatt_block_indexes)
        for i, blk in enumerate(visual.blocks):
            x = blk(x, layout, i not in full)
        merged = visual.merger(x.reshape(num_images * units * unit, -1)).view(num_images, units, -1)
        return merged[:, layout.restore]
