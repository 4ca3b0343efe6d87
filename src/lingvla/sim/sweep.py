"""`lingvla sweep SPEC.yaml`: a grid of (demonstrations, training seed, variant) cells, each trained
with the demo's recipe for a fixed number of steps and evaluated closed loop; one CSV row per cell
and a plot of success (95% intervals) against the number of demonstrations.

    out: runs/scaling            # (or --out)
    task: transfer_cube
    demonstrations: [10, 25, 50, 100, 200]
    train_seeds: [0, 1]
    variants:                    # name -> training-config overrides (key=value), all cells get `overrides`
      base: []
      depth: [model.depth.enabled=true]
    overrides: []
    steps: 4000
    eval_episodes: 100
    eval_seed: 900000            # one fresh range for every cell, so cells pair episode by episode
    image_size: 112
    workers: 2
    depth: false                 # also store depth maps (needed by variants with depth on)

The demonstrations are generated once, the largest count, from seeds 0, 1, ... (again, all of
them, when a grown grid needs more: the seeds give the same first episodes); a cell with n
demonstrations trains on the first n of them. Resumable: rerun the same command after a kill and
finished cells (rows of results.csv) are kept, an interrupted training resumes from its last
checkpoint. A cell that fails is logged to failures.jsonl and the sweep goes on with the others.
"""

from __future__ import annotations

import csv
import json
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .demo import DEMO_RECIPE, DEMO_TASK, demo_cameras, demo_train_config, window_stop_from_dataset

CSV_FIELDS = ("cell", "variant", "demonstrations", "train_seed", "steps", "successes", "episodes",
              "success_rate", "ci_low", "ci_high", "progress", "final_loss", "train_min", "eval_seeds")


@dataclass
class SweepSpec:
    out: str = "runs/sweep"
    task: str = DEMO_TASK
    demonstrations: list[int] = field(default_factory=lambda: [50])
    train_seeds: list[int] = field(default_factory=lambda: [0])
    variants: dict[str, list[str]] = field(default_factory=lambda: {"base": []})
    overrides: list[str] = field(default_factory=list)
    steps: int = 4000
    eval_episodes: int = 100
    eval_seed: int = 900_000
    image_size: int = DEMO_RECIPE["model"]["image_size"]
    workers: int = 2
    depth: bool = False
    eval_max_steps: int | None = None  # shorter episodes, for quick checks only

    @classmethod
    def load(cls, path: str | Path, **overrides) -> "SweepSpec":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"sweep spec {path} does not exist")
        raw = yaml.safe_load(path.read_text()) or {}
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"{path}: unknown sweep key(s) {unknown}; known: {sorted(known)}")
        raw.update({k: v for k, v in overrides.items() if v is not None})
        spec = cls(**raw)
        spec.validate()
        return spec

    def validate(self) -> None:
        if not self.demonstrations or any(int(n) < 1 for n in self.demonstrations):
            raise ValueError(f"demonstrations={self.demonstrations}: give counts >= 1")
        if not self.train_seeds or not self.variants:
            raise ValueError("train_seeds and variants must not be empty")
        for name, items in self.variants.items():
            if not isinstance(items, list) or any("=" not in str(i) for i in items):
                raise ValueError(f"variant {name!r}: expected a list of key=value overrides; got {items!r}")

    def cells(self) -> list[dict]:
        return [{"cell": f"{variant}-n{n}-s{seed}", "variant": variant, "demonstrations": int(n),
                 "train_seed": int(seed)}
                for variant in self.variants for n in sorted(self.demonstrations) for seed in self.train_seeds]


