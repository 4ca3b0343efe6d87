"""Normalization statistics from the parquet columns alone (videos are never opened).

Method, per embodiment and per key ("state", "action": the robot's own vector, fields
concatenated in the embodiment's order), streamed file by file in two passes:
  pass 1: count, mean and M2 (Chan et al.'s pairwise merge of per-file moments, float64), min, max;
          mean/std/min/max equal numpy's on the same values up to float64 rounding.
  pass 2: a histogram of ``num_bins`` (default 65536) equal bins per dim spanning [min, max].
          A quantile is numpy's default ('linear') interpolation between the two order statistics
          around rank q * (N - 1); each order statistic is read off the histogram (its bin, then
          linearly within the bin). Both lie in the same bin as the true value, so the error is at
          most one bin width: |q_est - q_true| <= (max - min) / num_bins, per dim. The bound is written
          to the file as ``quantile_error_bound``.
Pass 2 reuses pass 1's arrays when they fit in ``memory_budget_mb``; otherwise it re-reads the files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lingvla.data.errors import NonFiniteValueError
from lingvla.data.running_stats import DEFAULT_BINS, RunningStats

FORMAT = "lingvla.norm_stats/1"


def _check_finite(values: np.ndarray, path: Path, columns: dict, key: str, embodiment: str) -> None:
    bad = ~np.isfinite(values)
    if bad.any():
        row, dim = map(int, np.argwhere(bad)[0])
        raise NonFiniteValueError(f"{embodiment} {key} dim {dim} is {values[row, dim]} "
                                  f"({int(bad.any(1).sum())} bad rows in this file)", path=str(path),
                                  key=key, episode=int(columns["episode_index"][row, 0]),
                                  frame=int(columns["frame_index"][row, 0]))


def compute_norm_stats(datasets, embodiment, *, registry=None, num_bins: int = DEFAULT_BINS,
                       memory_budget_mb: float = 512) -> dict:
    """Stats of one embodiment over one or more datasets: {"state": {...}, "action": {...}, "count": N}.

    ``datasets``: paths, LeRobotDataset objects, or dicts {"path" (or "root"), "episodes" or
    "exclude_episodes"} that count only the selected episodes (as the training mixture samples
    them); ``embodiment``: a name or an Embodiment.
    """
    from lingvla.data.embodiments import resolve_embodiment
    from lingvla.data.lerobot import LeRobotDataset
    from lingvla.data.samples import selected_episodes

    emb = resolve_embodiment(embodiment, registry)
    sources, selections = [], []
    for item in datasets:
        spec = dict(item) if isinstance(item, dict) else {"path": item}
        root = spec.get("path", spec.get("root"))
        source = root if isinstance(root, LeRobotDataset) else LeRobotDataset(root)
        sources.append(source)
        selections.append(selected_episodes(source, spec.get("episodes"), spec.get("exclude_episodes")))
    stats = {"state": RunningStats(num_bins), "action": RunningStats(num_bins)}
    kept: list[dict[str, np.ndarray]] | None = []
    kept_bytes = 0

    def batches():
        for source, selection in zip(sources, selections):
            emb.validate(source)
            for path, columns in source.iter_data_files(emb.columns()):
                if selection is not None:
                    rows = np.isin(columns["episode_index"].reshape(-1), list(selection))
                    if not rows.any():  # a file holding none of the selected episodes
                        continue
                    columns = {k: v[rows] for k, v in columns.items()}
                batch = {}
                for key in ("state", "action"):
                    values = emb.gather(key, columns)
                    _check_finite(values, path, columns, key, emb.name)
                    batch[key] = values
                yield batch

    for batch in batches():
        for key, values in batch.items():
            stats[key].update(values)
        if kept is not None:
            kept.append(batch)
            kept_bytes += sum(v.nbytes for v in batch.values())
            if kept_bytes > memory_budget_mb * 2**20:
                kept = None
    for batch in (kept if kept is not None else batches()):
        for key, values in batch.items():
            stats[key].update_histogram(values)
    if stats["state"].count == 0:
        raise ValueError(f"no frames found for embodiment {emb.name} in {[str(s.root) for s in sources]}")
    out = {key: s.result() for key, s in stats.items()}
    out["state"]["names"] = emb.dim_names("state")
    out["action"]["names"] = emb.dim_names("action")
    out["count"] = stats["state"].count
    out["sources"] = [str(s.root) for s in sources]
    return out


def write_norm_stats(path: str | Path, embodiment: str, stats: dict, *, merge: bool = True) -> dict:
    """Write (or merge into) a norm_stats.json:

        {"norm_stats": {<embodiment>: {"state": {mean, std, min, max, q01, q02, q10, q50, q90, q98, q99,
                                                 count, names, quantile_error_bound},
                                       "action": {...}}},
         "count": <frames over all embodiments>, "counts": {<embodiment>: N},
         "sources": {<embodiment>: [dataset dirs]}, "format": "lingvla.norm_stats/1", "method": "..."}

    A superset of the released layout ({"norm_stats": {key: {...}}, "count": N}) with one more level,
    the embodiment; `Normalizer.from_file` reads both.
    """
    path = Path(path)
    data: dict = {}
    if merge and path.exists():
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT:
            raise ValueError(f"{path} exists and is not a {FORMAT} file; pass another --out")
    data.setdefault("norm_stats", {})[embodiment] = {"state": stats["state"], "action": stats["action"]}
    data.setdefault("counts", {})[embodiment] = int(stats["count"])
    data.setdefault("sources", {})[embodiment] = stats.get("sources", [])
    data["count"] = int(sum(data["counts"].values()))
    data["format"] = FORMAT
    data["method"] = ("exact mean/std/min/max (float64); quantiles from a per-dim histogram of "
                      "num_bins equal bins over [min, max], |error| <= quantile_error_bound")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    return data
