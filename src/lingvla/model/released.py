"""Map the released LingBot-VLA checkpoint's parameter names onto ours, one tensor to one tensor.

Released names are the policy's named parameters with P = model.qwenvl_with_expert:
  P.qwenvl.visual.*                      -> vision.visual.*
  P.qwenvl.model.embed_tokens.weight     -> embed_tokens.weight
  P.qwenvl.model.layers.N.*              -> layers.N.vlm.*
  P.qwenvl.model.norm.weight             -> vlm_norm.weight
  P.qwen_expert.model.layers.N.*         -> layers.N.expert.*
  P.qwen_expert.model.norm.weight        -> expert_norm.weight
  model.{state_proj,action_in_proj,action_out_proj,action_time_mlp_in,action_time_mlp_out}.*
                                         -> the same names without "model."
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

_PREFIX = "model.qwenvl_with_expert."
_RULES = (
    (re.compile(r"^qwenvl\.visual\.(.*)$"), r"vision.visual.\1"),
    (re.compile(r"^qwenvl\.model\.embed_tokens\.(.*)$"), r"embed_tokens.\1"),
    (re.compile(r"^qwenvl\.model\.layers\.(\d+)\.(.*)$"), r"layers.\1.vlm.\2"),
    (re.compile(r"^qwenvl\.model\.norm\.(.*)$"), r"vlm_norm.\1"),
    (re.compile(r"^qwen_expert\.model\.layers\.(\d+)\.(.*)$"), r"layers.\1.expert.\2"),
    (re.compile(r"^qwen_expert\.model\.norm\.(.*)$"), r"expert_norm.\1"),
)
_HEADS = ("state_proj", "action_in_proj", "action_out_proj", "action_time_mlp_in", "action_time_mlp_out")


def released_to_ours(key: str) -> str | None:
    """Our parameter name for a released one, or None for tensors we do not hold (e.g. LM heads)."""
    if key.startswith(_PREFIX):
        rest = key[len(_PREFIX):]
        for pattern, repl in _RULES:
            if pattern.match(rest):
                return pattern.sub(repl, rest)
        return None
    if key.startswith("model.") and key.split(".")[1] in _HEADS:
        return key[len("model."):]
    return None


def load_released_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a released checkpoint (a .safetensors file or a directory of them), renamed to ours."""
    from safetensors.torch import load_file

    path = Path(path)
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    if not files:
        raise FileNotFoundError(f"no .safetensors files under {path}")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        for key, value in load_file(str(file)).items():
            ours = released_to_ours(key)
            if ours is not None:
                state[ours] = value
    return state