def finished_cells(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        return {row["cell"]: row for row in csv.DictReader(f)}


def append_row(path: Path, row: dict) -> None:
    new = not path.is_file() or path.stat().st_size == 0
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        if new:
            writer.writeheader()
        writer.writerow({k: row.get(k, "") for k in CSV_FIELDS})
        f.flush()


def run_cell(spec: SweepSpec, cell: dict, data_dir: Path, window_stop, out: Path, progress: bool) -> dict:
    from lingvla.train.loop import train

    from .evaluate import evaluate

    cell_dir = out / "cells" / cell["cell"]
    config = demo_train_config(data_dir, cell_dir / "train", spec.image_size,
                               [*spec.overrides, *spec.variants[cell["variant"]], f"steps={spec.steps}"],
                               window_stop=window_stop, seed=cell["train_seed"])
    config.data.datasets[0]["episodes"] = list(range(cell["demonstrations"]))
    started = time.perf_counter()
    summary = train(config, progress=progress)
    train_min = (time.perf_counter() - started) / 60
    report = evaluate(summary["export"], spec.task, spec.eval_episodes, seed=spec.eval_seed,
                      out=cell_dir / "eval", workers=spec.workers, videos=0, progress=progress,
                      **({"max_steps": spec.eval_max_steps} if spec.eval_max_steps else {}))
    s = report.summary()
    lo, hi = report.success_interval
    return {**cell, "steps": summary["steps"], "successes": s["successes"], "episodes": s["episodes"],
            "success_rate": round(report.success_rate, 4), "ci_low": round(lo, 4), "ci_high": round(hi, 4),
            "progress": round(report.progress, 4), "final_loss": round(float(summary["final_loss"]), 5),
            "train_min": round(train_min, 2),
            "eval_seeds": f"{spec.eval_seed}-{spec.eval_seed + s['episodes'] - 1}"}


def run_sweep(spec: SweepSpec, progress: bool = True, log=print) -> dict:
    """Run (or finish) every cell; returns {"rows": [...], "failed": [...], "csv", "plot"}."""
    from tqdm import tqdm

    from lingvla.data.lerobot import LeRobotDataset

    from .demonstrations import generate_dataset

    out = Path(spec.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.yaml").write_text(yaml.safe_dump(spec.__dict__, sort_keys=False))
    results, failures = out / "results.csv", out / "failures.jsonl"
    data_dir = out / "data"
    largest = max(spec.demonstrations)
    have = LeRobotDataset(data_dir).num_episodes if (data_dir / "meta" / "info.json").is_file() else 0
    if have < largest:
        cameras = demo_cameras(demo_train_config(data_dir, out / "probe", spec.image_size, spec.overrides))
        if have:  # a grown grid: the same seeds give the same first episodes, so finished cells stand
            log(f"demonstrations: {data_dir} holds {have}, the grid needs {largest}: generating all "
                f"{largest} again (seeds from 0; the first {have} are the same episodes)", flush=True)
        log(f"demonstrations: {largest} {spec.task} episodes -> {data_dir}", flush=True)
        generate_dataset(data_dir, spec.task, largest, image_size=spec.image_size, cameras=cameras,
                         workers=spec.workers, progress=progress, depth=spec.depth, overwrite=True)
    window_stop = window_stop_from_dataset(data_dir)
    done = finished_cells(results)
    cells = spec.cells()
    failed = []
    bar = tqdm(cells, desc="sweep", disable=not progress, dynamic_ncols=True)
    for cell in bar:
        bar.set_postfix(cell=cell["cell"])
        if cell["cell"] in done:
            continue
        try:
            row = run_cell(spec, cell, data_dir, window_stop, out, progress=False)
        except Exception as err:  # one cell's failure must not cost the others
            failed.append(cell["cell"])
            with open(failures, "a") as f:
                f.write(json.dumps({"cell": cell["cell"], "error": f"{type(err).__name__}: {err}",
                                    "traceback": traceback.format_exc()[-4000:]}) + "\n")
            log(f"cell {cell['cell']} failed: {type(err).__name__}: {err} (failures.jsonl); going on", flush=True)
            continue
        append_row(results, row)
        done[cell["cell"]] = row
        log(json.dumps(row), flush=True)
    bar.close()
    rows = [done[c["cell"]] for c in cells if c["cell"] in done]
    plot = out / "sweep.png"
    if rows:
        plot_sweep(rows, plot, f"{spec.task}: success against demonstrations ({spec.steps} steps, "
                               f"{spec.eval_episodes} episodes per cell)")
    return {"rows": rows, "failed": failed, "csv": str(results), "plot": str(plot) if rows else None}


def pooled(rows: list[dict]) -> dict[tuple[str, int], tuple[int, int]]:
    """(variant, demonstrations) -> (successes, episodes) summed over training seeds."""
    out: dict[tuple[str, int], list[int]] = {}
    for row in rows:
        key = (row["variant"], int(row["demonstrations"]))
        acc = out.setdefault(key, [0, 0])
        acc[0] += int(row["successes"])
        acc[1] += int(row["episodes"])
    return {k: (v[0], v[1]) for k, v in out.items()}


def plot_sweep(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .evaluate import wilson_interval

    fig, ax = plt.subplots(figsize=(7, 4.5))
    totals = pooled(rows)
    for i, variant in enumerate(dict.fromkeys(r["variant"] for r in rows)):
        ns = sorted(n for v, n in totals if v == variant)
        rates, lows, highs = [], [], []
        for n in ns:
            k, m = totals[(variant, n)]
            lo, hi = wilson_interval(k, m)
            rates.append(k / m)
            lows.append(k / m - lo)
            highs.append(hi - k / m)
        color = f"C{i}"
        ax.errorbar(ns, rates, yerr=[lows, highs], color=color, marker="o", capsize=3,
                    label=f"{variant} (pooled over seeds, 95% interval)")
        seeds = [r for r in rows if r["variant"] == variant]
        ax.scatter([int(r["demonstrations"]) for r in seeds], [float(r["success_rate"]) for r in seeds],
                   color=color, alpha=0.35, s=14)
    ax.set_xscale("log")
    ax.set_xlabel("demonstrations")
    ax.set_ylabel("success rate")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
