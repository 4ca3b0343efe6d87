"""`lingvla sweep SPEC.yaml`: a grid of (demonstrations, training seed, variant) cells, each trained
with the demo's recipe for a fixed number of steps and evaluated closed loop; one CSV row per cell
and a plot of success (95% intervals) against the number of demonstrations.

    out: runs/scaling            # (or --out)
    task: transfer_cube
    demonstrations: [10, 25, 50, 100, 200]
    train_seeds: [0, 1]
    variants:                    # name -> training-config overrides (key=value), all cells get `overrides`
      base: []
      depth: [model.depth.enabled=true, data.depth_cache=true]
    overrides: []
    steps: 4000
    eval_episodes: 100
    eval_seed: 900000            # one fresh range for every cell, so cells pair episode by episode
    image_size: 112
    workers: 2
    depth: true                  # also store depth maps (default false; needed by sim-depth variants,
                                 # data without them is generated again)

A variant with depth distillation and `data.depth_cache=true` reads the teacher's tokens from the
dataset's depth cache, which the sweep computes once after the data (and again when the data is
regenerated or the cache does not fit the variant's model: image size, tokens, cameras), as
`lingvla depth-cache` would. Without `data.depth_cache=true` the depth maps are read per sample,
about 2.7 s per batch of 32 at 112 px.

The demonstrations are generated once, the largest count, from seeds 0, 1, ... (again, all of
them, when a grown grid needs more: the seeds give the same first episodes); a cell with n
demonstrations trains on the first n of them. Resumable: rerun the same command after a kill and
finished cells (rows of results.csv) are kept, an interrupted training resumes from its last
checkpoint. A cell that fails is logged to failures.jsonl and the sweep goes on with the others.

comparisons.csv pairs finished cells episode by episode (every cell is evaluated on the same seeds):
each variant against the first at the same number of demonstrations, and each number of
demonstrations against the next smaller one, with the exact McNemar p-value, per training seed and
pooled over seeds. trend.csv fits success against log2(demonstrations) with each training run as
one point (the spread between training seeds is part of the noise), over all sizes and from each
larger size up, with a permutation p-value.

Several processes can work through one grid at once (`lingvla sweep SPEC --jobs N`, or the same
command started N times on the same out/): each takes the next cell nobody holds. A process holds
its cell by a lock on cells/<cell>/.lock that the system drops when the process dies, so a killed
job's cell is taken up again by the next run; the data is generated once, under out/.data.lock.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import json
import os
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .demo import DEMO_RECIPE, DEMO_TASK, demo_cameras, demo_train_config, window_stop_from_dataset

TREND_FIELDS = ("variant", "from_demonstrations", "sizes", "runs", "slope_per_doubling", "p")
COMPARISON_FIELDS = ("a", "b", "train_seeds", "pairs", "successes_a", "successes_b", "only_a", "only_b", "p",
                     "runs_p")
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


@contextlib.contextmanager
def file_lock(path: Path, wait: bool = True):
    """An exclusive lock on `path` (created if missing) for the block; yields whether it was taken
    (always, when `wait`). The system releases it when the holder dies, however it dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def append_row(path: Path, row: dict) -> None:
    with file_lock(path.with_name(path.name + ".lock")):  # one header, whole rows, across jobs
        new = not path.is_file() or path.stat().st_size == 0
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
            if new:
                writer.writeheader()
            writer.writerow({k: row.get(k, "") for k in CSV_FIELDS})
            f.flush()


def cell_lock(out: Path, cell: str) -> Path:
    return out / "cells" / cell / ".lock"


def held_elsewhere(out: Path, cells: list[str]) -> list[str]:
    """The cells another process is running now (their lock is held)."""
    busy = []
    for cell in cells:
        if cell_lock(out, cell).is_file():
            with file_lock(cell_lock(out, cell), wait=False) as free:
                if not free:
                    busy.append(cell)
    return busy


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


