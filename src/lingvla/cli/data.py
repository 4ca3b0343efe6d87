"""CLI commands of the data area: `lingvla stats`, `lingvla embodiment inspect|template` and
`lingvla bench data`."""

from __future__ import annotations

import argparse
import json


def add_commands(commands, bench) -> None:
    p = commands.add_parser("stats", help="normalization statistics of LeRobot dataset(s) -> norm_stats.json")
    p.add_argument("datasets", nargs="+", metavar="DATASET_DIR",
                   help="one or more LeRobot datasets (v2.1/v3.0) of the same embodiment")
    p.add_argument("--embodiment", default=None,
                   help="embodiment name (default: from info.json's robot_type)")
    p.add_argument("--out", default=None,
                   help="output file (default DATASET_DIR/norm_stats.json); an existing lingvla stats file "
                        "is updated: the embodiment's entry is replaced, others are kept")
    p.add_argument("--embodiments", action="append", default=[], metavar="PATH",
                   help="extra embodiment YAML file or directory (repeatable)")
    p.add_argument("--num-bins", type=int, default=None, help="histogram bins per dim for quantiles")
    p.set_defaults(func=run_stats)

    e = commands.add_parser("embodiment", help="how a dataset maps onto an embodiment; a template for a new one")
    sub = e.add_subparsers(dest="embodiment_command", metavar="ACTION", required=True)
    i = sub.add_parser("inspect", help="each dim's column and unified position, each camera slot's key",
                       description="Show how a LeRobot dataset's columns and cameras map onto an embodiment and "
                                   "the unified action space; an error when they do not fit, or when no "
                                   "embodiment is named and the dataset's robot_type names none.")
    i.add_argument("dataset", metavar="DATASET_DIR")
    i.add_argument("--embodiment", default=None, help="default: the one whose robot_types hold info.json's robot_type")
    i.add_argument("--embodiments", action="append", default=[], metavar="PATH",
                   help="extra embodiment YAML file or directory (repeatable)")
    i.add_argument("--width", type=int, default=75, help="unified width (model.action_dim: 75 for lingbot-4b)")
    i.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    i.set_defaults(func=run_embodiment_inspect)
    t = sub.add_parser("template", help="a YAML embodiment to complete, from a dataset's columns and cameras")
    t.add_argument("dataset", metavar="DATASET_DIR")
    t.add_argument("name", help="the new embodiment's name")
    t.add_argument("--out", default=None, help="write here instead of printing")
    t.set_defaults(func=run_embodiment_template)

    b = bench.add_parser("data", help="loader samples/s (0/1/2 workers) and stats time per million frames")
    b.add_argument("--workers", default="0,1,2", help="comma-separated worker counts")
    b.add_argument("--batch-size", type=int, default=8)
    b.add_argument("--batches", type=int, default=20, help="timed batches per worker setting")
    b.add_argument("--image-size", type=int, default=224)
    b.add_argument("--chunk-size", type=int, default=50)
    b.add_argument("--source-size", default="480x640", help="HxW of the generated camera videos")
    b.add_argument("--codec", default="h264", choices=("h264", "av1"))
    b.add_argument("--stats-frames", type=int, default=200_000,
                   help="frames of the parquet-only dataset timed for `lingvla stats`")
    b.set_defaults(func=run_bench_data)


