"""Low-rank adapters (LoRA, arXiv:2106.09685) on the model's linear layers, merged at export.

`apply_lora(model, rank, alpha, targets)` gives every chosen nn.Linear two new parameters,
`lora_A` [rank, in] (small random) and `lora_B` [out, rank] (zeros, so training starts from the
loaded weights exactly), and a forward hook adding (alpha / rank) * x A^T B^T to its output. The
linear's own weight and bias keep their names, so checkpoints, resume, FSDP2 sharding and
`init_from` see the same model plus `*.lora_A` / `*.lora_B` entries; freezing everything in the
targeted streams but the adapters is the trainer's job (train/loop.py). `merge_lora_state(state)`
folds the adapters into the weights, W + (alpha / rank) B A, so an export is a plain model.

Why not PEFT: it wraps the model and renames every tensor (base_model.model..., base_layer), which
our checkpoint layout, the released-name mapping and DCP resume would all have to learn; the
adapter itself is a dozen lines.
"""

from __future__ import annotations

import math

import torch
from torch import nn

STREAMS = ("vision", "vlm", "expert")
LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",  # decoders
                "qkv", "proj", "fc1", "fc2")  # the vision tower's blocks (attn.qkv, attn.proj, mlp.*)


def stream_of(name: str) -> str | None:
    """Which stream a parameter or module name belongs to: vision, vlm or expert (None: heads)."""
    if name.startswith("vision."):
        return "vision"
    if name.startswith(("embed_tokens", "vlm_norm")) or ".vlm." in name:
        return "vlm"
    if ".expert." in name or name.startswith("expert_norm"):
        return "expert"
    return None


def _hook(module: nn.Linear, inputs, output):
    x = inputs[0]
    a, b = module.lora_A, module.lora_B
    return output + nn.functional.linear(nn.functional.linear(x.to(a.dtype), a), b).to(output.dtype) * module.lora_scale


def apply_lora(model: nn.Module, rank: int, alpha: float, targets=("vlm",)) -> list[str]:
    """Add adapters to the linear layers of the `targets` streams; returns the adapted modules' names."""
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1; got {rank}")
    unknown = sorted(set(targets) - set(STREAMS))
    if unknown:
        raise ValueError(f"LoRA targets {unknown}; expected some of {STREAMS}")
    adapted = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or name.split(".")[-1] not in LINEAR_NAMES:
            continue
        if stream_of(name) not in targets or hasattr(module, "lora_A"):
            continue
        device, dtype = module.weight.device, module.weight.dtype
        a = torch.empty(rank, module.in_features, device=device, dtype=dtype)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        module.lora_A = nn.Parameter(a)
        module.lora_B = nn.Parameter(torch.zeros(module.out_features, rank, device=device, dtype=dtype))
        module.lora_scale = float(alpha) / rank
        module.register_forward_hook(_hook)
        adapted.append(name)
    if not adapted:
        raise ValueError(f"no linear layer found in the LoRA targets {list(targets)}")
    return adapted


def is_lora_name(name: str) -> bool:
    return name.endswith((".lora_A", ".lora_B"))


def merge_lora_state(state: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """A state dict with `X.lora_A` / `X.lora_B` beside `X.weight` -> X.weight + scale * B @ A, the
    adapters gone (computed in fp32, stored in the weight's dtype)."""
    out = {k: v for k, v in state.items() if not is_lora_name(k)}
    for key in state:
        if key.endswith(".lora_A"):
            prefix = key[: -len(".lora_A")]
            weight = out[prefix + ".weight"]
            delta = state[prefix + ".lora_B"].float() @ state[key].float()
            out[prefix + ".weight"] = (weight.float() + scale * delta).to(weight.dtype)
    return out
