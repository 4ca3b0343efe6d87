"""LingVLA: the policy network. `compute_loss(batch)` for training, `sample_actions(batch)` for
inference with the prefix's per-layer K/V computed once and reused by every denoising step.

Sequence: prefix = [camera tokens (C x tokens_per_image), prompt tokens]; suffix = [state token,
chunk_size action tokens]. Works in the normalized, padded action space of the batch contract
(lingvla/batch.py); normalization lives with the data code.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lingvla.batch import check_batch
from lingvla.config import ModelConfig
from lingvla.model import flow
from lingvla.model.attention import (ACTION_BLOCK, DEPTH_QUERY, ORDINARY, PREFIX_BLOCK, STATE_BLOCK,
                                     QueryGroups, build_mask)
from lingvla.model.backbone import ImageEncoder, VLMParts, build_vlm, config_from_pretrained, load_vlm
from lingvla.model.depth import depth_loss, make_depth_head, pooled_queries
from lingvla.model.expert import ExpertLayer, FusedExpert, RMSNorm, time_embedding
from lingvla.model.mot import MoTLayer, rope_cos_sin
from lingvla.model.tokenizer import PromptTokenizer, load_tokenizer


PrefixCache = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Prefix:
    """The embedded prefix and its layout.

    tokens [B, L, H]; valid bool [B, L]; kind [L] (ordinary / depth query) and cam [L] (camera of
    image tokens and depth queries, -1 for text), both the same for every sample. Depth queries
    take no position of their own (they reuse the previous token's), so the image and text
    numbering is that of the model without depth.
    """

    tokens: torch.Tensor
    valid: torch.Tensor
    kind: torch.Tensor
    cam: torch.Tensor
    has_queries: bool

    @property
    def positions(self) -> torch.Tensor:
        counted = self.valid & (self.kind == ORDINARY)[None]
        return (counted.long().cumsum(1) - 1).clamp(min=0)

    @property
    def num_positions(self) -> torch.Tensor:
        """[B, 1]: positions used, where the suffix's numbering starts."""
        return (self.valid & (self.kind == ORDINARY)[None]).long().sum(1, keepdim=True)


@contextlib.contextmanager
def empty_parameters():
    """Create parameters on the meta device (no memory, no init) while buffers stay real.

    Loading a checkpoint then assigns real tensors; non-persistent buffers (RoPE tables, pixel
    mean/std) keep the values their modules computed at construction.
    """
    original = nn.Module.register_parameter

    def register_parameter(module, name, param):
        if param is not None and not param.is_meta:
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        original(module, name, param)

    nn.Module.register_parameter = register_parameter
    try:
        yield
    finally:
        nn.Module.register_parameter = original


class LingVLA(nn.Module):
    def __init__(self, config: ModelConfig, vlm: VLMParts | None = None, tokenizer=None):
        super().__init__()
        self.config = config
        if vlm is None:
            vlm = build_vlm(config)
        llm, hidden = config.llm, config.expert.hidden_size
        self.vision = ImageEncoder(vlm.visual, config.vision, config.image_size)
        self.embed_tokens = vlm.embed_tokens
        self.layers = nn.ModuleList(
            MoTLayer(vlm.layers[i], ExpertLayer(config), llm.num_heads, llm.num_kv_heads, llm.head_dim,
                     attention_fp32=config.attention_fp32)
            for i in range(llm.num_layers))
        self.vlm_norm = vlm.norm
        self.expert_norm = RMSNorm(hidden, llm.rms_norm_eps)
        d = config.action_dim
        self.state_proj = nn.Linear(d, hidden)
        self.action_in_proj = nn.Linear(d, hidden)
        self.action_out_proj = nn.Linear(hidden, d)
        self.action_time_mlp_in = nn.Linear(2 * hidden, hidden)
        self.action_time_mlp_out = nn.Linear(hidden, hidden)
        depth = config.depth
        if depth.enabled:
            self.depth_embeddings = nn.Parameter(torch.empty(depth.num_latents, llm.hidden_size))
            self.depth_align_head = make_depth_head(llm.hidden_size, depth)
        self._init_own_weights()
        self._layouts: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        if tokenizer is None:
            tokenizer = load_tokenizer(config.tokenizer or config.vlm_path)
        self.prompt_tokenizer = PromptTokenizer(tokenizer, config.max_token_len, llm.vocab_size)

    def _init_own_weights(self) -> None:
        """The expert and the action/state heads (the VLM parts come initialised or pretrained)."""
        if any(p.is_meta for p in self.state_proj.parameters()):
            return
        for module in [*(layer.expert for layer in self.layers), self.state_proj, self.action_in_proj,
                       self.action_out_proj, self.action_time_mlp_in, self.action_time_mlp_out]:
            for sub in module.modules():
                if isinstance(sub, nn.Linear):
                    nn.init.normal_(sub.weight, std=self.config.initializer_range)
                    if sub.bias is not None:
                        nn.init.zeros_(sub.bias)
        for layer in self.layers:
            layer.expert.input_layernorm.reset_parameters()
            layer.expert.post_attention_layernorm.reset_parameters()
        if self.config.depth.enabled:
            nn.init.normal_(self.depth_embeddings, std=self.config.initializer_range)

    def unused_parameter_names(self) -> list[str]:
        """Parameters the action loss cannot reach: in the last layer the suffix reads only the
        prefix's keys and values, so the VLM stream's queries, o_proj, post-attention norm and MLP
        there, and its final norm, feed nothing. The trainer freezes them (no gradients, no
        optimizer state). With depth distillation on, the depth head reads those states: none."""
        if self.config.depth.enabled:
            return []
        last = len(self.layers) - 1
        vlm = self.layers[last].vlm
        names = [f"layers.{last}.vlm.{n}" for n, _ in vlm.named_parameters()
                 if not n.startswith(("self_attn.k_proj", "self_attn.v_proj", "input_layernorm"))]
        return names + [f"vlm_norm.{n}" for n, _ in self.vlm_norm.named_parameters()]

    # ----------------------------------------------------------------------------------- inputs
    @property
    def device(self) -> torch.device:
        return self.state_proj.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.state_proj.weight.dtype

    def prepare(self, batch: dict, train: bool) -> dict:
        """Validate a batch-contract dict, tokenize prompts, move everything to the model."""
        c = self.config
        check_batch(batch, num_cameras=c.num_cameras, image_size=c.image_size,
                    action_dim=c.action_dim, chunk_size=c.chunk_size if train else None, train=train)
        tokens, token_mask = self.prompt_tokenizer(list(batch["prompt"]))
        out = {"tokens": tokens, "token_mask": token_mask}
        for key in ("images", "image_mask", "state", "actions", "action_dim_mask", "action_is_pad",
                    "depth_targets"):
            if key in batch:
                out[key] = batch[key]
        out = {k: v.to(self.device, non_blocking=True) for k, v in out.items()}
        for key in ("state", "actions"):
            if key in out:
                out[key] = out[key].to(self.dtype)
        for key in ("image_mask", "token_mask", "action_dim_mask", "action_is_pad"):
            if key in out:
                out[key] = out[key].bool()
        return out

    def embed_prefix(self, images: torch.Tensor, image_mask: torch.Tensor, tokens: torch.Tensor,
                     token_mask: torch.Tensor) -> Prefix:
        """[camera 1 tokens (+ depth queries), camera 2 ..., prompt tokens] -> Prefix."""
        c = self.config
        n = c.tokens_per_image
        image_tokens = self.vision(images)
        text = self.embed_tokens(tokens)
        b, cams = image_mask.shape
        image_tokens = image_tokens.to(text.dtype).view(b, cams, n, -1)
        image_valid = image_mask[:, :, None].expand(b, cams, n)
        device = image_mask.device
        if c.depth.enabled:
            q = c.depth.num_queries
            queries = pooled_queries(self.depth_embeddings, q).to(text.dtype)
            image_tokens = torch.cat([image_tokens, queries[None, None].expand(b, cams, q, -1)], dim=2)
            image_valid = image_mask[:, :, None].expand(b, cams, n + q)
        kind, cam = self._prefix_layout(cams, tokens.shape[1], device)
        prefix = torch.cat([image_tokens.flatten(1, 2), text], dim=1)
        valid = torch.cat([image_valid.flatten(1, 2), token_mask], dim=1)
        return Prefix(prefix, valid, kind, cam, c.depth.enabled)

    def _prefix_layout(self, cams: int, text_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """kind [L] and cam [L] of the prefix, built once per shape and device (no host copies in
        later calls, so a CUDA graph can hold embed_prefix)."""
        key = (cams, text_len, device)
        cached = self._layouts.get(key)
        if cached is None:
            c = self.config
            per_cam = torch.full((c.tokens_per_image,), ORDINARY)
            if c.depth.enabled:
                per_cam = torch.cat([per_cam, torch.full((c.depth.num_queries,), DEPTH_QUERY)])
            kind = torch.cat([per_cam.repeat(cams), torch.full((text_len,), ORDINARY)]).to(device)
            cam = torch.cat([torch.arange(cams).repeat_interleave(len(per_cam)),
                             torch.full((text_len,), -1)]).to(device)
            cached = self._layouts[key] = (kind, cam)
        return cached

    def embed_suffix(self, state: torch.Tensor, noisy_actions: torch.Tensor, t: torch.Tensor,
                     dim_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """state [B, D], noisy_actions [B, T, D], t [B], dim_mask bool [B, D]
        -> suffix [B, 1+T, He], cond [B, He].

        Padded dims are zeroed on the way in, so whatever a dataset or the noise puts there cannot
        influence the robot's real dims (in training or at inference).
        """
        c = self.config
        cond = time_embedding(t, c.expert.hidden_size, c.time_min_period, c.time_max_period)
        cond = cond.to(self.dtype)
        keep = dim_mask.to(self.dtype)
        state_token = self.state_proj(state * keep)[:, None]
        actions = self.action_in_proj(noisy_actions * keep[:, None, :])
        time_tokens = cond[:, None].expand(-1, actions.shape[1], -1)
        fused = self.action_time_mlp_in(torch.cat([actions, time_tokens], dim=-1))
        actions = self.action_time_mlp_out(F.silu(fused))
        return torch.cat([state_token, actions], dim=1), cond

    def _suffix_blocks(self, batch: int, length: int) -> torch.Tensor:
        blocks = torch.full((batch, length), ACTION_BLOCK, dtype=torch.long, device=self.device)
        blocks[:, 0] = STATE_BLOCK
        return blocks

    def _rope(self, positions: torch.Tensor):
        return rope_cos_sin(positions, self.config.llm.head_dim, self.config.rope_theta, self.dtype)

    # ------------------------------------------------------------------------------- forwards
    def forward_joint(self, prefix: Prefix, suffix: torch.Tensor,
                      cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass over [prefix | suffix] with the blockwise mask -> final hidden states of both
        streams (VLM stream before its final norm; expert stream after its final norm)."""
        b, ls = suffix.shape[:2]
        suffix_blocks = self._suffix_blocks(b, ls)
        blocks = torch.cat([torch.full_like(prefix.valid, PREFIX_BLOCK, dtype=torch.long),
                            suffix_blocks], dim=1)
        valid = torch.cat([prefix.valid, torch.ones_like(suffix_blocks, dtype=torch.bool)], dim=1)
        positions = torch.cat([prefix.positions, prefix.num_positions + torch.arange(ls, device=self.device)], 1)
        groups = None
        if prefix.has_queries:
            kind = torch.cat([prefix.kind, torch.full((ls,), ORDINARY, device=self.device)])
            cam = torch.cat([prefix.cam, torch.full((ls,), -1, device=self.device)])
            groups = QueryGroups(kind, cam, kind, cam)
        mask = build_mask(blocks, blocks, valid, self.config.attn_backend, groups)
        cos, sin = self._rope(positions)
        tokens = prefix.tokens
        for layer in self.layers:
            tokens, suffix, _ = layer(tokens, suffix, cond, cos, sin, mask)
        return tokens, self.expert_norm(suffix)

    def fill_prefix_cache(self, prefix: Prefix) -> PrefixCache:
        """Run the VLM stream alone over the prefix; return each layer's post-RoPE K/V."""
        blocks = torch.full_like(prefix.valid, PREFIX_BLOCK, dtype=torch.long)
        groups = QueryGroups(prefix.kind, prefix.cam, prefix.kind, prefix.cam) if prefix.has_queries else None
        mask = build_mask(blocks, blocks, prefix.valid, self.config.attn_backend, groups)
        cos, sin = self._rope(prefix.positions)
        cache: PrefixCache = []
        tokens = prefix.tokens
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            # The last layer's prefix output is never read: only its K/V are needed.
            out, _, kv = layer(tokens, None, None, cos, sin, mask)
            cache.append(kv)
            if i < last:
                tokens = out
        return cache

    def plan_suffix(self, prefix: Prefix, length: int):
        """Mask and RoPE tables for suffix-only passes against a cached prefix (the same for
        every denoising step, so built once per chunk). Suffix rows see every valid prefix token,
        depth queries included, so the plain block rule is the whole rule here."""
        b = prefix.valid.shape[0]
        suffix_blocks = self._suffix_blocks(b, length)
        blocks_k = torch.cat([torch.full_like(prefix.valid, PREFIX_BLOCK, dtype=torch.long),
                              suffix_blocks], dim=1)
        valid_k = torch.cat([prefix.valid, torch.ones_like(suffix_blocks, dtype=torch.bool)], dim=1)
        positions = prefix.num_positions + torch.arange(length, device=self.device)[None]
        mask = build_mask(suffix_blocks, blocks_k, valid_k, self.config.attn_backend)
        return (mask, *self._rope(positions))

    def forward_suffix(self, cache: PrefixCache, plan, suffix: torch.Tensor,
                       cond: torch.Tensor, fused: FusedExpert | None = None) -> torch.Tensor:
        """The expert stream alone against the cached prefix -> final-normed suffix states.
        fused: the expert's weights concatenated (FusedExpert): the same layers in fewer matmuls."""
        mask, cos, sin = plan
        mods = fused.modulations(cond) if fused is not None else None
        for i, (layer, kv) in enumerate(zip(self.layers, cache)):
            _, suffix, _ = layer(None, suffix, cond, cos, sin, mask, prefix_kv=kv,
                                 fused=fused.layer(i, mods) if fused is not None else None)
        return self.expert_norm(suffix)

    def depth_predictions(self, prefix: Prefix, prefix_out: torch.Tensor) -> torch.Tensor:
        """Final VLM states of each camera's [image tokens + queries] -> [B, C, N, teacher_dim]."""
        c = self.config
        per_cam = c.tokens_per_image + c.depth.num_queries
        cams = c.num_cameras
        states = self.vlm_norm(prefix_out[:, :cams * per_cam])
        b = states.shape[0]
        context = states.reshape(b * cams, per_cam, -1)
        pred = self.depth_align_head(self.depth_embeddings, context)
        return pred.view(b, cams, c.depth.num_latents, -1)

    def velocity_from_suffix(self, suffix_out: torch.Tensor) -> torch.Tensor:
        return self.action_out_proj(suffix_out[:, 1:])

    # ----------------------------------------------------------------------------- training
    def forward(self, batch: dict, noise: torch.Tensor | None = None, t: torch.Tensor | None = None,
                generator: torch.Generator | None = None,
                state_keep: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        """The training forward is the loss (so FSDP's root hooks wrap it): see compute_loss."""
        return self.compute_loss(batch, noise=noise, t=t, generator=generator, state_keep=state_keep)

    def compute_loss(self, batch: dict, noise: torch.Tensor | None = None,
                     t: torch.Tensor | None = None, generator: torch.Generator | None = None,
                     state_keep: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        """Flow-matching loss averaged over the robot's real dims and real (non-pad) steps.

        noise, t and state_keep (bool [B]: False zeroes that sample's state, with state_dropout
        on) are drawn from `generator` when not given; the trainer gives them, drawn per step."""
        inputs = self.prepare(batch, train=True)
        actions = inputs["actions"]
        b = actions.shape[0]
        if noise is None:
            noise = torch.randn(actions.shape, generator=generator, device=self.device, dtype=self.dtype)
        if t is None:
            c = self.config
            t = flow.sample_time(b, c.time_sampling, generator, c.time_beta_alpha, c.time_beta_beta,
                                 device=self.device)
        x_t = flow.interpolate(actions, noise, t)
        target = flow.target_velocity(actions, noise)
        prefix = self.embed_prefix(inputs["images"], inputs["image_mask"], inputs["tokens"],
                                   inputs["token_mask"])
        state = inputs["state"]
        if self.training and self.config.state_dropout > 0:
            keep = state_keep if state_keep is not None else \
                torch.rand(b, generator=generator, device=self.device) >= self.config.state_dropout
            state = state * keep.to(self.device)[:, None].to(state.dtype)
        suffix, cond = self.embed_suffix(state, x_t, t, inputs["action_dim_mask"])
        prefix_out, suffix_out = self.forward_joint(prefix, suffix, cond)
        pred = self.velocity_from_suffix(suffix_out)
        action_loss = flow.masked_loss(pred, target, inputs["action_dim_mask"], inputs["action_is_pad"],
                                       self.config.loss)
        info = {"action_loss": action_loss.detach(), "t_mean": t.float().mean().detach()}
        loss = action_loss
        if self.config.depth.enabled:
            if "depth_targets" not in inputs:
                raise ValueError("depth.enabled but the batch has no depth_targets: give a depth teacher "
                                 "(training) or precomputed targets")
            d_loss = depth_loss(self.depth_predictions(prefix, prefix_out), inputs["depth_targets"],
                                inputs["image_mask"])
            loss = loss + self.config.depth.loss_weight * d_loss
            info["depth_loss"] = d_loss.detach()
        info["loss"] = loss.detach()
        return loss, info

    # ---------------------------------------------------------------------------- inference
    def velocity_fn(self, batch: dict, use_cache: bool = True):
        """The denoiser of one batch, (x [B, T, D], t [B]) -> velocity: lingvla/model/sampling.py."""
        from lingvla.model import sampling

        return sampling.velocity_fn(self, batch, use_cache=use_cache)

    def cached_velocity(self, prefix: Prefix, state: torch.Tensor, dim_mask: torch.Tensor,
                        fuse_expert: bool = False):
        """The K/V-cached denoiser of an embedded prefix: lingvla/model/sampling.py."""
        from lingvla.model import sampling

        return sampling.cached_velocity(self, prefix, state, dim_mask, fuse_expert=fuse_expert)

    def initial_noise(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        c = self.config
        return torch.randn((batch_size, c.chunk_size, c.action_dim), generator=generator,
                           device=self.device, dtype=self.dtype)

    def sample_actions(self, batch: dict, noise: torch.Tensor | None = None,
                       num_steps: int | None = None, use_cache: bool = True,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """Denoise a chunk -> actions [B, chunk_size, action_dim] (normalized, padded space).

        use_cache=True runs the prefix once and each Euler step only runs the expert over the
        suffix tokens against the cached K/V; False reruns the whole joint model every step
        (the reference the cache is tested against). The loop: lingvla/model/sampling.py.
        """
        from lingvla.model import sampling

        return sampling.sample_actions(self, batch, noise=noise, num_steps=num_steps, use_cache=use_cache,
                                       generator=generator)

    # ---------------------------------------------------------------------------- save/load
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write the network (model.safetensors, config.yaml, tokenizer/) as a directory of its own
        (lingvla/checkpoint_dir.py); the directory is replaced as a whole."""
        from lingvla import checkpoint_dir

        return checkpoint_dir.write(directory, self.state_dict(), self.config, self.prompt_tokenizer.tokenizer)

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu",
                        dtype: torch.dtype | None = None) -> "LingVLA":
        """Load the network of a directory written by save_pretrained or an export of training."""
        from lingvla import checkpoint_dir

        return checkpoint_dir.load_model(directory, device=device, dtype=dtype)


def build_model(config: ModelConfig, dtype: torch.dtype = torch.float32) -> LingVLA:
    """A policy from config: the VLM from `config.vlm_path` when set (a local directory), else
    random. The config's vision/llm sizes are taken from the pretrained checkpoint when loading."""
    if config.vlm_path:
        config = config_from_pretrained(config.vlm_path, config)
        model = LingVLA(config, vlm=load_vlm(config.vlm_path, dtype))
        return model.to(dtype)
    return LingVLA(config).to(dtype)
