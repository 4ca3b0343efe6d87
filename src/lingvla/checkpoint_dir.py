"""The inference directory: what `lingvla train` and `lingvla export` write, and what `Policy`,
`lingvla serve` and `lingvla eval-sim` load. It is written and read here, and nowhere else.

    model.safetensors   the network's weights (LingVLA state dict)
    config.yaml         its ModelConfig
    tokenizer/          the prompt tokenizer
    norm_stats.json     normalization statistics per embodiment      (policy directories)
    embodiments.yaml    the embodiments' specs, so the directory is self-contained
    policy.json         how to use the weights: {"normalization": "quantile" | "mean_std" | "bounds_99_woclip"}
    train_info.json     the training config and summary (optional; for people and reports)

A directory with the first three is a network (`LingVLA.from_pretrained`); with all but the last,
a policy (`Policy.from_checkpoint`).
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lingvla.data.normalize import MODES as NORMALIZATIONS

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.yaml"
TOKENIZER_DIR = "tokenizer"
NORM_STATS_NAME = "norm_stats.json"
EMBODIMENTS_NAME = "embodiments.yaml"
POLICY_NAME = "policy.json"
TRAIN_INFO_NAME = "train_info.json"
TMP_PREFIX = ".tmp_"


def write(out_dir: str | Path, state: dict[str, torch.Tensor], model_config, tokenizer, *,
          norm_stats: dict | None = None, embodiments: dict | None = None,
          normalization: str | None = None, train_info: dict | None = None) -> Path:
    """Write an inference directory. The whole directory is replaced at once: it is built in a
    temporary sibling and renamed over `out_dir`, so a reader never sees half of one (and files
    that were in `out_dir` before are gone). A policy directory needs norm_stats, embodiments and
    normalization together; a network directory none of them."""
    from safetensors.torch import save_file

    policy_parts = (norm_stats, embodiments, normalization)
    if any(p is not None for p in policy_parts) and any(p is None for p in policy_parts):
        raise ValueError("a policy directory needs norm_stats, embodiments and normalization together")
    if normalization is not None and normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization={normalization!r}; expected one of {NORMALIZATIONS}")
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f"{TMP_PREFIX}{out_dir.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt", "lingvla": "1"})
    model_config.save_yaml(tmp / CONFIG_NAME)
    tokenizer.save_pretrained(str(tmp / TOKENIZER_DIR))
    if norm_stats is not None:
        import yaml

        (tmp / NORM_STATS_NAME).write_text(json.dumps(norm_stats, indent=1))
        (tmp / EMBODIMENTS_NAME).write_text(yaml.safe_dump(embodiments, sort_keys=False))
        (tmp / POLICY_NAME).write_text(json.dumps({"normalization": normalization}, indent=1))
    if train_info is not None:
        (tmp / TRAIN_INFO_NAME).write_text(json.dumps(train_info, indent=1))
    old = out_dir.with_name(f"{TMP_PREFIX}old_{out_dir.name}")
    if out_dir.exists():
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)
    return out_dir


def load_model(directory: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
    """The LingVLA network of a directory, strictly: every tensor of its config, nothing else."""
    from safetensors.torch import load_file

    from lingvla.config import ModelConfig
    from lingvla.model.lingvla import LingVLA, empty_parameters
    from lingvla.model.tokenizer import load_tokenizer

    directory = Path(directory)
    for name in (WEIGHTS_NAME, CONFIG_NAME):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory} is not a lingvla checkpoint: {name} is missing")
    config = ModelConfig.load_yaml(directory / CONFIG_NAME)
    tok_dir = directory / TOKENIZER_DIR
    tokenizer = load_tokenizer(str(tok_dir) if tok_dir.is_dir() else (config.tokenizer or config.vlm_path))
    with empty_parameters():
        model = LingVLA(config, tokenizer=tokenizer)
    state = load_file(str(directory / WEIGHTS_NAME))
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise ValueError(f"checkpoint {directory / WEIGHTS_NAME} does not match its config: "
                         f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                         f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    model = model.to(device)
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()


@dataclass
class PolicyFiles:
    """What a policy directory says beyond the network."""

    norm_stats_path: Path
    embodiments: dict[str, Any]   # name -> spec (embodiments.yaml)
    normalization: str
    train_info: dict | None


def read_policy_files(directory: str | Path) -> PolicyFiles:
    import yaml

    directory = Path(directory)
    for name in (NORM_STATS_NAME, EMBODIMENTS_NAME):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory} is not an inference checkpoint: {name} is missing "
                                    "(export one with `lingvla train` or `lingvla export`)")
    train_info = read_train_info(directory)
    if (directory / POLICY_NAME).is_file():
        normalization = json.loads((directory / POLICY_NAME).read_text()).get("normalization")
    else:  # directories written before policy.json: the training config says it
        normalization = ((train_info or {}).get("train_config", {}).get("data", {})
                         .get("normalization", "quantile"))
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"{directory / POLICY_NAME}: normalization {normalization!r}; expected one of "
                         f"{NORMALIZATIONS}")
    specs = yaml.safe_load((directory / EMBODIMENTS_NAME).read_text()) or {}
    return PolicyFiles(directory / NORM_STATS_NAME, specs, normalization, train_info)


def read_train_info(directory: str | Path) -> dict | None:
    """train_info.json of a directory, or None when it has none."""
    path = Path(directory) / TRAIN_INFO_NAME
    return json.loads(path.read_text()) if path.is_file() else None


def write_random(out_dir: str | Path, model_config, *, seed: int = 0, embodiment: str = "aloha",
                 stats: str = "identity", train_info: dict | None = None) -> Path:
    """A policy directory holding a randomly initialised model (seeded), for tests and benchmarks.
    stats "identity": q01 = -1, q99 = 1, mean 0, std 1 (robot units = normalized units);
    "random": made-up but valid ranges drawn from the seed."""
    import numpy as np

    from lingvla.data.embodiments import get_embodiment
    from lingvla.model.lingvla import LingVLA

    if stats not in ("identity", "random"):
        raise ValueError(f"stats={stats!r}; expected identity or random")
    torch.manual_seed(seed)
    model = LingVLA(model_config).eval()
    emb = get_embodiment(embodiment)
    rng = np.random.default_rng(seed)

    def ranges(dim):
        if stats == "identity":
            lo, hi = -np.ones(dim), np.ones(dim)
            return {"q01": lo.tolist(), "q99": hi.tolist(), "mean": (0 * lo).tolist(), "std": hi.tolist(),
                    "min": lo.tolist(), "max": hi.tolist()}
        lo, hi = rng.uniform(-2.0, -0.5, dim), rng.uniform(0.5, 2.0, dim)
        return {"q01": lo.tolist(), "q99": hi.tolist(), "mean": ((lo + hi) / 2).tolist(),
                "std": ((hi - lo) / 4).tolist(), "min": (lo - 0.1).tolist(), "max": (hi + 0.1).tolist()}

    norm_stats = {"norm_stats": {embodiment: {"state": ranges(emb.state_dim), "action": ranges(emb.action_dim)}},
                  "count": 1000}
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    return write(out_dir, state, model.config, model.prompt_tokenizer.tokenizer, norm_stats=norm_stats,
                 embodiments={embodiment: emb.to_spec()}, normalization="quantile", train_info=train_info)


def import_released(released_dir: str | Path, out_dir: str | Path, *, norm_stats: str | Path, embodiment: str,
                    tokenizer: str | None = None, preset: str = "lingbot-4b", drop: tuple[str, ...] = (),
                    normalization: str = "bounds_99_woclip", embodiment_paths=None) -> tuple[Path, dict]:
    """A policy directory (what `lingvla serve` and `lingvla eval-sim` load) from a released
    LingBot-VLA checkpoint, its norm-stats file and the robot's embodiment. The sizes come from the
    checkpoint's config.json (a `lingvla` entry when we wrote it; else `preset` with its
    chunk_size, max_action_dim, tokenizer_max_length and num_steps, and the released
    preprocessing and numerics: image_resize squash, attention_fp32). The weights are loaded
    strictly (lingvla.model.weights.init_from; `drop` as its init_drop). Returns (out_dir, report)."""
    from lingvla.config import ModelConfig, preset as make_preset
    from lingvla.data.embodiments import load_registry
    from lingvla.data.normalize import embodiment_stats_file, load_stats_file
    from lingvla.model import released
    from lingvla.model.lingvla import LingVLA
    from lingvla.model.weights import init_from

    released_dir = Path(released_dir)
    if not released.is_released_dir(released_dir):
        raise ValueError(f"{released_dir} is not a released LingBot-VLA checkpoint (safetensors + "
                         f"{released.INDEX_NAME} + {released.CONFIG_NAME} with \"type\": \"pi0\")")
    config_json = json.loads((released_dir / released.CONFIG_NAME).read_text())
    if "lingvla" in config_json:
        model_config = ModelConfig.from_dict(config_json["lingvla"])
    else:
        sizes = {k: config_json[src] for k, src in (("chunk_size", "chunk_size"), ("action_dim", "max_action_dim"),
                                                   ("max_token_len", "tokenizer_max_length"),
                                                   ("num_steps", "num_steps")) if src in config_json}
        model_config = make_preset(preset, image_resize="squash", attention_fp32=True, **sizes)
    if tokenizer is not None:
        model_config.tokenizer = tokenizer
    emb = load_registry(embodiment_paths).get(embodiment)
    data, source = load_stats_file(Path(norm_stats).resolve())
    stats = embodiment_stats_file(data, embodiment, source)
    model = LingVLA(model_config)
    report = init_from(model, released_dir, drop)
    write(out_dir, model.state_dict(), model.config, model.prompt_tokenizer.tokenizer, norm_stats=stats,
          embodiments={embodiment: emb.to_spec()}, normalization=normalization,
          train_info={"imported_from": str(released_dir.resolve()), "init_from": report.to_dict()})
    return Path(out_dir), report.to_dict()
