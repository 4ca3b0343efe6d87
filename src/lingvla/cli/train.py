"""Training commands: `lingvla train`, `lingvla depth-cache` (depth-teacher targets precomputed once
beside a dataset) and `lingvla bench train`."""

from __future__ import annotations

import argparse
import json


def add_commands(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    p = commands.add_parser("train", help="train a policy (one process, or data-parallel under torchrun)")
    p.add_argument("config", nargs="?", default=None, help="training YAML (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides, e.g. steps=200 model.preset=tiny optim.lr=3e-4")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_train)

    p = commands.add_parser(
        "export", help="inference directory from a training checkpoint (e.g. to evaluate step N)",
        description="Write an inference directory, as a finished run writes to OUTPUT_DIR/export, from "
                    "one of the run's training checkpoints (OUTPUT_DIR/checkpoints/step_N).")
    p.add_argument("run_dir", metavar="OUTPUT_DIR", help="the output_dir of `lingvla train`")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    p.add_argument("--out", default=None, help="default: OUTPUT_DIR/export_step_NNNNNNNN (+ _raw)")
    p.add_argument("--raw", action="store_true",
                   help="the trained weights even when the checkpoint holds an EMA of them (ema_decay)")
    p.add_argument("--layout", choices=("lingvla", "released"), default="lingvla",
                   help="released: the released LingBot-VLA layout (safetensors shards + "
                        "model.safetensors.index.json + config.json) for tools built on the released code")
    p.add_argument("--drop", nargs="*", default=[], metavar="PREFIX",
                   help="with --layout released: our tensors to leave out (e.g. depth_: the released depth "
                        "head differs from ours)")
    p.set_defaults(func=run_export)

    p = commands.add_parser(
        "depth-cache", help="precompute depth-teacher tokens of every frame -> DATASET/depth_cache/TEACHER",
        description="Run a depth teacher once over every frame and camera of a LeRobot dataset and store "
                    "its tokens (float16 .npy per camera + meta.json) in DATASET_DIR/depth_cache/TEACHER/, "
                    "so training with data.depth_cache=true reads targets instead of running the teacher. "
                    "The teacher sees the frames at the model's image size, as it would online.")
    p.add_argument("dataset", metavar="DATASET_DIR")
    p.add_argument("--teacher", choices=("sim-depth", "hf-depth"), required=True,
                   help="sim-depth: true depth maps (observation.depth.<cam>) through a fixed encoder; "
                        "hf-depth: a local transformers depth model on the camera images")
    p.add_argument("--teacher-path", default=None, help="hf-depth: local model directory")
    p.add_argument("--model-config", default=None, metavar="CONFIG.yaml",
                   help="training (or model) YAML giving image_size and depth.num_latents/teacher_dim")
    p.add_argument("--num-latents", type=int, default=None, help="tokens per camera (overrides the config)")
    p.add_argument("--teacher-dim", type=int, default=None, help="token width (overrides the config)")
    p.add_argument("--image-size", type=int, default=None, help="model input size (overrides the config)")
    p.add_argument("--batch-size", type=int, default=32, help="frames per teacher call")
    p.add_argument("--device", default="auto", help="auto: cuda when available")
    p.add_argument("--overwrite", action="store_true", help="replace an existing cache of this teacher")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_depth_cache)

    b = bench.add_parser("train", help="training throughput, step-time split, memory and MFU")
    b.add_argument("--preset", default="tiny")
    b.add_argument("--batch", type=int, default=8)
    b.add_argument("--steps", type=int, default=12)
    b.add_argument("--warmup", type=int, default=2, help="steps left out of the figures")
    b.add_argument("--image-size", type=int, default=None)
    b.add_argument("--workers", type=int, default=2)
    b.add_argument("--device", default="auto")
    b.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="training config overrides")
    b.add_argument("--peak-tflops", type=float, default=None,
                   help="device peak dense TFLOP/s for MFU (default: known GPUs; none on CPU)")
    b.set_defaults(func=bench_train)


def run_train(args: argparse.Namespace) -> int:
    from lingvla.train.config import load_train_config
    from lingvla.train.loop import NonFiniteLossError, train

    # `lingvla train key=value ...` without a file: the first positional is an override.
    overrides = list(args.overrides)
    config_path = args.config
    if config_path is not None and "=" in config_path:
        overrides.insert(0, config_path)
        config_path = None
    config = load_train_config(config_path, overrides)
    try:
        summary = train(config, progress=not args.no_progress)
    except NonFiniteLossError as err:
        print(f"error: {err}", flush=True)
        return 3
    print(json.dumps(summary), flush=True)
    return 0


def run_export(args: argparse.Namespace) -> int:
    from lingvla.train.loop import export_checkpoint

    try:
        out = export_checkpoint(args.run_dir, args.step, args.out, raw=args.raw, layout=args.layout,
                                drop=tuple(args.drop))
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", flush=True)
        return 2
    print(json.dumps({"export": str(out)}), flush=True)
    return 0


