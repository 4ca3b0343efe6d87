"""Start a model from existing weights, strictly: `init_from(model, PATH, drop)`.

PATH is one of three kinds of local directory, told apart by their files:
  lingvla     a checkpoint of ours (model.safetensors + config.yaml: `lingvla train`'s export/,
              `save_pretrained`): every tensor of the model
  released    a released LingBot-VLA checkpoint (`.../hf_ckpt/`: shards + index + config.json with
              "type": "pi0"), names mapped by lingvla/model/released.py: every tensor of the
              model except the depth query embeddings, which the release never saves (its depth
              head loads into a model built with depth.head: released)
  qwen2_5_vl  a Qwen2.5-VL directory (transformers' layout): the vision tower and the VLM stream;
              the action expert, its heads and the depth parameters keep their initialisation,
              the LM head is not used

Every tensor is accounted for: a source tensor the model has no place for, a model tensor the
source should hold and does not, and a shape that differs are errors naming the tensors. What one
means to leave out is an explicit list of name prefixes (`drop`, the training config's init_drop),
matched against the source's names and ours: those source tensors are not read and those model
tensors keep their initialisation. The report says what was loaded, kept and dropped.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from lingvla.model import released

KINDS = ("lingvla", "released", "qwen2_5_vl")
_VLM_PREFIXES = ("vision.", "embed_tokens.", "vlm_norm.")
_QWEN_RULES = (
    (r"(?:model\.)?visual\.(.*)", r"vision.visual.\1"),
    (r"model\.(?:language_model\.)?embed_tokens\.(.*)", r"embed_tokens.\1"),
    (r"model\.(?:language_model\.)?layers\.(\d+)\.(.*)", r"layers.\1.vlm.\2"),
    (r"model\.(?:language_model\.)?norm\.(.*)", r"vlm_norm.\1"),
)


class WeightsMismatchError(ValueError):
    """The source's tensors do not fit the model; the message names them."""


@dataclass
class InitReport:
    kind: str
    path: str
    loaded: int = 0
    kept: list[str] = field(default_factory=list)      # model tensors left at their initialisation
    dropped: list[str] = field(default_factory=list)   # source tensors not read
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"init_from {self.path} ({self.kind}): {self.loaded} tensors loaded"]
        if self.kept:
            parts.append(f"{len(self.kept)} kept at initialisation ({_group(self.kept)})")
        if self.dropped:
            parts.append(f"{len(self.dropped)} source tensors not used ({_group(self.dropped)})")
        return "; ".join(parts) + "".join(f"\n  {note}" for note in self.notes)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "path": self.path, "loaded": self.loaded, "kept": _group(self.kept),
                "dropped": _group(self.dropped), "notes": self.notes}


def _group(names: list[str]) -> str:
    """Names summarised by their first two dotted parts with digits folded: 'layers.N.expert (24), ...'."""
    counts: dict[str, int] = {}
    for name in names:
        head = ".".join(re.sub(r"^\d+$", "N", p) for p in name.split(".")[:3 if name.startswith("layers.") else 2])
        counts[head] = counts.get(head, 0) + 1
    return ", ".join(f"{k} ({v})" for k, v in counts.items())


def detect_kind(path: str | Path) -> str:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"init_from={path}: no such directory (weights load from a local directory)")
    if (path / "model.safetensors").is_file() and (path / "config.yaml").is_file():
        return "lingvla"
    if released.is_released_dir(path):
        return "released"
    config = path / "config.json"
    if config.is_file() and json.loads(config.read_text()).get("model_type") == "qwen2_5_vl":
        return "qwen2_5_vl"
    raise ValueError(f"init_from={path}: not a lingvla checkpoint (model.safetensors + config.yaml), a released "
                     "LingBot-VLA checkpoint (safetensors + model.safetensors.index.json + config.json with "
                     "\"type\": \"pi0\") nor a Qwen2.5-VL directory (config.json with model_type qwen2_5_vl)")


def _qwen_to_ours(key: str) -> str | None:
    for pattern, repl in _QWEN_RULES:
        if re.fullmatch(pattern, key):
            return re.sub(f"^{pattern}$", repl, key)
    return None


