"""`lingvla bench serve` (latency through Policy.infer and through the server) and
`lingvla bench smoothness` (the broker across chunk boundaries: plain, ensembled, RTC)."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from lingvla.serve.broker import Execution

PROMPT = "pick up the cube with the right arm and transfer it to the left arm"
CAMERAS = ("top", "left_wrist", "right_wrist")


def random_checkpoint(directory, preset: str = "tiny", image_size: int | None = None, seed: int = 0,
                      embodiment: str = "aloha") -> Path:
    """An inference directory holding a randomly initialised model and identity-like
    normalization stats (robot units = normalized units), for benchmarks."""
    from lingvla import checkpoint_dir
    from lingvla.config import preset as make_config

    overrides = {"image_size": image_size} if image_size else {}
    if preset == "tiny":
        overrides["tokenizer"] = "tiny"
    return checkpoint_dir.write_random(directory, make_config(preset, **overrides), seed=seed,
                                       embodiment=embodiment, stats="identity")


def observation(policy, seed: int = 0, camera_size: tuple[int, int] | None = None) -> dict:
    rng = np.random.default_rng(seed)
    h, w = camera_size or (policy.config.image_size, policy.config.image_size)
    return {"images": {c: rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for c in CAMERAS},
            "state": rng.uniform(-0.5, 0.5, policy.embodiment.state_dim).astype(np.float32),
            "prompt": PROMPT}


def percentiles(times_ms) -> dict[str, float]:
    arr = np.asarray(times_ms)
    return {f"p{q}_ms": round(float(np.percentile(arr, q)), 3) for q in (50, 90, 99)}


def smooth_noise(seed: int, chunk: int, dim: int, length_scale: float = 6.0):
    """Unit-variance Gaussian noise [1, chunk, dim] correlated over time (a Gaussian kernel of
    `length_scale` steps): a random tiny model nearly passes its noise through, so this gives chunks
    that are smooth within and different across calls - a stand-in for a multi-modal policy."""
    import torch

    half = int(np.ceil(3 * length_scale))
    kernel = np.exp(-0.5 * (np.arange(-half, half + 1) / length_scale) ** 2)
    kernel /= np.sqrt((kernel ** 2).sum())
    white = np.random.default_rng(seed).standard_normal((chunk + 2 * half, dim))
    smooth = np.stack([np.convolve(white[:, j], kernel, mode="valid") for j in range(dim)], axis=1)
    return torch.from_numpy(smooth[None].astype(np.float32))


def _load_policy(args, tmp: str):
    import torch

    from lingvla.serve.policy import Policy

    if args.threads:
        torch.set_num_threads(args.threads)
    directory = args.checkpoint or random_checkpoint(Path(tmp) / "export", image_size=args.image_size)
    return Policy.from_checkpoint(directory, num_steps=args.steps), bool(args.checkpoint)


# ----------------------------------------------------------------------------- bench serve
def bench_serve(args) -> int:
    import torch

    from lingvla.serve.protocol import packb
    from lingvla.serve.rtc import RTCConfig
    from lingvla.serve.server import ServerThread

    with tempfile.TemporaryDirectory() as tmp:
        policy, _ = _load_policy(args, tmp)
        camera = tuple(args.camera_size) if args.camera_size else None
        obs = observation(policy, camera_size=camera)
        base = {"bench": "serve", "checkpoint": args.checkpoint or "random tiny", "steps": policy.num_steps,
                "image_size": policy.config.image_size,
                "camera_size": list(camera or (policy.config.image_size,) * 2), "cameras": len(CAMERAS),
                "chunk": policy.config.chunk_size, "threads": torch.get_num_threads(), "repeats": args.repeats}

        def timed(fn):
            for _ in range(args.warmup):
                fn()
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                fn()
                times.append((time.perf_counter() - start) * 1000)
            return times

        results = {}
        h = policy.config.chunk_size
        prefix = policy.infer(obs)["actions"][h // 2:]
        paths = [("policy.infer", lambda: policy.infer(obs))]
        if args.rtc:
            for method in ("guidance", "inpaint"):
                config = RTCConfig(method=method)
                paths.append((f"policy.infer+rtc_{method}", lambda c=config: policy.infer(
                    obs, prefix_actions=prefix, prefix_delay=args.delay, rtc=c)))
        for name, fn in paths:
            results[name] = percentiles(timed(fn))
            print(json.dumps({**base, "path": name, **results[name]}), flush=True)
        try:
            from openpi_client.websocket_client_policy import WebsocketClientPolicy
        except ImportError:
            print(json.dumps({**base, "path": "server", "error": "openpi-client is not installed "
                              "(pip install openpi-client --no-deps)"}), flush=True)
            return 1
        with ServerThread(policy, host="127.0.0.1", port=0) as server:
            client = WebsocketClientPolicy("127.0.0.1", server.port)
            server_ms = []

            def remote():
                server_ms.append(client.infer(obs)["server_timing"]["infer_ms"])

            times = timed(remote)
            client._ws.close()  # openpi-client has no close(); its socket is the connection
        server_ms = server_ms[args.warmup:]
        record = {**base, "path": "server", "client": "openpi_client.WebsocketClientPolicy",
                  **percentiles(times), "server_infer_p50_ms": round(float(np.median(server_ms)), 3),
                  "protocol_overhead_p50_ms": round(float(np.median(np.subtract(times, server_ms))), 3),
                  "request_bytes": len(packb(obs))}
        print(json.dumps(record), flush=True)
    return 0


# ------------------------------------------------------------------------ bench smoothness
def smooth_source(policy, noise_seed: int, length_scale: float, rtc=None, white: bool = False):
    """Chunk source with fresh noise per call (call i draws seed noise_seed + i, in every mode)."""
    calls = [0]
    c = policy.config

    def source(obs, prefix_actions=None, prefix_delay=0):
        seed = noise_seed + calls[0]
        calls[0] += 1
        if white:
            import torch

            noise = torch.randn((1, c.chunk_size, c.action_dim), generator=torch.Generator().manual_seed(seed))
        else:
            noise = smooth_noise(seed, c.chunk_size, c.action_dim, length_scale)
        if prefix_actions is None:
            return policy.infer(obs, noise=noise)["actions"]
        return policy.infer(obs, noise=noise, prefix_actions=prefix_actions, prefix_delay=prefix_delay,
                            rtc=rtc)["actions"]

    return source


def run_broker(source, obs: dict, ticks: int, execution: Execution):
    """Drive an ActionBroker executing `execution` for `ticks` control ticks (the state follows the
    executed action)."""
    from lingvla.serve.broker import ActionBroker

    broker = ActionBroker(source, execution)
    obs = dict(obs)
    try:
        for _ in range(ticks):
            action = broker.act(obs)
            obs["state"] = action[:len(obs["state"])].astype(np.float32)
    finally:
        broker.close()
    return broker


def smoothness_runs(policy, obs: dict, *, ticks: int, execute_horizon: int, delay: int,
                    ensemble_horizon: int, ensemble_decay: float, noise_seed: int = 0,
                    length_scale: float = 6.0, white: bool = False):
    """-> {label: (broker, record)} for the broker's modes on the same sequence of noises."""
    from lingvla.serve.broker import Execution, boundary_jumps
    from lingvla.serve.rtc import RTCConfig

    runs = {
        "chunk_sync": Execution("chunk", execute_horizon, delay=0),
        "chunk_async": Execution("chunk", execute_horizon, delay=delay),
        "ensemble": Execution("ensemble", ensemble_horizon, delay=0, ensemble_decay=ensemble_decay),
        "rtc_guidance": Execution("rtc", execute_horizon, delay=delay, rtc=RTCConfig("guidance")),
        "rtc_inpaint": Execution("rtc", execute_horizon, delay=delay, rtc=RTCConfig("inpaint")),
    }
    out = {}
    for label, execution in runs.items():
        source = smooth_source(policy, noise_seed, length_scale, rtc=execution.rtc, white=white)
        broker = run_broker(source, obs, ticks, execution)
        actions = np.stack(broker.actions)
        jumps = boundary_jumps(actions, broker.switches)
        steps = np.linalg.norm(np.diff(actions, axis=0), axis=-1)
        inside = np.ones(len(steps), dtype=bool)
        inside[[k - 1 for k in broker.switches if k > 0]] = False
        settings = {"mode": execution.mode, "execute_horizon": execution.execute_horizon,
                    "delay": execution.delay}
        if execution.mode == "ensemble":
            settings["ensemble_decay"] = execution.ensemble_decay
        record = {"bench": "smoothness", "run": label, **settings,
                  "ticks": ticks, "chunks": len(broker.latencies_ms), "switches": len(jumps),
                  "jump_mean": round(float(jumps.mean()), 4) if len(jumps) else None,
                  "jump_max": round(float(jumps.max()), 4) if len(jumps) else None,
                  "step_mean_within_chunk": round(float(steps[inside].mean()), 4) if inside.any() else None,
                  "step_mean_all": round(float(steps.mean()), 4),
                  "infer_p50_ms": round(float(np.median(broker.latencies_ms)), 2)}
        out[label] = (broker, record)
    return out