def run_stats(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lingvla.data.embodiments import load_registry, resolve_embodiment
    from lingvla.data.lerobot import LeRobotDataset
    from lingvla.data.stats import DEFAULT_BINS, compute_norm_stats, write_norm_stats

    registry = load_registry(args.embodiments)
    sources = [LeRobotDataset(d) for d in args.datasets]
    emb = resolve_embodiment(args.embodiment, registry, sources[0])
    stats = compute_norm_stats(sources, emb, num_bins=args.num_bins or DEFAULT_BINS)
    out = Path(args.out) if args.out else Path(args.datasets[0]) / "norm_stats.json"
    write_norm_stats(out, emb.name, stats)
    print(json.dumps({"out": str(out), "embodiment": emb.name, "count": stats["count"],
                      "state_dim": len(stats["state"]["mean"]), "action_dim": len(stats["action"]["mean"])}))
    return 0


def run_embodiment_inspect(args: argparse.Namespace) -> int:
    from lingvla.data.embodiments import load_registry
    from lingvla.data.errors import DataError
    from lingvla.data.inspect import format_report, inspect_dataset

    try:
        report = inspect_dataset(args.dataset, args.embodiment, load_registry(args.embodiments), args.width)
    except (DataError, KeyError, ValueError) as err:
        print(f"error: {err.args[0] if isinstance(err, KeyError) else err}", flush=True)
        return 2
    print(json.dumps(report) if args.json else format_report(report), flush=True)
    return 0


def run_embodiment_template(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lingvla.data.errors import DataError
    from lingvla.data.inspect import template

    try:
        text = template(args.dataset, args.name)
    except DataError as err:
        print(f"error: {err}", flush=True)
        return 2
    if args.out:
        Path(args.out).write_text(text)
        print(json.dumps({"out": args.out}), flush=True)
    else:
        print(text, end="", flush=True)
    return 0


def run_bench_data(args: argparse.Namespace) -> int:
    import os
    import tempfile
    import time
    from pathlib import Path

    from lingvla.data.lerobot import LeRobotDatasetWriter
    from lingvla.data.config import DataConfig
    from lingvla.data.mixture import make_dataloader
    from lingvla.data.samples import SampleSpec
    from lingvla.data.stats import compute_norm_stats, write_norm_stats
    from lingvla.data.synthetic import trajectories, write_synthetic_dataset

    h, w = (int(v) for v in args.source_size.lower().split("x"))
    common = {"bench": "data", "cpu_count": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="lingvla-bench-data-") as tmp:
        root = Path(tmp) / "video"
        t0 = time.perf_counter()
        write_synthetic_dataset(root, num_episodes=6, episode_length=100, image_hw=(h, w),
                                video_codec=args.codec)
        gen_s = time.perf_counter() - t0
        stats = compute_norm_stats([root], "aloha")
        write_norm_stats(Path(tmp) / "norm_stats.json", "aloha", stats, merge=False)
        for workers in (int(x) for x in args.workers.split(",")):
            loader = make_dataloader(DataConfig(datasets=[root], num_workers=workers),
                                     SampleSpec(chunk_size=args.chunk_size, image_size=args.image_size),
                                     batch_size=args.batch_size, norm_stats=Path(tmp) / "norm_stats.json")
            it = iter(loader)
            # Not throughput: worker start-up, first file openings, and the batches workers
            # prefetched meanwhile (up to 2 per worker).
            for _ in range(1 + 2 * workers):
                next(it)
            t0 = time.perf_counter()
            for _ in range(args.batches):
                next(it)
            dt = time.perf_counter() - t0
            del it
            print(json.dumps({**common, "metric": "loader_samples_per_s", "num_workers": workers,
                              "value": round(args.batches * args.batch_size / dt, 1),
                              "batch_size": args.batch_size, "cameras": 3, "image_size": args.image_size,
                              "chunk_size": args.chunk_size, "source_video": f"{h}x{w} {args.codec} gop2",
                              "dataset_frames": 6 * 100, "generate_s": round(gen_s, 1),
                              "load_average_1m": round(os.getloadavg()[0], 2)}), flush=True)

        # `lingvla stats` cost: a parquet-only dataset (no video), timed end to end, per frame.
        proot = Path(tmp) / "parquet"
        writer = LeRobotDatasetWriter(proot, fps=50, robot_type="aloha", features={
            "observation.state": {"dtype": "float32", "shape": [14]},
            "action": {"dtype": "float32", "shape": [14]}})
        per_episode = 1000
        for e in range(max(1, args.stats_frames // per_episode)):
            state, action = trajectories(per_episode, 14, seed=e)
            writer.add_episode(task="bench", frames={"observation.state": state, "action": action})
        writer.finalize()
        frames = writer.num_frames
        t0 = time.perf_counter()
        stats = compute_norm_stats([proot], "aloha")
        write_norm_stats(Path(tmp) / "norm_stats_parquet.json", "aloha", stats, merge=False)
        dt = time.perf_counter() - t0
        print(json.dumps({**common, "metric": "stats_seconds_per_million_frames",
                          "value": round(dt / frames * 1e6, 2), "frames_measured": frames,
                          "seconds_measured": round(dt, 3), "extrapolated": True,
                          "dims": "state 14 + action 14", "note": "measured on a generated dataset, "
                          "scaled linearly to 1M frames"}), flush=True)
    return 0