def run_depth_cache(args: argparse.Namespace) -> int:
    import json
    import sys
    import time

    import torch

    from lingvla.config import DepthConfig
    from lingvla.data.depth import MissingDepthError, write_depth_cache
    from lingvla.model.depth import HFDepthTeacher, make_teacher

    if args.model_config:
        from lingvla.train.config import load_train_config

        model = load_train_config(args.model_config).model
        depth, image_size = model.depth, model.image_size
    else:
        depth, image_size = DepthConfig(), 224
    depth.num_latents = args.num_latents or depth.num_latents
    depth.teacher_dim = args.teacher_dim or depth.teacher_dim
    image_size = args.image_size or image_size
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    start = time.perf_counter()
    try:
        sized = args.model_config or args.num_latents or args.teacher_dim
        if args.teacher == "hf-depth" and not sized:  # the teacher alone decides N and D
            if not args.teacher_path:
                raise ValueError("the hf-depth teacher needs --teacher-path (a local depth model directory)")
            teacher = HFDepthTeacher(args.teacher_path)
        else:
            teacher = make_teacher(args.teacher, depth, args.teacher_path)
        out = write_depth_cache(args.dataset, args.teacher, teacher, image_size=image_size,
                                teacher_path=args.teacher_path, batch_size=args.batch_size, device=device,
                                overwrite=args.overwrite, progress=not args.no_progress)
    except (MissingDepthError, FileExistsError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    meta = json.loads((out / "meta.json").read_text())
    size = sum(f.stat().st_size for f in out.iterdir())
    print(json.dumps({"depth_cache": str(out), "teacher": meta["teacher"], "frames": meta["num_frames"],
                      "cameras": sorted(meta["cameras"]), "tokens": [meta["num_latents"], meta["teacher_dim"]],
                      "image_size": meta["image_size"], "mb": round(size / 2**20, 2),
                      "seconds": round(time.perf_counter() - start, 1)}), flush=True)
    return 0


PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "4090": 165.0}


def bench_train(args: argparse.Namespace) -> int:
    import resource
    import tempfile
    import time
    from pathlib import Path

    import numpy as np
    import torch

    from lingvla.data.synthetic import write_synthetic_dataset
    from lingvla.train.config import load_train_config
    from lingvla.train.flops import train_flops_per_sample, training_modes
    from lingvla.train.loop import train

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = write_synthetic_dataset(Path(tmp) / "data", num_episodes=4, episode_length=120,
                                           image_hw=(224, 224))
        overrides = [f"model.preset={args.preset}", f"batch_size={args.batch}", f"steps={args.steps}",
                     f"output_dir={tmp}/run", f"data.num_workers={args.workers}", "save_every=1000000",
                     "tensorboard=false", f"device={args.device}", "optim.warmup_steps=0"]
        if args.image_size:
            overrides.append(f"model.image_size={args.image_size}")
        config = load_train_config(None, overrides + list(args.set))
        config.data.datasets = [{"path": str(data_dir), "embodiment": "aloha"}]
        start = time.perf_counter()
        summary = train(config, progress=False, save=False)
        total_s = time.perf_counter() - start
        records = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    timed = records[args.warmup:] or records
    step_s = np.array([r["data_s"] + r["forward_s"] + r["backward_s"] + r["optimizer_s"] for r in timed])
    flops = train_flops_per_sample(config.model, modes=training_modes(config.optim))
    samples_per_s = config.batch_size / float(np.median(step_s))
    device = "cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu"
    out = {"bench": "train", "preset": args.preset, "device": device, "batch": config.batch_size,
           "image_size": config.model.image_size, "cameras": config.model.num_cameras,
           "chunk": config.model.chunk_size, "steps_timed": len(timed), "workers": args.workers,
           "samples_per_s": round(samples_per_s, 2), "step_ms_p50": round(float(np.median(step_s)) * 1000, 1)}
    for key in ("data_s", "forward_s", "backward_s", "optimizer_s"):
        out[key.replace("_s", "_ms")] = round(float(np.median([r[key] for r in timed])) * 1000, 1)
    out["train_gflop_per_sample"] = round(flops["total"] / 1e9, 3)
    out["achieved_tflops"] = round(samples_per_s * flops["total"] / 1e12, 4)
    peak = args.peak_tflops
    if device == "cuda":
        out["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if peak is None:
            name = torch.cuda.get_device_name()
            peak = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    else:
        out["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    if peak:
        out["mfu"] = round(out["achieved_tflops"] / peak, 4)
    out["final_loss"] = summary["final_loss"]
    # Set-up (model build, data, first steps with any compilation) against the timed steps.
    out["warmup_steps_s"] = round(sum(r["data_s"] + r["forward_s"] + r["backward_s"] + r["optimizer_s"]
                                      for r in records[:args.warmup]), 1)
    out["total_s"] = round(total_s, 1)
    print(json.dumps(out), flush=True)
    return 0