def plot_smoothness(runs: dict, path: Path, dims=(0, 1, 7)) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(runs), 1, figsize=(11, 2.3 * len(runs)), sharex=True, sharey=True)
    for ax, (label, (broker, record)) in zip(np.atleast_1d(axes), runs.items()):
        actions = np.stack(broker.actions)
        for d in dims:
            ax.plot(actions[:, d], lw=1.2, label=f"joint {d}")
        if record["mode"] != "ensemble":
            for k in broker.switches[1:]:
                ax.axvline(k, color="grey", ls=":", lw=0.8)
        ax.set_title(f"{label}: boundary jump mean {record['jump_mean']}, max {record['jump_max']} "
                     f"(mean step {record['step_mean_within_chunk'] or record['step_mean_all']})", fontsize=9)
    np.atleast_1d(axes)[0].legend(loc="upper right", fontsize=7)
    np.atleast_1d(axes)[-1].set_xlabel("control tick (dotted: a new chunk takes over)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def bench_smoothness(args) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        policy, trained = _load_policy(args, tmp)
        obs = observation(policy)
        runs = smoothness_runs(policy, obs, ticks=args.ticks, execute_horizon=args.execute_horizon,
                               delay=args.delay, ensemble_horizon=args.ensemble_horizon,
                               ensemble_decay=args.ensemble_decay, noise_seed=args.seed,
                               length_scale=args.length_scale, white=args.white_noise or trained)
        for _, record in runs.values():
            print(json.dumps(record), flush=True)
        path = plot_smoothness(runs, Path(args.out))
        print(json.dumps({"bench": "smoothness", "plot": str(path)}), flush=True)
    return 0
