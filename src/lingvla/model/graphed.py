"""Chunk sampling replayed as one CUDA graph: the vision tower, the prefix K/V fill, the suffix
plan and every Euler step are captured once per input shape and replayed, so a chunk costs one
graph launch instead of thousands of kernel launches from Python.

At batch 1 the 4B model's chunk is launch-bound when run eagerly: each of the 10 denoising steps
runs 36 expert layers of a dozen small kernels. Tokenization stays on the host. The vision tower
is captured when it runs on its fixed grid (vision.py); transformers' own vision forward reads
grid sizes on the host, so with it the graph starts after the vision tower.

The replayed part reads only fixed buffers: the inputs are copied into them before each replay,
and the chunk is copied out after. `use_graphs=False` runs the same buffer path eagerly (on CPU
too), which is what the graph is checked against.

`compile_layers=True` also runs the joint layers (and the fixed-grid vision blocks) through
torch.compile before the capture, so the graph replays inductor's fused kernels instead of the
many small elementwise kernels of RMSNorm, RoPE and the casts around each matmul.
`fuse_expert=True` runs each denoising step on the expert's weights concatenated once per replay
(expert.FusedExpert): one q|k|v and one gate|up matmul per layer, and one matmul for the time
modulation of every layer's norms.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lingvla.model import sampling
from lingvla.model.lingvla import LingVLA, Prefix


def compile_for_inference(model: LingVLA) -> None:
    """torch.compile the joint layers and, on the fixed grid, the vision blocks, in place.

    Identical layers share one compiled graph per call signature (prefix fill, suffix step;
    windowed or full vision block). Compilation happens on the first call, so a CUDA graph must
    be captured after a warm-up call (GraphedSampler does this). Calling it twice is harmless.
    """
    modules = list(model.layers)
    if model.vision.fixed is not None:
        modules += list(model.vision.visual.blocks)
    for module in modules:
        if getattr(module, "_compiled_call_impl", None) is None:
            module.compile(dynamic=False)


@dataclass
class _Slot:
    """The input buffers, and the graph once captured, of one input shape. With the vision tower
    outside the graph, `images` holds the embedded prefix tokens and `image_mask` its validity."""

    images: torch.Tensor
    image_mask: torch.Tensor
    tokens: torch.Tensor
    token_mask: torch.Tensor
    state: torch.Tensor
    dim_mask: torch.Tensor
    noise: torch.Tensor
    out: torch.Tensor | None = None
    graph: object | None = None


class GraphedSampler:
    """`sample(batch, noise)` == `model.sample_actions(batch, noise)`, replayed from a CUDA graph.

    The model's weights must not be replaced after the first call (a graph holds their
    addresses); in-place updates (`load_state_dict`) are seen. Flex attention builds its block mask
    on the host, so the graphed path needs the sdpa backend.
    """

    def __init__(self, model: LingVLA, num_steps: int | None = None, use_graphs: bool | None = None,
                 compile_layers: bool = False, fuse_expert: bool = False):
        if model.config.attn_backend != "sdpa":
            raise ValueError(f"CUDA-graph sampling needs attn_backend='sdpa'; the model uses "
                             f"{model.config.attn_backend!r} (flex builds its block mask on the host)")
        if model.training:
            raise ValueError("CUDA-graph sampling is for inference: call model.eval() first")
        self.model = model
        self.num_steps = num_steps or model.config.num_steps
        if use_graphs is None:
            use_graphs = model.device.type == "cuda"
        if use_graphs and model.device.type != "cuda":
            raise ValueError(f"CUDA graphs need the model on a CUDA device; it is on {model.device}")
        self.use_graphs = use_graphs
        self.whole = model.vision.fixed is not None  # the vision tower inside the graph
        self.fuse_expert = fuse_expert
        if compile_layers:
            compile_for_inference(model)
        self.slots: dict[tuple, _Slot] = {}
        self.pool = None

    # ------------------------------------------------------------------------------------------
    def _replayed(self, slot: _Slot) -> torch.Tensor:
        """The part a graph holds: reads only the slot's buffers."""
        model = self.model
        if self.whole:
            prefix = model.embed_prefix(slot.images, slot.image_mask, slot.tokens, slot.token_mask)
        else:
            kind, cam = model._prefix_layout(model.config.num_cameras, slot.tokens.shape[1], slot.images.device)
            prefix = Prefix(slot.images, slot.image_mask, kind, cam, model.config.depth.enabled)
        velocity = model.cached_velocity(prefix, slot.state, slot.dim_mask, fuse_expert=self.fuse_expert)
        return sampling.euler_sample(velocity, slot.noise, self.num_steps)

    def _inputs(self, batch: dict, noise: torch.Tensor) -> dict[str, torch.Tensor]:
        model = self.model
        inputs = model.prepare(batch, train=False)
        out = {"tokens": inputs["tokens"], "token_mask": inputs["token_mask"], "state": inputs["state"],
               "dim_mask": inputs["action_dim_mask"], "noise": noise}
        if self.whole:
            out["images"], out["image_mask"] = inputs["images"], inputs["image_mask"]
        else:
            prefix = model.embed_prefix(inputs["images"], inputs["image_mask"], inputs["tokens"],
                                        inputs["token_mask"])
            out["images"], out["image_mask"] = prefix.tokens, prefix.valid
        return out

    def _capture(self, slot: _Slot) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: lazy library init must not happen in capture
            for _ in range(2):
                self._replayed(slot)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        with torch.cuda.graph(graph, pool=self.pool):
            slot.out = self._replayed(slot)
        slot.graph = graph

    @torch.no_grad()
    def sample(self, batch: dict, noise: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Denoise a chunk -> actions [B, chunk_size, action_dim] (normalized, padded space)."""
        model = self.model
        if noise is None:
            noise = model.initial_noise(len(batch["prompt"]), generator)
        inputs = self._inputs(batch, noise.to(model.device, model.dtype))
        key = tuple((name, tuple(value.shape), value.dtype) for name, value in inputs.items())
        slot = self.slots.get(key)
        if slot is None:
            slot = self.slots[key] = _Slot(**{name: torch.empty_like(value) for name, value in inputs.items()})
        for name, value in inputs.items():
            getattr(slot, name).copy_(value)
        if not self.use_graphs:
            return self._replayed(slot)
        if slot.graph is None:
            self._capture(slot)
        slot.graph.replay()
        return slot.out.clone()