def depth_variants(spec: SweepSpec, data_dir: Path, out: Path) -> dict:
    """{variant: its training config} for the variants with depth distillation on. A variant whose
    teacher reads the simulator's depth maps needs `depth: true` (ValueError naming it otherwise)."""
    found = {}
    for variant, items in spec.variants.items():
        try:
            config = demo_train_config(data_dir, out / "probe", spec.image_size, [*spec.overrides, *items])
        except (ValueError, TypeError, KeyError):
            continue  # a variant that cannot be configured fails in its own cells, logged with them
        if not config.model.depth.enabled:
            continue
        if config.data.depth_teacher == "sim-depth" and not spec.depth:
            raise ValueError(f"variant {variant!r} distills depth from the simulator's depth maps "
                             "(sim-depth), which the sweep stores only with `depth: true` in its spec")
        found[variant] = config
    return found


def ensure_depth_caches(variants: dict, data_dir: Path, progress: bool = True, log=print) -> list[Path]:
    """Compute the depth cache each of `variants` (depth_variants) reads with `data.depth_cache`,
    unless the dataset already holds one that fits it (frames, image size, tokens, cameras); returns
    the caches computed. Call it holding the data lock."""
    from lingvla.data.depth import DepthCache, MissingDepthError, write_depth_cache
    from lingvla.data.lerobot import LeRobotDataset
    from lingvla.model.depth import make_teacher

    made = []
    frames = None
    for variant, config in variants.items():
        depth, data = config.model.depth, config.data
        if not data.depth_cache:
            continue
        frames = frames if frames is not None else LeRobotDataset(data_dir).num_frames
        try:
            DepthCache(data_dir, data.depth_teacher, num_frames=frames,
                       image_size=config.model.image_size, num_latents=depth.num_latents,
                       teacher_dim=depth.teacher_dim, camera_keys=[f"observation.images.{c}"
                                                                   for c in demo_cameras(config)])
            continue  # it fits
        except MissingDepthError as why:
            log(f"depth cache for variant {variant}: {why}; computing it", flush=True)
        teacher = make_teacher(data.depth_teacher, depth, data.depth_teacher_path)
        made.append(write_depth_cache(data_dir, data.depth_teacher, teacher, image_size=config.model.image_size,
                                      teacher_path=data.depth_teacher_path, overwrite=True, progress=progress))
    return made


