"""Success against training minutes for `lingvla demo`'s recipe: how to split a time budget
between demonstrations, training and evaluation.

Trains the demo's recipe on a demonstration dataset (made by `lingvla gen-demos` or a demo's
data/), saving a checkpoint every --save-every steps, then evaluates each checkpoint in closed loop
on the same evaluation seeds and prints one JSON line per checkpoint: step, training minutes (the
steps' own time, from metrics.jsonl), steps/s, training loss there, success with its 95% interval.
Writes curve.png and curve.jsonl into --out.

    python benchmarks/demo_curve.py --data runs/demo/data --out runs/curve --steps 8000 \\
        --save-every 1000 --episodes 50 --seed 300000 [--set optim.lr=1e-3 ...]

or, without training, over the checkpoints a run already kept (e.g. `lingvla demo --set
keep_last=100`): python benchmarks/demo_curve.py --run runs/demo/train --out runs/curve ...

A checkpoint in the middle of a cosine schedule was taken at a higher learning rate than a run of
that length ends with: it shows when a policy starts to work, and tends to understate what a run
that stops there reaches.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def training_minutes(metrics: Path) -> dict[int, float]:
    """step -> cumulative minutes of the steps' data, forward, backward and optimizer time."""
    total, out = 0.0, {}
    for line in metrics.read_text().splitlines():
        r = json.loads(line)
        total += r["data_s"] + r["forward_s"] + r["backward_s"] + r["optimizer_s"]
        out[r["step"]] = total / 60.0
    return out


def mean_loss(metrics: Path, step: int, span: int = 100) -> float:
    losses = [json.loads(line) for line in metrics.read_text().splitlines()]
    near = [r["loss"] for r in losses if step - span < r["step"] <= step]
    return sum(near) / len(near)


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["train_minutes"] for r in rows]
    y = [r["success_rate"] for r in rows]
    lo = [r["success_rate"] - r["success_ci95"][0] for r in rows]
    hi = [r["success_ci95"][1] - r["success_rate"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.errorbar(x, y, yerr=[lo, hi], marker="o", capsize=3)
    for r in rows:
        ax.annotate(str(r["step"]), (r["train_minutes"], r["success_rate"]), textcoords="offset points",
                    xytext=(4, -12), fontsize=7)
    ax.set_xlabel("training minutes (steps' own time)")
    ax.set_ylabel("closed-loop success (95% interval)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    from lingvla.sim.demo import DEMO_TASK, demo_train_config, window_stop_from_dataset
    from lingvla.sim.evaluate import evaluate
    from lingvla.train.loop import export_checkpoint, train

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="demonstration dataset to train on")
    parser.add_argument("--run", help="a finished training directory: evaluate its checkpoints, no training")
    parser.add_argument("--out", required=True, help="run directory (train/ + evaluations)")
    parser.add_argument("--task", default=DEMO_TASK)
    parser.add_argument("--steps", type=int, default=8000)
    parser.add_argument("--save-every", type=int, default=1000,
                        help="checkpoint interval (with --run: evaluate the kept checkpoints at multiples of it)")
    parser.add_argument("--episodes", type=int, default=50, help="evaluation episodes per checkpoint")
    parser.add_argument("--seed", type=int, default=300_000, help="first evaluation seed")
    parser.add_argument("--train-seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--workers", type=int, default=2, help="evaluation processes")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="training config overrides")
    args = parser.parse_args()

    from lingvla.sim.demo import DEMO_RECIPE

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if (args.data is None) == (args.run is None):
        parser.error("give --data (train, then evaluate) or --run (evaluate a run's checkpoints)")
    if args.run is not None:
        from lingvla.train.checkpoint import list_checkpoints
        from lingvla.train.config import load_train_config

        run = Path(args.run)
        config = load_train_config(str(run / "train_config.yaml"))
        kept = [step for step, _ in list_checkpoints(run / "checkpoints")]
        steps = [step for step in kept if step % args.save_every == 0 or step == max(kept)]
    else:
        run = out / "train"
        config = demo_train_config(Path(args.data), run, args.image_size or DEMO_RECIPE["model"]["image_size"],
                                   [f"steps={args.steps}", f"save_every={args.save_every}", "keep_last=1000",
                                    *args.set], window_stop=window_stop_from_dataset(args.data),
                                   seed=args.train_seed)
        train(config)
        steps = sorted({*range(args.save_every, args.steps + 1, args.save_every), args.steps})
    metrics = run / "metrics.jsonl"
    minutes = training_minutes(metrics)
    rows = []
    for step in steps:
        export = export_checkpoint(run, step)
        report = evaluate(export, args.task, args.episodes, seed=args.seed, workers=args.workers,
                          out=out / f"eval_step_{step:08d}", videos=0, progress=False)
        row = {"step": step, "train_minutes": round(minutes[step], 2),
               "steps_per_s": round(step / (60 * minutes[step]), 3),
               "loss": round(mean_loss(metrics, step), 5), "success_rate": round(report.success_rate, 4),
               "success_ci95": [round(v, 4) for v in report.success_interval],
               "progress": round(report.progress, 4), "episodes": len(report.episodes),
               "seeds": [args.seed, args.seed + len(report.episodes) - 1]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    (out / "curve.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    window = config.data.datasets[0].get("episode_frames")
    plot(rows, out / "curve.png", f"{args.task}: batch {config.batch_size}, frames {window}, "
                                  f"{config.steps} steps; {args.episodes} episodes per point")


if __name__ == "__main__":
    main()