def _check_released_config(path: Path, model_config) -> None:
    """Clear errors for the sizes a released config.json states, before any tensor shape."""
    config = json.loads((path / released.CONFIG_NAME).read_text()) if (path / released.CONFIG_NAME).is_file() else {}
    for key, ours, name in (("max_action_dim", model_config.action_dim, "model.action_dim"),
                            ("max_state_dim", model_config.action_dim, "model.action_dim"),
                            ("chunk_size", model_config.chunk_size, "model.chunk_size")):
        if key in config and config[key] != ours:
            raise WeightsMismatchError(f"{path / released.CONFIG_NAME}: {key}={config[key]}, but {name}={ours}; "
                                       f"set {name}={config[key]} to start from this checkpoint")


def _matches(prefixes, *names: str | None) -> bool:
    return any(n is not None and n.startswith(p) for p in prefixes for n in names)


def init_from(model: nn.Module, path: str | Path, drop: list[str] | tuple[str, ...] = ()) -> InitReport:
    """Copy the weights of `path` into `model` (in place, cast to each parameter's dtype) and return
    what was loaded, kept and dropped. Raises WeightsMismatchError naming every offending tensor."""
    from safetensors.torch import load_file

    path = Path(path)
    kind = detect_kind(path)
    report = InitReport(kind, str(path))
    drop = tuple(drop)
    if kind == "lingvla":
        source = {k: (k, v) for k, v in load_file(str(path / "model.safetensors")).items()}
    else:
        raw = released.read_safetensors_dir(path)
        rename = released.released_to_ours if kind == "released" else _qwen_to_ours
        source = {k: (rename(k), v) for k, v in raw.items()}
        if kind == "released":
            _check_released_config(path, model.config)
    targets = dict(model.state_dict())
    unexpected, shapes, pairs = [], [], []
    accounted = set()  # model tensors the source speaks for (loaded, dropped or misshaped)
    for key, (ours, tensor) in source.items():
        if _matches(drop, key, ours):
            report.dropped.append(key)
            if ours in targets:
                accounted.add(ours)
                report.kept.append(ours)
            continue
        if kind == "qwen2_5_vl" and key.startswith("lm_head."):
            report.dropped.append(key)  # the policy predicts actions, not tokens
            continue
        if ours is None or ours not in targets:
            unexpected.append(key)
            continue
        if tuple(tensor.shape) != tuple(targets[ours].shape):
            shapes.append(f"{key}: {tuple(tensor.shape)} in the checkpoint, {tuple(targets[ours].shape)} in the model")
            accounted.add(ours)
            continue
        pairs.append((ours, tensor))
        accounted.add(ours)
    missing = []
    for name in targets:
        if name in accounted:
            continue
        if _matches(drop, name, released.ours_to_released(name)):
            report.kept.append(name)
        elif kind == "qwen2_5_vl" and not (name.startswith(_VLM_PREFIXES) or ".vlm." in name):
            report.kept.append(name)
        elif kind == "released" and name == "depth_embeddings":
            report.kept.append(name)
            report.notes.append("depth_embeddings keep their initialisation: released checkpoints do not "
                                "save their depth query embeddings (a new random draw at every build)")
        else:
            missing.append(name)
    problems = []
    if unexpected:
        hint = (f" (the released depth head: build the model with model.depth.enabled and model.depth.head="
                f"released to load it, or add '{released.DEPTH_HEAD_PREFIX}' to init_drop to start without it)"
                if any(k.startswith(released.DEPTH_HEAD_PREFIX) for k in unexpected) else
                " (add their prefix to init_drop to leave them out)")
        problems.append(f"{len(unexpected)} tensor(s) in the checkpoint have no place in the model: "
                        f"{unexpected[:5]}{hint}")
    if missing:
        problems.append(f"{len(missing)} model tensor(s) are not in the checkpoint: {missing[:5]} (add their "
                        "prefix to init_drop to keep them at their initialisation)")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es): " + "; ".join(shapes[:5]))
    if problems:
        raise WeightsMismatchError(f"init_from={path} ({kind}): " + " | ".join(problems))
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    with torch.no_grad():
        for name, tensor in pairs:
            target = params.get(name, buffers.get(name))
            target.copy_(tensor.to(dtype=target.dtype, device=target.device))
    report.loaded = len(pairs)
    return report
