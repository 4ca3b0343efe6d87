"""Model commands: `lingvla import` (a released checkpoint -> a policy directory) and `lingvla bench infer`."""

from __future__ import annotations

import argparse
import json


def add_commands(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    i = commands.add_parser(
        "import", help="a policy directory from a released LingBot-VLA checkpoint (to serve or evaluate it)",
        description="Write a lingvla policy directory (what lingvla serve, eval-sim and eval-open load) from a "
                    "released LingBot-VLA checkpoint directory, its norm-stats file and the robot's embodiment. "
                    "Weights load strictly; the released preprocessing and numerics are set.")
    i.add_argument("released", metavar="RELEASED_DIR", help=".../hf_ckpt: shards, index, config.json")
    i.add_argument("--out", required=True, help="the policy directory to write")
    i.add_argument("--norm-stats", required=True, help="the released norm-stats JSON (either layout) or ours")
    i.add_argument("--embodiment", required=True, help="the robot (e.g. aloha)")
    i.add_argument("--embodiments", action="append", default=[], metavar="PATH", help="extra embodiment YAML")
    i.add_argument("--tokenizer", default=None, help="a local Qwen2.5-VL directory (the release ships none)")
    i.add_argument("--preset", default="lingbot-4b", help="sizes when config.json does not give them")
    i.add_argument("--drop", nargs="*", default=[], metavar="PREFIX",
                   help="tensors to leave out on purpose (e.g. model.depth_align_head.)")
    i.add_argument("--normalization", default="bounds_99_woclip",
                   help="bounds_99_woclip (the released formula), quantile or mean_std")
    i.set_defaults(func=run_import)

    p = bench.add_parser("infer", help="ms per action chunk, KV-cached vs uncached sampling")
    p.add_argument("--preset", default="tiny", help="model preset (tiny | lingbot-4b); random weights")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=10, help="Euler denoising steps")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--image-size", type=int, default=None, help="override the preset's image size")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--attn-backend", default=None, choices=["sdpa", "flex"])
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="also time the cached sampler replayed as one CUDA graph (CUDA, sdpa)")
    p.add_argument("--compile", action="store_true",
                   help="also time the CUDA graph with torch.compile'd layers (timed last: compiling "
                        "changes the model in place)")
    p.add_argument("--fuse-expert", action="store_true",
                   help="also time the graph with the expert's weights concatenated per chunk (after "
                        "--compile's run, compiled too when --compile is given)")
    p.add_argument("--skip-uncached", action="store_true", help="time only the cached sampler(s)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="model config overrides, e.g. llm.num_layers=4 vision.depth=1")
    p.set_defaults(func=bench_infer)


def run_import(args: argparse.Namespace) -> int:
    from lingvla.checkpoint_dir import import_released
    from lingvla.data.errors import DataError

    try:
        out, report = import_released(args.released, args.out, norm_stats=args.norm_stats, embodiment=args.embodiment,
                                      tokenizer=args.tokenizer, preset=args.preset, drop=tuple(args.drop),
                                      normalization=args.normalization, embodiment_paths=args.embodiments or None)
    except (FileNotFoundError, ValueError, KeyError, DataError) as err:
        print(f"error: {err.args[0] if isinstance(err, KeyError) else err}", flush=True)
        return 2
    print(json.dumps({"policy": str(out), "init_from": report}), flush=True)
    return 0


def percentiles(times_ms: list[float]) -> dict[str, float]:
    import numpy as np

    arr = np.asarray(times_ms)
    return {f"p{q}_ms": round(float(np.percentile(arr, q)), 3) for q in (50, 90, 99)}


def bench_infer(args: argparse.Namespace) -> int:
    import time

    import torch

    from lingvla.config import ModelConfig, apply_overrides, preset
    from lingvla.model.lingvla import LingVLA

    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {"num_steps": args.steps, "tokenizer": "tiny"}
    if args.image_size:
        overrides["image_size"] = args.image_size
    if args.attn_backend:
        overrides["attn_backend"] = args.attn_backend
    config = preset(args.preset, **overrides)
    config = ModelConfig.from_dict(apply_overrides(config.to_dict(), args.set))
    dtype = getattr(torch, args.dtype)
    device = torch.device(args.device)
    torch.manual_seed(0)
    with device:
        model = LingVLA(config).to(dtype).eval()
    b = args.batch
    g = torch.Generator().manual_seed(0)
    batch = {
        "images": torch.randint(0, 256, (b, config.num_cameras, 3, config.image_size, config.image_size),
                                dtype=torch.uint8, generator=g),
        "image_mask": torch.ones(b, config.num_cameras, dtype=torch.bool),
        "prompt": ["pick up the cube with the right arm and transfer it to the left arm"] * b,
        "state": torch.randn(b, config.action_dim, generator=g),
        "action_dim_mask": torch.ones(b, config.action_dim, dtype=torch.bool),
    }

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    samplers = {"cached": lambda: model.sample_actions(batch, use_cache=True)}
    if not args.skip_uncached:
        samplers["uncached"] = lambda: model.sample_actions(batch, use_cache=False)
    extra = {}
    if args.cuda_graphs or args.compile or args.fuse_expert:
        from lingvla.model.graphed import GraphedSampler

        # Same noise through every path: a replay must reproduce the eager chunk.
        noise = model.initial_noise(b, torch.Generator(device).manual_seed(1))
        eager = model.sample_actions(batch, noise=noise).float()
    if args.cuda_graphs:
        graphed = GraphedSampler(model, num_steps=args.steps)
        samplers["graphed"] = lambda: graphed.sample(batch)
        replay = graphed.sample(batch, noise=noise).float()
        extra["graphed_max_abs_diff"] = round(float((eager - replay).abs().max()), 6)

    results = {}

    def run(mode, sampler):
        for _ in range(args.warmup):
            sampler()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(args.repeats):
            sync()
            start = time.perf_counter()
            sampler()
            sync()
            times.append((time.perf_counter() - start) * 1000)
        record = {"bench": "infer", "mode": mode, "preset": args.preset, "overrides": args.set, "batch": b,
                  "steps": args.steps, "cameras": config.num_cameras, "image_size": config.image_size,
                  "chunk": config.chunk_size, "device": str(device), "dtype": args.dtype,
                  "attn_backend": config.attn_backend, "threads": torch.get_num_threads(),
                  "repeats": args.repeats, **percentiles(times)}
        if device.type == "cuda":
            record["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
            record["gpu"] = torch.cuda.get_device_name()
        results[mode] = record
        print(json.dumps(record), flush=True)

    for mode, sampler in samplers.items():
        run(mode, sampler)
    # Compiling changes the model in place, so these run after the eager timings.
    variants = [(True, False)] if args.compile else []
    if args.fuse_expert:
        variants.append((args.compile, True))
    for compile_layers, fuse in variants:
        start = time.perf_counter()
        sampler = GraphedSampler(model, num_steps=args.steps, use_graphs=device.type == "cuda",
                                 compile_layers=compile_layers, fuse_expert=fuse)
        first = sampler.sample(batch, noise=noise).float()  # compiles (and captures on CUDA)
        mode = "_".join(["graphed" if sampler.use_graphs else "buffer"]
                        + ["compiled"] * compile_layers + ["fused"] * fuse)
        extra[f"{mode}_first_chunk_s"] = round(time.perf_counter() - start, 1)
        extra[f"{mode}_max_abs_diff"] = round(float((eager - first).abs().max()), 6)
        run(mode, lambda sampler=sampler: sampler.sample(batch))
    summary = {"bench": "infer", **extra}
    for mode in results:
        if mode != "cached":
            summary[f"{mode}_over_cached_p50"] = round(results[mode]["p50_ms"] / results["cached"]["p50_ms"], 3)
    print(json.dumps(summary), flush=True)
    return 0
