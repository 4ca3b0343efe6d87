"""Depth distillation: learnable queries inside the VLM aligned to a depth teacher's tokens.

    depth_embeddings [num_latents, H]  (a registered parameter - the released code loses it)
      -> mean-pooled in groups -> num_queries query tokens inserted after each camera's image tokens
      -> the VLM stream processes them under the query mask rules (attention.py)
    DepthAlignHead: a one-layer Perceiver resampler; latents = depth_embeddings, context = each
      camera's final [image tokens + query outputs]; projected to the teacher's width
      (depth.head: released - the released model's head structure instead, ReleasedDepthHead,
      whose checkpoint tensors then load one to one)
    loss = smooth-L1(head, teacher tokens), over present cameras, times depth.loss_weight

Teachers share one small interface - teacher(x) -> tokens [B, C, N, D] without gradients - and are
only needed in training (or once, to precompute targets): inference never runs one.
  SimDepthTeacher: true depth maps (the simulator renders them) through a fixed, frozen encoder.
  HFDepthTeacher:  a transformers depth-estimation model from a local directory; its backbone's
                   patch tokens are the targets.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lingvla.config import DepthConfig


class DepthAlignHead(nn.Module):
    def __init__(self, hidden: int, teacher_dim: int, heads: int):
        super().__init__()
        self.norm_latents = nn.LayerNorm(hidden)
        self.norm_context = nn.LayerNorm(hidden)
        self.attn = nn.MultiheadAttention(hidden, heads, batch_first=True)
        self.norm_mlp = nn.LayerNorm(hidden)
        self.mlp = nn.Sequential(nn.Linear(hidden, 4 * hidden), nn.GELU(), nn.Linear(4 * hidden, hidden))
        self.proj = nn.Linear(hidden, teacher_dim)

    def forward(self, latents: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """latents [N, H], context [M, L, H] (one row per camera image) -> [M, N, teacher_dim]."""
        x = latents[None].expand(context.shape[0], -1, -1).to(context.dtype)
        kv = self.norm_context(context)
        x = x + self.attn(self.norm_latents(x), kv, kv, need_weights=False)[0]
        x = x + self.mlp(self.norm_mlp(x))
        return self.proj(x)


class ReleasedPerceiverAttention(nn.Module):
    """Latents attend to [context, latents] (the released depth head's block): pre-norms, q from the
    latents, k/v from both, no biases, scaled dot-product attention over `heads` heads."""

    def __init__(self, dim: int, inner: int, heads: int):
        super().__init__()
        if inner % heads:
            raise ValueError(f"depth head width {inner} must divide into {heads} heads")
        self.heads = heads
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, context: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        context, latents = self.norm_media(context), self.norm_latents(latents)
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat([context, latents], dim=1)).chunk(2, dim=-1)
        b, n, inner = q.shape
        q, k, v = (t.view(b, t.shape[1], self.heads, inner // self.heads).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, n, inner))


class ReleasedDepthProjector(nn.Module):
    """The released LingBot-VLA depth head's structure (`projector.*`: proj_in1 on the queries,
    proj_in2 on the context, `layers` of [attention, feed-forward] with residuals, proj_out,
    norm_out), so its checkpoint's tensors load one to one (depth.head: released)."""

    def __init__(self, hidden: int, teacher_dim: int, heads: int, inner: int, layers: int, ff_mult: int):
        super().__init__()
        self.proj_in1 = nn.Linear(hidden, hidden)
        self.proj_in2 = nn.Linear(hidden, hidden)
        self.layers = nn.ModuleList(
            nn.ModuleList([ReleasedPerceiverAttention(hidden, inner, heads),
                           nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, hidden * ff_mult, bias=False),
                                         nn.GELU(), nn.Linear(hidden * ff_mult, hidden, bias=False))])
            for _ in range(layers))
        self.proj_out = nn.Linear(hidden, teacher_dim)
        self.norm_out = nn.LayerNorm(teacher_dim)

    def forward(self, context: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        queries, context = self.proj_in1(queries), self.proj_in2(context)
        for attn, ff in self.layers:
            queries = attn(context, queries) + queries
            queries = ff(queries) + queries
        return self.norm_out(self.proj_out(queries))


class ReleasedDepthHead(nn.Module):
    """DepthAlignHead's interface around the released structure (tensors under `projector.`)."""

    def __init__(self, hidden: int, teacher_dim: int, heads: int, inner: int, layers: int, ff_mult: int):
        super().__init__()
        self.projector = ReleasedDepthProjector(hidden, teacher_dim, heads, inner, layers, ff_mult)

    def forward(self, latents: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        queries = latents[None].expand(context.shape[0], -1, -1).to(context.dtype)
        return self.projector(context, queries)


def make_depth_head(hidden: int, depth: DepthConfig) -> nn.Module:
    if depth.head == "released":
        return ReleasedDepthHead(hidden, depth.teacher_dim, depth.head_heads, depth.head_inner,
                                 depth.head_layers, depth.head_ff_mult)
    return DepthAlignHead(hidden, depth.teacher_dim, depth.head_heads)


def pooled_queries(embeddings: torch.Tensor, num_queries: int) -> torch.Tensor:
    """[num_latents, H] -> [num_queries, H]: the mean of each consecutive group."""
    n, h = embeddings.shape
    return embeddings.view(num_queries, n // num_queries, h).mean(1)


def depth_loss(pred: torch.Tensor, target: torch.Tensor, camera_mask: torch.Tensor) -> torch.Tensor:
    """Smooth-L1 over present cameras. pred/target [B, C, N, D], camera_mask bool [B, C]."""
    if pred.shape != target.shape:
        raise ValueError(f"depth_targets must be [B, C, N, D] = {tuple(pred.shape)} (depth.num_latents "
                         f"tokens of width depth.teacher_dim); got {tuple(target.shape)}")
    err = F.smooth_l1_loss(pred.float(), target.float(), reduction="none").mean(dim=(2, 3))
    weight = camera_mask.float()
    return (err * weight).sum() / weight.sum().clamp(min=1.0)


class SimDepthTeacher(nn.Module):
    """True depth maps -> tokens through a fixed random encoder (frozen, seeded, no training).

    The map is cut into grid x grid patches; each patch (log-depth, clipped to `max_depth`) is
    projected by a fixed orthogonal matrix and a tanh. Cheap enough for every training step on CPU.
    """

    def __init__(self, dim: int, grid: int = 16, patch: int = 8, max_depth: float = 5.0, seed: int = 0):
        super().__init__()
        self.dim, self.grid, self.patch, self.max_depth = dim, grid, patch, max_depth
        g = torch.Generator().manual_seed(seed)
        weight = torch.linalg.qr(torch.randn(max(dim, patch * patch), max(dim, patch * patch), generator=g))[0]
        self.register_buffer("weight", weight[:patch * patch, :dim].contiguous() * (patch * patch) ** 0.5)
        self.requires_grad_(False)

    @property
    def num_tokens(self) -> int:
        return self.grid * self.grid

    @torch.no_grad()
    def forward(self, depth: torch.Tensor) -> torch.Tensor:
        """depth float [B, C, H, W] in metres -> tokens [B, C, grid^2, dim]."""
        if depth.ndim != 4:
            raise ValueError(f"sim-depth teacher takes depth maps [B, C, H, W]; got {tuple(depth.shape)}")
        b, c = depth.shape[:2]
        side = self.grid * self.patch
        x = depth.float().flatten(0, 1)[:, None].clamp(1e-3, self.max_depth).log()
        x = F.interpolate(x, size=(side, side), mode="area")
        x = F.unfold(x, kernel_size=self.patch, stride=self.patch).transpose(1, 2)  # [BC, N, p*p]
        return torch.tanh(x @ self.weight).view(b, c, self.num_tokens, self.dim)


class HFDepthTeacher(nn.Module):
    """A transformers depth-estimation model (e.g. Depth Anything) from a local directory; its
    backbone's last patch tokens (class token dropped) are the targets."""

    MEAN = (0.485, 0.456, 0.406)
    STD = (0.229, 0.224, 0.225)

    def __init__(self, path_or_model, image_size: int | None = None):
        super().__init__()
        if isinstance(path_or_model, (str, Path)):
            from transformers import AutoModelForDepthEstimation

            path = Path(path_or_model)
            if not (path / "config.json").is_file():
                raise FileNotFoundError(f"{path} is not a local depth-estimation model directory "
                                        "(no config.json); nothing is downloaded")
            path_or_model = AutoModelForDepthEstimation.from_pretrained(str(path), local_files_only=True)
        self.model = path_or_model.eval().requires_grad_(False)
        backbone_config = self.model.config.backbone_config
        self.patch = backbone_config.patch_size
        self.dim = backbone_config.hidden_size
        self.image_size = image_size or backbone_config.image_size
        if self.image_size % self.patch:
            raise ValueError(f"teacher image_size={self.image_size} must be a multiple of its patch {self.patch}")
        self.register_buffer("mean", torch.tensor(self.MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.STD).view(1, 3, 1, 1), persistent=False)

    @property
    def num_tokens(self) -> int:
        return (self.image_size // self.patch) ** 2

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images [B, C, 3, H, W] -> tokens [B, C, N, dim]."""
        b, c = images.shape[:2]
        x = images.flatten(0, 1).float() / 255.0
        x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        x = (x - self.mean) / self.std
        out = self.model.backbone.forward_with_filtered_kwargs(x, output_hidden_states=True) \
            if hasattr(self.model.backbone, "forward_with_filtered_kwargs") else \
            self.model.backbone(x, output_hidden_states=True)
        tokens = out.hidden_states[-1][:, 1:1 + self.num_tokens]
        return tokens.reshape(b, c, self.num_tokens, -1)


def make_teacher(name: str, depth: DepthConfig, path: str | None = None) -> nn.Module:
    """'sim-depth' (embedded default) or 'hf-depth' (needs a local model directory)."""
    if name == "sim-depth":
        grid = int(round(depth.num_latents ** 0.5))
        if grid * grid != depth.num_latents:
            raise ValueError(f"sim-depth makes grid x grid tokens: depth.num_latents={depth.num_latents} "
                             "must be a square")
        return SimDepthTeacher(depth.teacher_dim, grid=grid)
    if name == "hf-depth":
        if not path:
            raise ValueError("the hf-depth teacher needs the path of a local depth model directory")
        teacher = HFDepthTeacher(path)
        if (teacher.num_tokens, teacher.dim) != (depth.num_latents, depth.teacher_dim):
            raise ValueError(f"teacher gives {teacher.num_tokens} tokens x {teacher.dim}; set "
                             f"depth.num_latents={teacher.num_tokens} and depth.teacher_dim={teacher.dim}")
        return teacher
    raise ValueError(f"unknown depth teacher {name!r}; expected 'sim-depth' or 'hf-depth'")