def run_sweep(spec: SweepSpec, progress: bool = True, log=print, jobs: int = 1) -> dict:
    """Run (or finish) every cell, in `jobs` processes; returns {"rows": [...], "failed": [...],
    "running_elsewhere": [...], "csv", "plot"}. Cells another process holds are left to it."""
    from tqdm import tqdm

    from lingvla.data.depth import DEPTH_PREFIX
    from lingvla.data.lerobot import LeRobotDataset

    from .demonstrations import generate_dataset

    if jobs < 1:
        raise ValueError(f"jobs={jobs}: give 1 or more")
    out = Path(spec.out)
    out.mkdir(parents=True, exist_ok=True)
    record = out / f".sweep.yaml.{os.getpid()}"
    record.write_text(yaml.safe_dump(spec.__dict__, sort_keys=False))
    record.replace(out / "sweep.yaml")  # whole, even with several jobs writing it
    results, failures = out / "results.csv", out / "failures.jsonl"
    data_dir = out / "data"
    largest = max(spec.demonstrations)
    depths = depth_variants(spec, data_dir, out)  # a spec that cannot train its depth variants fails here
    with file_lock(out / ".data.lock"):  # one job generates, the others wait for it
        have, has_depth = 0, False
        if (data_dir / "meta" / "info.json").is_file():
            held = LeRobotDataset(data_dir)
            have = held.num_episodes
            has_depth = any(key.startswith(DEPTH_PREFIX) for key in held.features)
        if spec.depth and have and not has_depth:
            log(f"demonstrations: {data_dir} holds no depth maps and the spec asks for them: generating "
                "them again with depth (the same seeds, the same episodes)", flush=True)
            have = 0
        if have < largest:
            cameras = demo_cameras(demo_train_config(data_dir, out / "probe", spec.image_size, spec.overrides))
            if have:  # a grown grid: the same seeds give the same first episodes, so finished cells stand
                log(f"demonstrations: {data_dir} holds {have}, the grid needs {largest}: generating all "
                    f"{largest} again (seeds from 0; the first {have} are the same episodes)", flush=True)
            log(f"demonstrations: {largest} {spec.task} episodes -> {data_dir}", flush=True)
            generate_dataset(data_dir, spec.task, largest, image_size=spec.image_size, cameras=cameras,
                             workers=spec.workers, progress=progress, depth=spec.depth, overwrite=True)
        ensure_depth_caches(depths, data_dir, progress=progress, log=log)
    window_stop = window_stop_from_dataset(data_dir)
    cells = spec.cells()
    names = [c["cell"] for c in cells]
    children = _start_jobs(out, jobs, log) if jobs > 1 else []
    failed = []
    bar = tqdm(total=len(cells), desc="sweep", disable=not progress, dynamic_ncols=True)

    def show(current: str | None = None) -> None:
        finished = finished_cells(results)  # read once per refresh, not once per cell
        bar.n = sum(name in finished for name in names)
        bar.set_postfix(cell=current, refresh=True)

    for cell in cells:
        if cell["cell"] in finished_cells(results):
            continue
        with file_lock(cell_lock(out, cell["cell"]), wait=False) as mine:
            if not mine or cell["cell"] in finished_cells(results):  # another job has it, or just did it
                continue
            show(cell["cell"])
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
        log(json.dumps(row), flush=True)
    while any(child.poll() is None for child, _ in children):
        show()
        time.sleep(1.0)
    for child, job_log in children:
        if child.returncode not in (0, 1):  # 1: some of its cells failed, named below
            log(f"sweep job {child.args} ended with code {child.returncode} ({job_log})", flush=True)
    show()
    bar.close()
    done = finished_cells(results)
    busy = held_elsewhere(out, [n for n in names if n not in done])
    failed = [n for n in names if n not in done and n not in busy]
    rows = [done[n] for n in names if n in done]
    plot = out / "sweep.png"
    if rows:
        against = "by variant" if len({r["demonstrations"] for r in rows}) == 1 else "against demonstrations"
        plot_sweep(rows, plot, f"{spec.task}: success {against} ({spec.steps} steps, "
                               f"{spec.eval_episodes} episodes per cell)")
        write_csv(out / "comparisons.csv", compare_cells(out, rows), COMPARISON_FIELDS)
        write_csv(out / "trend.csv", trends(rows), TREND_FIELDS)
    return {"rows": rows, "failed": failed, "running_elsewhere": busy, "csv": str(results),
            "plot": str(plot) if rows else None}


def compare_cells(out: Path, rows: list[dict]) -> list[dict]:
    """Paired comparisons of finished cells, episode by episode on their shared evaluation seeds
    (exact McNemar): each variant against the first one at the same number of demonstrations, and
    the first variant's consecutive numbers of demonstrations; for each training seed and pooled
    over the seeds both sides have (a pair is a training seed's policy on one evaluation seed). A
    pooled row also has `runs_p`: the runs' success rates compared by an exact permutation test."""
    from .evaluate import load_episode_successes, paired_successes

    cells = {(r["variant"], int(r["demonstrations"]), int(r["train_seed"])): r["cell"] for r in rows}
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    sizes = sorted({int(r["demonstrations"]) for r in rows})
    pairs = [((variants[0], n), (v, n)) for v in variants[1:] for n in sizes]
    first = [n for n in sizes if any(k[:2] == (variants[0], n) for k in cells)]
    pairs += [((variants[0], m), (variants[0], n)) for m, n in zip(first, first[1:])]
    read: dict[str, dict] = {}

    def successes(cell: str) -> dict:  # each cell's report read once, however many pairs it is in
        if cell not in read:
            read[cell] = load_episode_successes(out / "cells" / cell / "eval")
        return read[cell]

    def rate(side: tuple[str, int], seed: int) -> float:
        episodes = successes(cells[(*side, seed)])
        return sum(episodes.values()) / len(episodes)

    found = []
    for a, b in pairs:
        seeds = sorted(s for (v, n, s) in cells if (v, n) == a and (*b, s) in cells)
        if not seeds:
            continue
        name = lambda side: f"{side[0]}-n{side[1]}"  # noqa: E731
        pooled_a, pooled_b = {}, {}
        for seed in seeds:
            ea, eb = successes(cells[(*a, seed)]), successes(cells[(*b, seed)])
            found.append({"a": name(a), "b": name(b), "train_seeds": str(seed), **paired_successes(ea, eb)})
            pooled_a.update({(seed, k): v for k, v in ea.items()})
            pooled_b.update({(seed, k): v for k, v in eb.items()})
        if len(seeds) > 1:
            found.append({"a": name(a), "b": name(b), "train_seeds": " ".join(map(str, seeds)),
                          **paired_successes(pooled_a, pooled_b),
                          "runs_p": runs_permutation_p([rate(a, s) for s in seeds], [rate(b, s) for s in seeds])})
    return found


