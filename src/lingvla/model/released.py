"""The released LingBot-VLA checkpoint layout: tensor names both ways, reading and writing.

Released names are the policy's named parameters with P = model.qwenvl_with_expert:
  P.qwenvl.visual.*                      <-> vision.visual.*
  P.qwenvl.model.embed_tokens.weight     <-> embed_tokens.weight
  P.qwenvl.model.layers.N.*              <-> layers.N.vlm.*
  P.qwenvl.model.norm.weight             <-> vlm_norm.weight
  P.qwen_expert.model.layers.N.*         <-> layers.N.expert.*
  P.qwen_expert.model.norm.weight        <-> expert_norm.weight
  model.{state_proj,action_in_proj,action_out_proj,action_time_mlp_in,action_time_mlp_out}.*
                                         <-> the same names without "model."

A released directory (`.../hf_ckpt/`) holds safetensors shards, `model.safetensors.index.json`
(its weight_map names the shard of every tensor) and a `config.json` dump of the policy config
(`"type": "pi0"`, chunk_size, max_action_dim, tokenizer_max_length, num_steps, ...).

The release's depth head (`model.depth_align_head.projector.*`) maps to ours by name when the model
is built with `depth.head: released` (the same structure, lingvla/model/depth.py); our default
perceiver head has no released counterpart. The release's depth query embeddings are not in its
checkpoints at all. Leaving a head out is an explicit choice (`init_drop`, lingvla/model/weights.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

INDEX_NAME = "model.safetensors.index.json"
CONFIG_NAME = "config.json"
DEPTH_HEAD_PREFIX = "model.depth_align_head."
SHARD_BYTES = 5 * 1000**3  # the release writes 5 GB shards

_PREFIX = "model.qwenvl_with_expert."
_RULES = (  # (released pattern, ours), (our pattern, released)
    (r"qwenvl\.visual\.(.*)", r"vision.visual.\1", r"vision\.visual\.(.*)", r"qwenvl.visual.\1"),
    (r"qwenvl\.model\.embed_tokens\.(.*)", r"embed_tokens.\1", r"embed_tokens\.(.*)", r"qwenvl.model.embed_tokens.\1"),
    (r"qwenvl\.model\.layers\.(\d+)\.(.*)", r"layers.\1.vlm.\2", r"layers\.(\d+)\.vlm\.(.*)", r"qwenvl.model.layers.\1.\2"),
    (r"qwenvl\.model\.norm\.(.*)", r"vlm_norm.\1", r"vlm_norm\.(.*)", r"qwenvl.model.norm.\1"),
    (r"qwen_expert\.model\.layers\.(\d+)\.(.*)", r"layers.\1.expert.\2", r"layers\.(\d+)\.expert\.(.*)",
     r"qwen_expert.model.layers.\1.\2"),
    (r"qwen_expert\.model\.norm\.(.*)", r"expert_norm.\1", r"expert_norm\.(.*)", r"qwen_expert.model.norm.\1"),
)
_HEADS = ("state_proj", "action_in_proj", "action_out_proj", "action_time_mlp_in", "action_time_mlp_out")


def released_to_ours(key: str) -> str | None:
    """Our parameter name for a released one, or None for tensors we do not hold. The depth head's
    tensors map to ours by name (they exist in our model with depth.head: released)."""
    if key.startswith(DEPTH_HEAD_PREFIX):
        return key[len("model."):]
    if key.startswith(_PREFIX):
        rest = key[len(_PREFIX):]
        for released, ours, _, _ in _RULES:
            if re.fullmatch(released, rest):
                return re.sub(f"^{released}$", ours, rest)
        return None
    if key.startswith("model.") and key.split(".")[1] in _HEADS:
        return key[len("model."):]
    return None


def ours_to_released(name: str) -> str | None:
    """The released name of one of our parameters, or None when the release has none (the depth
    query embeddings; our own depth head's tensors, which are not under `projector.`)."""
    if name.startswith("depth_align_head.projector."):
        return "model." + name
    if name.split(".")[0] in _HEADS:
        return "model." + name
    for _, _, ours, released in _RULES:
        if re.fullmatch(ours, name):
            return _PREFIX + re.sub(f"^{ours}$", released, name)
    return None


def is_released_dir(path: str | Path) -> bool:
    """A directory in the released layout: its config.json is a policy dump ("type": "pi0"), or its
    tensors carry the released names."""
    path = Path(path)
    config = path / CONFIG_NAME
    if config.is_file():
        try:
            if json.loads(config.read_text()).get("type") == "pi0":
                return True
        except json.JSONDecodeError:
            return False
    index = path / INDEX_NAME
    if index.is_file():
        return any(k.startswith(_PREFIX) for k in json.loads(index.read_text()).get("weight_map", {}))
    return False


def read_safetensors_dir(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a directory of safetensors shards (or of one file), by the names on disk.
    With an index, exactly the shards and tensors its weight_map names: a shard or tensor it names
    that is not there is an error, not a silently smaller model."""
    from safetensors import safe_open

    path = Path(path)
    if path.is_file():
        files = [path]
        expected = None
    else:
        index = path / INDEX_NAME
        if index.is_file():
            weight_map = json.loads(index.read_text()).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise ValueError(f"{index}: no weight_map")
            expected = weight_map
            files = [path / name for name in sorted(set(weight_map.values()))]
            absent = [f.name for f in files if not f.is_file()]
            if absent:
                raise FileNotFoundError(f"{index} names shards that are not in {path}: {absent[:5]}")
        else:
            expected = None
            files = sorted(path.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"no .safetensors files under {path}")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                if key in state:
                    raise ValueError(f"tensor {key} is in two shards ({file.name} and another)")
                state[key] = f.get_tensor(key)
    if expected is not None:
        unlisted = sorted(set(expected) - set(state))
        if unlisted:
            raise ValueError(f"{path / INDEX_NAME} names {len(unlisted)} tensor(s) its shards do not hold: "
                             f"{unlisted[:5]}")
    return state


def load_released_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A released checkpoint's tensors renamed to ours; tensors we do not hold are left out (for
    strict loading with a report of what was left, use lingvla.model.weights.init_from)."""
    state = {}
    for key, value in read_safetensors_dir(path).items():
        ours = released_to_ours(key)
        if ours is not None:
            state[ours] = value
    return state


def released_config(model_config) -> dict:
    """config.json of a released directory written from our model: the fields the released code
    reads from its policy config, and our whole model config under "lingvla" so the directory
    reads back into the same sizes."""
    size = model_config.image_size
    return {
        "type": "pi0",
        "chunk_size": model_config.chunk_size,
        "n_action_steps": model_config.chunk_size,
        "max_state_dim": model_config.action_dim,
        "max_action_dim": model_config.action_dim,
        "tokenizer_max_length": model_config.max_token_len,
        "num_steps": model_config.num_steps,
        "resize_imgs_with_padding": [size, size],
        "lingvla": model_config.to_dict(),
    }


def write_released(out_dir: str | Path, state: dict[str, torch.Tensor], model_config,
                   shard_bytes: int = SHARD_BYTES, drop: tuple[str, ...] = ()) -> Path:
    """Write our weights in the released layout: shards model-0000i-of-0000n.safetensors of at most
    `shard_bytes` each (a tensor larger than that gets a shard of its own), the index and
    config.json. Tensors keep their dtype. Ours without a released name (the depth parameters) are
    an error unless a prefix in `drop` names them."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    renamed: dict[str, torch.Tensor] = {}
    unnamed = []
    for name, tensor in state.items():
        if any(name.startswith(p) for p in drop):
            continue
        key = ours_to_released(name)
        if key is None:
            unnamed.append(name)
            continue
        renamed[key] = tensor.detach().contiguous().cpu()
    if unnamed:
        raise ValueError(f"{len(unnamed)} tensor(s) have no name in the released layout: {unnamed[:5]}; the "
                         "released depth head differs from ours - leave them out explicitly "
                         "(`lingvla export --layout released --drop depth_`)")
    shards: list[list[str]] = [[]]
    size = 0
    for key in sorted(renamed):
        nbytes = renamed[key].numel() * renamed[key].element_size()
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(key)
        size += nbytes
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("model-*-of-*.safetensors"):
        old.unlink()
    weight_map = {}
    for i, keys in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file({k: renamed[k] for k in keys}, str(out_dir / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in keys})
    total = sum(t.numel() * t.element_size() for t in renamed.values())
    (out_dir / INDEX_NAME).write_text(json.dumps({"metadata": {"total_size": total},
                                                  "weight_map": weight_map}, indent=2))
    (out_dir / CONFIG_NAME).write_text(json.dumps(released_config(model_config), indent=2))
    return out_dir
