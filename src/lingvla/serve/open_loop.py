"""Open-loop evaluation on recorded episodes: `lingvla eval-open CHECKPOINT DATASET`.

The first check of a fine-tune, before any robot: the served policy (`Policy.infer`, the same
object and preprocessing a robot gets) is given each recorded observation every `stride` frames -
the camera frames as stored, the raw joint state, the episode's task - and its chunk, in robot
units, is compared with the actions that were recorded from that frame on (steps past the
episode's end are left out). Reported per state dim of the embodiment:
  - mean absolute error over the whole predicted chunk, and over its first `stride` actions (what a
    robot executing `stride` actions per chunk would run);
  - chunk-boundary jumps: |first action of the next chunk - the action executed just before it|,
    against the same step's jump in the recording (a policy that joins its chunks badly jumps
    far more than the recording does).
A plot per evaluated episode shows predicted (the executed part of each chunk) against recorded
joints. One JSON line summarises it all.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def evaluate_open_loop(policy, dataset_dir: str | Path, *, episodes=None, num_episodes: int | None = 5,
                       stride: int | None = None, seed: int = 0, out_dir: str | Path | None = None,
                       progress: bool = True, checkpoint: str | Path | None = None) -> dict:
    """Run the policy open loop over recorded episodes (episode_index values, or the first
    num_episodes) and return the report (module docstring); plots go to out_dir when given."""
    import torch
    from tqdm import tqdm

    from lingvla.data.lerobot import LeRobotDataset

    emb = policy.embodiment
    src = LeRobotDataset(dataset_dir)
    emb.validate(src)
    chunk = policy.config.chunk_size
    stride = chunk if stride is None else int(stride)
    if not 1 <= stride <= chunk:
        raise ValueError(f"stride={stride}; expected 1 .. chunk size {chunk}")
    available = set(src.video_keys) | set(src.image_keys)
    cameras = {slot: emb.camera_key(slot, available) for slot in policy.slots}
    if not any(cameras.values()):
        raise ValueError(f"dataset {src.root} has none of the cameras embodiment {emb.name!r} names "
                         f"({ {s: emb.cameras.get(s) for s in policy.slots} }); its cameras: {sorted(available)}")
    stored = {e.index: i for i, e in enumerate(src.episodes)}
    if episodes is None:
        chosen = list(range(len(src.episodes)))[:num_episodes]
    else:
        unknown = [e for e in episodes if e not in stored]
        if unknown:
            raise ValueError(f"episodes {unknown} are not in {src.root} (it has {sorted(stored)[:10]}...)")
        chosen = [stored[e] for e in episodes]
    columns_needed = emb.columns()
    abs_chunk = np.zeros(emb.action_dim)
    abs_exec = np.zeros(emb.action_dim)
    n_chunk = np.zeros(emb.action_dim)
    n_exec = np.zeros(emb.action_dim)
    jumps, recorded_jumps, plots, calls = [], [], [], 0
    out_dir = Path(out_dir) if out_dir is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=sum(-(-src.episodes[i].length // stride) for i in chosen), desc="eval-open",
               disable=not progress, dynamic_ncols=True)
    for ep in chosen:
        episode = src.episodes[ep]
        columns, first = src.episode_rows(ep)
        rows = {c: columns[c][first:first + episode.length] for c in columns_needed}
        state_all = emb.gather("state", rows)
        action_all = emb.gather("action", rows)
        prompt = episode.tasks[0] if episode.tasks else None
        if prompt is None and "task_index" in columns:
            prompt = src.tasks.get(int(columns["task_index"][first, 0]))
        if prompt is None:
            raise ValueError(f"{src.root} episode {episode.index} has no task")
        executed = np.full_like(action_all, np.nan, dtype=np.float64)
        previous_last = None
        for t in range(0, episode.length, stride):
            obs = {"images": {slot: src.camera_frame(key, ep, t) for slot, key in cameras.items() if key},
                   "state": state_all[t].astype(np.float32), "prompt": prompt}
            generator = torch.Generator().manual_seed(seed * 1_000_003 + episode.index * 10_007 + t)
            noise = policy.model.initial_noise(1, generator=generator)
            predicted = policy.infer(obs, noise=noise)["actions"].astype(np.float64)
            calls += 1
            steps = min(chunk, episode.length - t)
            err = np.abs(predicted[:steps] - action_all[t:t + steps])
            abs_chunk += err.sum(0)
            n_chunk += steps
            run = min(stride, steps)
            abs_exec += err[:run].sum(0)
            n_exec += run
            executed[t:t + run] = predicted[:run]
            if previous_last is not None:
                jumps.append(np.abs(predicted[0] - previous_last))
                recorded_jumps.append(np.abs(action_all[t] - action_all[t - 1]))
            previous_last = predicted[run - 1]
            bar.update(1)
        if out_dir is not None:
            path = out_dir / f"episode_{episode.index:06d}.png"
            _plot(path, action_all, executed, emb.dim_names("action"), stride, f"{src.root.name} episode "
                  f"{episode.index}: recorded vs predicted ({emb.name})")
            plots.append(str(path))
    bar.close()
    names = emb.dim_names("action")
    mae_chunk = abs_chunk / np.maximum(n_chunk, 1)
    mae_exec = abs_exec / np.maximum(n_exec, 1)
    report = {
        "checkpoint": None if checkpoint is None else str(checkpoint), "dataset": str(src.root), "embodiment": emb.name,
        "episodes": [src.episodes[i].index for i in chosen], "stride": stride, "chunks": calls,
        "mae": float(mae_chunk.mean()), "mae_executed": float(mae_exec.mean()),
        "mae_per_dim": {n: round(float(v), 6) for n, v in zip(names, mae_chunk)},
        "mae_executed_per_dim": {n: round(float(v), 6) for n, v in zip(names, mae_exec)},
        "boundary_jump": float(np.mean(jumps)) if jumps else None,
        "recorded_jump": float(np.mean(recorded_jumps)) if recorded_jumps else None,
        "boundary_jump_per_dim": ({n: round(float(v), 6) for n, v in zip(names, np.mean(jumps, axis=0))}
                                  if jumps else {}),
        "plots": plots,
    }
    return report


def _plot(path: Path, recorded: np.ndarray, executed: np.ndarray, names: list[str], stride: int, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = recorded.shape[1]
    cols = 2 if dims > 1 else 1
    rows = -(-dims // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 1.6 * rows), sharex=True, squeeze=False)
    steps = np.arange(len(recorded))
    for d in range(rows * cols):
        ax = axes[d // cols][d % cols]
        if d >= dims:
            ax.axis("off")
            continue
        ax.plot(steps, recorded[:, d], color="black", lw=1, label="recorded")
        ax.plot(steps, executed[:, d], color="tab:orange", lw=1, label="predicted")
        for t in range(0, len(recorded), stride):
            ax.axvline(t, color="tab:blue", alpha=0.15, lw=0.5)
        ax.set_ylabel(names[d], fontsize=7)
        ax.tick_params(labelsize=6)
    axes[0][0].legend(fontsize=7, loc="upper right")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