def runs_permutation_p(a: list[float], b: list[float]) -> float:
    """Two-sided exact permutation p-value for a difference in mean success between two sets of
    training runs (each run one number): the share of all ways to split the runs into groups of
    these sizes whose means differ at least as much. With 2 runs a side it cannot go below 1/3, with
    3 below 1/10: the runs, not the episodes, bound what a comparison can show."""
    import itertools

    import numpy as np

    from .evaluate import round_p

    values = np.array([*a, *b], dtype=float)
    if not len(a) or not len(b):
        raise ValueError("a permutation test needs runs on both sides")
    seen = abs(np.mean(a) - np.mean(b))
    total = values.sum()
    splits = extreme = 0
    for group in itertools.combinations(range(len(values)), len(a)):
        first = values[list(group)].sum()
        diff = abs(first / len(a) - (total - first) / len(b))
        extreme += diff >= seen - 1e-12
        splits += 1
    return round_p(extreme / splits)


def success_trend(rows: list[dict], permutations: int = 20_000, seed: int = 0) -> dict:
    """Least-squares slope of success rate against log2(demonstrations) over training runs (one
    point per cell: a run, not an episode, is the unit, so the spread between training seeds counts),
    in success rate per doubling, and its two-sided permutation p-value (sizes shuffled across runs)."""
    import numpy as np

    from .evaluate import round_p

    x = np.log2([float(r["demonstrations"]) for r in rows])
    y = np.array([float(r["success_rate"]) for r in rows])
    if len(set(x.tolist())) < 2:
        raise ValueError("a trend needs cells of at least two sizes")
    xc = x - x.mean()

    def slope(values):
        return float((xc * (values - values.mean())).sum() / (xc * xc).sum())

    seen = slope(y)
    rng = np.random.default_rng(seed)
    extreme = sum(abs(slope(rng.permutation(y))) >= abs(seen) - 1e-12 for _ in range(permutations))
    return {"runs": len(rows), "slope_per_doubling": round(seen, 4), "p": round_p((extreme + 1) / (permutations + 1))}


def trends(rows: list[dict]) -> list[dict]:
    """success_trend per variant over all its sizes, then from each larger size up while three or
    more sizes remain (does success still rise past N demonstrations?)."""
    found = []
    for variant in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == variant]
        sizes = sorted({int(r["demonstrations"]) for r in mine})
        for start in sizes[:max(1, len(sizes) - 2)] if len(sizes) >= 2 else []:
            part = [r for r in mine if int(r["demonstrations"]) >= start]
            kept = sorted({int(r["demonstrations"]) for r in part})
            found.append({"variant": variant, "from_demonstrations": start, "sizes": " ".join(map(str, kept)),
                          **success_trend(part)})
    return found


