"""`lingvla serve`, `lingvla bench serve` and `lingvla bench smoothness`."""

from __future__ import annotations

import argparse
import os


def add_commands(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "serve", help="serve a checkpoint over OpenPI's websocket protocol",
        description="Serve an inference checkpoint over OpenPI's websocket protocol (msgpack-numpy, "
                    "metadata on connect, GET /healthz); openpi-client's WebsocketClientPolicy works "
                    "against it. SIGTERM/SIGINT finish the requests in flight and exit 0.")
    p.add_argument("checkpoint", help="inference checkpoint directory (model.safetensors, config.yaml, ...)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed at start)")
    p.add_argument("--token", default=None,
                   help="require 'Authorization: Api-Key <T>' or 'Bearer <T>' (default: $LINGVLA_SERVE_TOKEN)")
    p.add_argument("--embodiment", default=None, help="robot to serve when the checkpoint knows several")
    p.add_argument("--num-steps", type=int, default=None, help="Euler denoising steps (default: the config's)")
    p.add_argument("--max-message-mb", type=float, default=32.0,
                   help="largest request answered (bigger ones get an error reply)")
    p.add_argument("--rtc-method", default="inpaint", choices=["inpaint", "guidance"],
                   help="real-time chunking sampler when a request carries prefix_actions")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="weights' dtype (auto: bfloat16 on CUDA, float32 on CPU)")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="replay each chunk as one CUDA graph (needs a CUDA --device; 5.4x faster for 4B)")
    p.add_argument("--compile", action="store_true",
                   help="with --cuda-graphs: torch.compile the layers before capturing the graph and "
                        "fuse the expert's matmuls (slower start, faster chunks; BENCHMARKS.md)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--allow-missing-cameras", action="store_true",
                   help="serve observations that lack a camera, its slot masked out (default: an error naming it)")
    p.add_argument("--released-use-length", type=int, default=None,
                   help="rows of each chunk returned to clients of the released LingBot-VLA messages "
                        "(observation.images.*, task; reply 'action'); default: the whole chunk")
    p.set_defaults(func=serve)

    e = commands.add_parser(
        "eval-open", help="open-loop action error of a checkpoint on recorded episodes, with plots",
        description="Give the served policy each recorded observation every STRIDE frames and compare its "
                    "chunk, in robot units, with the recorded actions: error per joint, chunk-boundary jumps "
                    "against the recording's, a PNG per episode, one JSON line.")
    e.add_argument("checkpoint", metavar="CHECKPOINT_DIR")
    e.add_argument("dataset", metavar="DATASET_DIR", help="a LeRobot dataset of the checkpoint's embodiment")
    e.add_argument("--episodes", type=int, nargs="*", default=None, help="episode_index values (default: the first N)")
    e.add_argument("--num-episodes", type=int, default=5, help="N when --episodes is not given")
    e.add_argument("--stride", type=int, default=None, help="frames between chunks (default: the chunk size)")
    e.add_argument("--embodiment", default=None, help="when the checkpoint knows several")
    e.add_argument("--seed", type=int, default=0, help="seeds each chunk's flow noise")
    e.add_argument("--out", default=None, help="plots directory (default: CHECKPOINT/../eval_open)")
    e.add_argument("--device", default="cpu")
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(func=run_eval_open)

    b = bench.add_parser("serve", help="ms per chunk through Policy.infer and through the server (loopback)")
    _policy_args(b)
    b.add_argument("--repeats", type=int, default=30)
    b.add_argument("--warmup", type=int, default=3)
    b.add_argument("--camera-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="client camera images (default: the model's image size)")
    b.add_argument("--rtc", action="store_true", help="also time Policy.infer with an RTC prefix")
    b.add_argument("--delay", type=int, default=5, help="RTC prefix delay for --rtc")
    b.set_defaults(func=_bench_serve)

    s = bench.add_parser("smoothness", help="chunk-boundary jumps: plain, async, ensembling, RTC; PNG plot")
    _policy_args(s, image_size=56)
    s.add_argument("--ticks", type=int, default=200, help="control ticks per mode")
    s.add_argument("--execute-horizon", type=int, default=25, help="actions executed per chunk (s)")
    s.add_argument("--delay", type=int, default=5, help="inference delay in control ticks (d)")
    s.add_argument("--ensemble-horizon", type=int, default=1, help="request period with ensembling (ACT: 1)")
    s.add_argument("--ensemble-decay", type=float, default=0.01, help="ACT's m in exp(-m i)")
    s.add_argument("--length-scale", type=float, default=6.0,
                   help="time correlation (steps) of the noise fed to a random model")
    s.add_argument("--white-noise", action="store_true", help="i.i.d. noise (the default for --checkpoint)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default="runs/bench/chunk_smoothness.png")
    s.set_defaults(func=_bench_smoothness)


def _policy_args(p: argparse.ArgumentParser, image_size: int | None = None) -> None:
    p.add_argument("--checkpoint", default=None, help="inference checkpoint (default: a random tiny model)")
    p.add_argument("--image-size", type=int, default=image_size, help="random model's image size")
    p.add_argument("--steps", type=int, default=None, help="Euler denoising steps")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")


def serve(args: argparse.Namespace) -> int:
    import json
    import logging
    import threading

    import torch

    from lingvla.serve.policy import Policy
    from lingvla.serve.server import PolicyServer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    token = args.token or os.environ.get("LINGVLA_SERVE_TOKEN") or None
    if token is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        logging.getLogger("lingvla.serve").warning(
            "serving on %s without a token: anyone who can reach it can drive the policy", args.host)
    device = torch.device(args.device)
    if args.cuda_graphs and device.type != "cuda":
        raise SystemExit(f"error: --cuda-graphs needs a CUDA --device; got {args.device!r}")
    if args.compile and not args.cuda_graphs:
        raise SystemExit("error: --compile needs --cuda-graphs (the compiled layers are captured in the graph)")
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(
        args.dtype, torch.bfloat16 if device.type == "cuda" else torch.float32)
    policy = Policy.from_checkpoint(args.checkpoint, embodiment=args.embodiment, device=device, dtype=dtype,
                                    num_steps=args.num_steps, graphed=args.cuda_graphs,
                                    compile_layers=args.compile, allow_missing_cameras=args.allow_missing_cameras)
    if args.cuda_graphs:  # capture (and compile) now, not on the first robot's request
        logging.getLogger("lingvla.serve").info("warm-up chunk (CUDA graph%s): %.1f s",
                                                " + compile" if args.compile else "", policy.warmup())
    server = PolicyServer(policy, host=args.host, port=args.port, token=token,
                          max_message_bytes=int(args.max_message_mb * 2**20), rtc_method=args.rtc_method,
                          released_use_length=args.released_use_length)

    def announce():
        server.ready.wait()
        print(json.dumps({"serving": f"ws://{server.host}:{server.port}", "port": server.port,
                          "healthz": f"http://{server.host}:{server.port}/healthz",
                          "token": token is not None}), flush=True)

    threading.Thread(target=announce, daemon=True).start()
    return server.run()


def _bench_serve(args: argparse.Namespace) -> int:
    from lingvla.serve.bench import bench_serve

    return bench_serve(args)


def _bench_smoothness(args: argparse.Namespace) -> int:
    from lingvla.serve.bench import bench_smoothness

    return bench_smoothness(args)


def run_eval_open(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from lingvla.data.errors import DataError
    from lingvla.serve.open_loop import evaluate_open_loop
    from lingvla.serve.policy import ObservationError, Policy

    out = Path(args.out) if args.out else Path(args.checkpoint).resolve().parent / "eval_open"
    try:
        policy = Policy.from_checkpoint(args.checkpoint, embodiment=args.embodiment, device=args.device)
        report = evaluate_open_loop(policy, args.dataset, episodes=args.episodes, num_episodes=args.num_episodes,
                                    stride=args.stride, seed=args.seed, out_dir=out,
                                    progress=not args.no_progress, checkpoint=args.checkpoint)
    except (FileNotFoundError, ValueError, DataError, ObservationError) as err:
        print(f"error: {err}", flush=True)
        return 2
    (out / "report.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report), flush=True)
    return 0
