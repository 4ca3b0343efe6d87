"""Resumable checkpoints (torch.distributed.checkpoint); the inference export is written by
lingvla/checkpoint_dir.py.

Layout under OUTPUT_DIR:
  checkpoints/step_00000500/   model + optimizer (+ EMA) shards (DCP), extra_rank{R}.pt (step,
                               loader position, RNG), COMPLETE (step, world size)

Resuming with another number of processes reshards: DCP reads the tensors into the new layout,
and the loader resumes at the same place in the global sample order.
  export/                      the inference directory (lingvla/checkpoint_dir.py): all that
                               `lingvla serve` and `lingvla eval-sim` need

Atomicity: a checkpoint is written under a temporary name and renamed into place only once every
rank has finished, so a crash mid-write never touches the last good checkpoint; leftovers of a
crashed write are ignored and cleaned on the next save.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import torch
from torch import nn

from lingvla.train.parallel import Distributed

PREFIX = "step_"
TMP_PREFIX = ".tmp_"
COMPLETE = "COMPLETE"


def list_checkpoints(root: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under root, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        if path.name.startswith(PREFIX) and (path / COMPLETE).is_file():
            found.append((int(path.name[len(PREFIX):]), path))
    return sorted(found)


def _state(model: nn.Module, optimizer: torch.optim.Optimizer, ema=None):
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state}
    if ema is not None:
        state["ema"] = ema.state_dict()
    return state


def save_checkpoint(root: str | Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    extra: dict, dist_info: Distributed, keep_last: int, ema=None) -> Path:
    import torch.distributed.checkpoint as dcp

    root = Path(root)
    final = root / f"{PREFIX}{step:08d}"
    tmp = root / f"{TMP_PREFIX}{PREFIX}{step:08d}"
    if dist_info.is_main:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(f"{TMP_PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)
    dist_info.barrier()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*assuming the intent is to save in a single process")
        dcp.save(_state(model, optimizer, ema), checkpoint_id=str(tmp))
    torch.save(extra, tmp / f"extra_rank{dist_info.rank}.pt")
    dist_info.barrier()
    if dist_info.is_main:
        (tmp / COMPLETE).write_text(json.dumps({"step": step, "world_size": dist_info.world_size}))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        for _, old in list_checkpoints(root)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    dist_info.barrier()
    return final


def load_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    dist_info: Distributed, ema=None) -> dict:
    """Restore model and optimizer (and the EMA shadows, when given and saved) in place; returns
    this rank's extra state, with "ema_resumed": whether the shadows came from the checkpoint (else
    they restart at the restored weights)."""
    from lingvla.train.ema import checkpoint_ema_names

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    path = Path(path)
    marker = json.loads((path / COMPLETE).read_text())
    saved_world = int(marker.get("world_size", 1))
    ema_saved = ema is not None and bool(checkpoint_ema_names(path))
    state = _state(model, optimizer, ema if ema_saved else None)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process")
        dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    if ema is not None and not ema_saved:
        ema.reset()
    # Another number of processes: DCP has resharded the tensors; the loader position carries over
    # through the global order (MixtureSampler.check_state) and the RNG states are every rank's
    # alike (each random draw of training comes from generators keyed by seed and step).
    rank = dist_info.rank if saved_world == dist_info.world_size else 0
    extra = torch.load(path / f"extra_rank{rank}.pt", weights_only=False)
    extra["ema_resumed"] = ema_saved
    extra["saved_world_size"] = saved_world
    return extra


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole (unsharded) model state on CPU, on every rank; plain names (no wrapper prefixes)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}