def write_csv(path: Path, rows: list[dict], fields: tuple[str, ...]) -> None:
    """Rows to a CSV written whole (a temporary file renamed over it)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def _start_jobs(out: Path, jobs: int, log) -> list[tuple[subprocess.Popen, Path]]:
    """jobs - 1 more processes on the same grid (this one is the first), the cores split evenly
    between them unless OMP_NUM_THREADS says otherwise; each logs to out/jobs/job-K.log."""
    import torch

    from lingvla.train.loop import usable_cores

    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, usable_cores() // jobs))
    os.environ["OMP_NUM_THREADS"] = threads  # the trainer then keeps torch's count as set here
    torch.set_num_threads(int(threads))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    (out / "jobs").mkdir(exist_ok=True)
    children = []
    for k in range(1, jobs):
        job_log = out / "jobs" / f"job-{k}.log"
        with open(job_log, "w") as f:
            cmd = [sys.executable, "-m", "lingvla.cli", "sweep", str(out / "sweep.yaml"), "--out", str(out),
                   "--no-progress"]
            children.append((subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT), job_log))
    log(f"sweep: {jobs} jobs of {threads} thread(s) each; the others log to {out / 'jobs'}", flush=True)
    return children


def pooled(rows: list[dict]) -> dict[tuple[str, int], tuple[int, int]]:
    """(variant, demonstrations) -> (successes, episodes) summed over training seeds."""
    out: dict[tuple[str, int], list[int]] = {}
    for row in rows:
        key = (row["variant"], int(row["demonstrations"]))
        acc = out.setdefault(key, [0, 0])
        acc[0] += int(row["successes"])
        acc[1] += int(row["episodes"])
    return {k: (v[0], v[1]) for k, v in out.items()}


def plot_sweep(rows: list[dict], path: Path, title: str) -> dict[str, list[float]]:
    """Success (pooled over training seeds, 95% interval) with each run as a faint dot, against the
    number of demonstrations; variants side by side at each size. A grid of one size has the variants
    along the x axis instead. Returns the x position of each variant's points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .evaluate import wilson_interval

    fig, ax = plt.subplots(figsize=(7, 4.5))
    totals = pooled(rows)
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    one_size = len({int(r["demonstrations"]) for r in rows}) == 1

    def where(i: int, n: int) -> float:
        if one_size:
            return float(i)
        return n * 1.06 ** (i - (len(variants) - 1) / 2)  # side by side on the log axis

    placed = {}
    for i, variant in enumerate(variants):
        ns = sorted(n for v, n in totals if v == variant)
        rates, lows, highs = [], [], []
        for n in ns:
            k, m = totals[(variant, n)]
            lo, hi = wilson_interval(k, m)
            rates.append(k / m)
            lows.append(k / m - lo)
            highs.append(hi - k / m)
        color = f"C{i}"
        placed[variant] = [where(i, n) for n in ns]
        ax.errorbar(placed[variant], rates, yerr=[lows, highs], color=color, marker="o", capsize=3,
                    linestyle="none" if one_size else "-", label=f"{variant} (pooled over seeds, 95% interval)")
        runs = [r for r in rows if r["variant"] == variant]
        ax.scatter([where(i, int(r["demonstrations"])) for r in runs], [float(r["success_rate"]) for r in runs],
                   color=color, alpha=0.45, s=18)
    if one_size:
        ax.set_xticks(range(len(variants)), variants)
        ax.set_xlim(-0.5, len(variants) - 0.5)
        ax.set_xlabel(f"variant, {int(rows[0]['demonstrations'])} demonstrations (pooled over training seeds with "
                      "95% interval; faint dots: one run each)", fontsize=8)
    else:
        ax.legend(fontsize=8)
        ax.set_xscale("log")
        sizes = sorted({int(r["demonstrations"]) for r in rows})
        ax.set_xticks(sizes, [str(n) for n in sizes])  # the grid's sizes, not powers of ten
        ax.minorticks_off()
        ax.set_xlabel("demonstrations (faint dots: one training run each)")
    ax.set_ylabel("success rate")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return placed
