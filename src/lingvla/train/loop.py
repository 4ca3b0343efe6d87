"""The training loop: one process, or data-parallel under torchrun with the same command.

torchtitan's shape: `build(config)` makes a `Trainer` (processes, model, optimizer, EMA, loader),
`Checkpointer` saves and restores all of its state, `train_step(trainer)` is one optimizer step,
and `train(config)` runs them: build, restore, step, checkpoint, export.

Exactness across process counts: every global micro-batch draws its flow noise and times from a
generator keyed by (seed, step, micro-step) in global sample order, each rank takes its rows, and
each rank's loss is weighted by its share of the real (unpadded) action entries. So a 2-process
run computes the same gradients as a 1-process run on the same global batch.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from lingvla.data.augment import shift_images, shift_offsets
from lingvla.train.checkpoint import full_state_dict, list_checkpoints, load_checkpoint, save_checkpoint
from lingvla.train.config import TrainConfig
from lingvla.train.ema import EMA, checkpoint_ema_names
from lingvla.train.parallel import Distributed, init_distributed, parallelize, resolve_precision

if TYPE_CHECKING:
    from lingvla.data.samples import SampleSpec


REPLAN_EVERY = 250  # steps between re-plans of a run with a deadline


class NonFiniteLossError(RuntimeError):
    pass


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity where the system tells it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    return device


def lr_factor(step: int, config: TrainConfig) -> float:
    """Multiplier of the base learning rate at optimizer step `step` (0-based)."""
    o = config.optim
    if o.warmup_steps > 0 and step < o.warmup_steps:
        return (step + 1) / o.warmup_steps
    if o.schedule == "constant":
        return 1.0
    span = max(1, config.steps - o.warmup_steps)
    progress = min(1.0, (step - o.warmup_steps) / span)
    return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def apply_freezing(model: nn.Module, config: TrainConfig) -> None:
    """Freeze by config, and freeze the parameters no loss reaches (see unused_parameter_names).
    With LoRA, only the adapters train in the targeted streams."""
    from lingvla.model.lora import is_lora_name, stream_of

    o = config.optim
    unused = set(model.unused_parameter_names())
    for name, p in model.named_parameters():
        if name in unused:
            p.requires_grad_(False)
        if o.lora_rank and stream_of(name) in o.lora_targets and not is_lora_name(name):
            p.requires_grad_(False)
        if o.freeze_vision and name.startswith("vision."):
            p.requires_grad_(False)
        if o.freeze_llm and (name.startswith("embed_tokens.") or name.startswith("vlm_norm.")
                             or ".vlm." in name):
            p.requires_grad_(False)


def param_groups(model: nn.Module, config: TrainConfig) -> list[dict]:
    """Trainable parameters grouped by learning-rate multiplier. Call after parallelize():
    FSDP replaces parameters, and the optimizer must hold the sharded ones."""
    o = config.optim
    groups: dict[float, list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        mult = 1.0
        for pattern, value in lr_multipliers(config).items():
            if pattern in name:
                mult = float(value)
        groups.setdefault(mult, []).append(p)
    if not groups:
        raise ValueError("every parameter is frozen: nothing to train")
    return [{"params": ps, "lr": o.lr * m, "lr_mult": m} for m, ps in sorted(groups.items())]


def lr_multipliers(config: TrainConfig) -> dict[str, float]:
    """optim.lr_multipliers; when empty with depth distillation on, the paper's 10x for depth."""
    if not config.optim.lr_multipliers and config.model.depth.enabled:
        return {"depth": 10.0}
    return config.optim.lr_multipliers


def sample_spec(model_config, data) -> SampleSpec:
    """What a run's samples hold: the model's sizes, the data's normalization, and with depth
    distillation on, the depth maps its teacher reads (sim-depth online) or the teacher's cached
    targets (data.depth_cache)."""
    from lingvla.data.samples import SampleSpec

    on = model_config.depth.enabled
    return SampleSpec.for_model(model_config, normalization=data.normalization,
                                depth=on and not data.depth_cache and data.depth_teacher == "sim-depth",
                                depth_cache=data.depth_teacher if on and data.depth_cache else None)


def check_depth_data(config: TrainConfig) -> None:
    """With depth distillation on, fail before training unless every dataset has what the targets
    need: the depth maps (sim-depth online) or a matching depth cache (data.depth_cache)."""
    from lingvla.data.embodiments import load_registry
    from lingvla.data.samples import RobotDataset

    m, d = config.model, config.data
    registry = load_registry(d.embodiment_paths or None)
    spec = sample_spec(m, d)
    for entry in d.datasets:
        dataset = RobotDataset(entry["path"], entry.get("embodiment"), spec=spec, registry=registry)
        cache = dataset.depth_cache
        if cache is not None and cache.shape != (m.depth.num_latents, m.depth.teacher_dim):
            raise ValueError(f"depth cache {cache.dir} holds {cache.shape[0]} tokens x {cache.shape[1]}; the "
                             f"model wants depth.num_latents={m.depth.num_latents} x depth.teacher_dim="
                             f"{m.depth.teacher_dim}")
        cached_path = cache.meta.get("teacher_path") if cache is not None else None
        if cached_path and d.depth_teacher_path and Path(d.depth_teacher_path).resolve() != Path(cached_path):
            raise ValueError(f"depth cache {cache.dir} was computed with the teacher {cached_path}; "
                             f"data.depth_teacher_path is {d.depth_teacher_path}")


def real_entries(batch: dict) -> int:
    return int((batch["action_dim_mask"][:, None, :] & ~batch["action_is_pad"][:, :, None]).sum())


def step_noise(config: TrainConfig, step: int, micro: int, rows: slice | range, generator_shape):
    """Noise [b, T, D], times [b] and the state-dropout keep mask [b] (all True without dropout) of
    this rank's rows of one global micro-batch: every random draw of a training step comes from a
    generator keyed by (seed, step, micro-batch), so a resumed run and any number of processes
    draw what one uninterrupted process draws."""
    from lingvla.model import flow

    global_batch, chunk, dim = generator_shape
    g = torch.Generator().manual_seed(config.seed * 1_000_003 + step * 1_009 + micro)
    noise = torch.randn(global_batch, chunk, dim, generator=g)
    m = config.model
    t = flow.sample_time(global_batch, m.time_sampling, g, m.time_beta_alpha, m.time_beta_beta)
    keep = torch.rand(global_batch, generator=g) >= m.state_dropout
    idx = torch.as_tensor(list(rows))
    return noise[idx], t[idx], keep[idx]


class MetricsWriter:
    """metrics.jsonl + metrics.csv (+ TensorBoard when installed), main process only."""

    def __init__(self, out_dir: Path, tensorboard: bool):
        self.jsonl = open(out_dir / "metrics.jsonl", "a")
        self.csv_path = out_dir / "metrics.csv"
        self.csv_keys: list[str] | None = None
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out_dir / "tensorboard"))
            except ImportError:
                self.tb = None

    def write(self, record: dict) -> None:
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        keys = list(record)
        if self.csv_keys is None:
            self.csv_keys = keys
            if not self.csv_path.exists() or self.csv_path.stat().st_size == 0:
                self.csv_path.write_text(",".join(keys) + "\n")
        with open(self.csv_path, "a") as f:
            f.write(",".join(str(record.get(k, "")) for k in self.csv_keys) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.tb.add_scalar(key, value, record["step"])

    def close(self) -> None:
        self.jsonl.close()
        if self.tb is not None:
            self.tb.close()


def plot_losses(metrics_path: Path, out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_step = {}
    for line in metrics_path.read_text().splitlines():
        record = json.loads(line)
        by_step[record["step"]] = record  # the last word on a step wins (after a resume)
    steps = sorted(by_step)
    if not steps:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [by_step[s]["loss"] for s in steps], lw=1, label="loss")
    ax.set_xlabel("step")
    ax.set_ylabel("flow-matching loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(steps, [by_step[s]["lr"] for s in steps], color="tab:orange", lw=1, alpha=0.6, label="lr")
    ax2.set_ylabel("learning rate")
    fig.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _dataset_embodiments(config: TrainConfig) -> dict[str, list[dict]]:
    """{embodiment name: [dataset spec subsets]} of the run's datasets (named, or by robot_type)."""
    from lingvla.data.embodiments import load_registry
    from lingvla.data.lerobot import LeRobotDataset

    registry = load_registry(config.data.embodiment_paths or None)
    by_embodiment: dict[str, list] = {}
    for spec in config.data.datasets:
        name = spec.get("embodiment")
        if name is None:
            found = registry.for_robot_type(LeRobotDataset(spec["path"]).robot_type)
            if found is None:
                raise ValueError(f"dataset {spec['path']}: no embodiment given and its robot_type "
                                 "matches none; set data.datasets[].embodiment")
            name = found.name
        by_embodiment.setdefault(name, []).append(
            {k: spec[k] for k in ("path", "episodes", "exclude_episodes") if k in spec})
    return by_embodiment


def prepare_norm_stats(config: TrainConfig, out_dir: Path, dist_info: Distributed) -> Path:
    """The norm_stats.json of this run: the given one, else computed from the datasets once. A given
    file in a single-robot layout (the released ones: flat, or split by body part) is rewritten
    into ours under the datasets' one embodiment, so the run and its export name it."""
    from lingvla.data.normalize import embodiment_stats_file, is_single_robot, load_stats_file

    path = out_dir / "norm_stats.json"
    if config.data.norm_stats:
        given = Path(config.data.norm_stats)
        if not given.is_file():
            raise FileNotFoundError(f"data.norm_stats={given} does not exist; run `lingvla stats` first "
                                    "or leave it empty to compute the stats at start")
        data, source = load_stats_file(given.resolve())
        if is_single_robot(data):
            names = sorted(_dataset_embodiments(config))
            if len(names) != 1:
                raise ValueError(f"data.norm_stats={given} holds one robot's stats (the released layout), but "
                                 f"the datasets are of {len(names)} embodiments {names}: give a lingvla stats file")
            data = embodiment_stats_file(data, names[0], source)
        if dist_info.is_main:  # the run keeps its own copy: `lingvla export RUN` reads it from there
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=1))
            tmp.replace(path)
        dist_info.barrier()
        return path
    if dist_info.is_main and not path.exists():
        from lingvla.data.embodiments import load_registry
        from lingvla.data.stats import compute_norm_stats, write_norm_stats

        registry = load_registry(config.data.embodiment_paths or None)
        tmp = path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        for name, paths in _dataset_embodiments(config).items():
            write_norm_stats(tmp, name, compute_norm_stats(paths, registry.get(name), registry=registry))
        tmp.replace(path)
    dist_info.barrier()
    return path


@dataclass
class Trainer:
    """What a training run holds, built once by `build` and advanced one optimizer step at a time
    by `train_step`; `Checkpointer` saves and restores all of it."""

    config: TrainConfig
    device: torch.device
    dist: Distributed
    model: nn.Module
    model_config: Any
    tokenizer: Any
    optimizer: torch.optim.Optimizer
    ema: EMA | None
    loader: Any
    teacher: nn.Module | None
    norm_path: Path
    autocast: bool
    micro_global: int
    init_report: Any = None
    step: int = 0                   # optimizer steps done
    ema_since: int = 0              # the step the EMA started from
    last_saved: int | None = None   # the step of the newest checkpoint written or resumed
    _batches: Any = None

    @property
    def rows(self) -> range:
        """This rank's rows of a global micro-batch."""
        return range(self.dist.rank, self.micro_global, self.dist.world_size)

    def next_batch(self) -> dict:
        if self._batches is None:  # after a resume has restored the loader's position
            self._batches = iter(self.loader)
        return next(self._batches)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()


def build(config: TrainConfig) -> Trainer:
    """Everything before the first step: processes and device, seeds, norm stats, the model (from
    `init_from` unless the run resumes), freezing, parallelism, optimizer, EMA and loader."""
    from lingvla.data.mixture import make_dataloader
    from lingvla.model.lingvla import build_model

    config.validate()
    if not config.data.datasets:
        raise ValueError("data.datasets is empty: give at least one {path: DATASET_DIR}")
    device = resolve_device(config.device)
    dist_info = init_distributed(device, config.parallel)
    device = resolve_device(config.device, dist_info.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    world = dist_info.world_size
    micro_global = config.batch_size // config.grad_accum
    if micro_global * config.grad_accum != config.batch_size or micro_global % world:
        raise ValueError(f"batch_size={config.batch_size} must split into grad_accum={config.grad_accum} "
                         f"micro-batches divisible by the {world} processes")
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        # Oversubscribed cores (compute threads + loader workers + other ranks) make CPU steps
        # several times slower: give compute what the workers and other ranks leave.
        torch.set_num_threads(max(1, usable_cores() // world - config.data.num_workers))
    out_dir = Path(config.output_dir)
    if dist_info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        config.save_yaml(out_dir / "train_config.yaml")
    dist_info.barrier()
    _seed_everything(config.seed)

    model_config = config.model
    if config.parallel.attn_backend != "auto":
        model_config.attn_backend = config.parallel.attn_backend
    elif device.type == "cuda":
        model_config.attn_backend = "flex"
    norm_path = prepare_norm_stats(config, out_dir, dist_info)
    depth_on = model_config.depth.enabled
    teacher = None
    if depth_on:
        check_depth_data(config)
        if not config.data.depth_cache:
            from lingvla.model.depth import make_teacher

            teacher = make_teacher(config.data.depth_teacher, model_config.depth,
                                   config.data.depth_teacher_path).to(device)
            if dist_info.is_main:
                print(f"note: depth targets run the {config.data.depth_teacher} teacher on every batch (reading "
                      "depth maps or images per sample); `lingvla depth-cache DATASET --teacher "
                      f"{config.data.depth_teacher} --model-config TRAIN_CONFIG` once and data.depth_cache=true "
                      "read them precomputed, which is much faster (docs/data.md)", flush=True)

    model = build_model(model_config)
    tokenizer = model.prompt_tokenizer.tokenizer
    model_config = model.config  # sizes may come from a pretrained VLM
    init_report = None
    resuming = config.resume and bool(list_checkpoints(out_dir / "checkpoints"))
    if config.init_from and not resuming:
        from lingvla.model.weights import init_from

        init_report = init_from(model, config.init_from, config.init_drop)
        if dist_info.is_main:
            print(init_report.summary(), flush=True)
            if init_report.kind == "released":
                differ = [f"model.{k}={getattr(model_config, k)} (released: {v})"
                          for k, v in (("image_resize", "squash"), ("attention_fp32", True))
                          if getattr(model_config, k) != v]
                if config.data.normalization != "bounds_99_woclip":
                    differ.append(f"data.normalization={config.data.normalization} (released: bounds_99_woclip)")
                if differ:
                    print(f"note: these weights were trained with the released preprocessing and numerics; this run "
                          f"uses {', '.join(differ)}. Set them to the released values to keep what the weights "
                          "learned, or fine-tune long enough to adapt (docs/your-robot.md)", flush=True)
    if config.optim.lora_rank:
        from lingvla.model.lora import apply_lora

        adapted = apply_lora(model, config.optim.lora_rank, config.optim.lora_alpha, config.optim.lora_targets)
        if dist_info.is_main:
            print(f"LoRA rank {config.optim.lora_rank} on {len(adapted)} linear layers of "
                  f"{config.optim.lora_targets}", flush=True)
    model.to(device).train()
    apply_freezing(model, config)
    parallelize(model, config.parallel, dist_info, device)
    groups = param_groups(model, config)
    precision = resolve_precision(config.parallel, device)
    o = config.optim
    if o.states == "8bit":
        from lingvla.train.adamw8bit import AdamW8bit

        optimizer = AdamW8bit(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
    else:  # on CUDA the fused kernel: one launch for all parameters instead of a dozen per tensor list
        optimizer = torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                      weight_decay=o.weight_decay, fused=device.type == "cuda" or None)
    ema = EMA(model, config.ema_decay) if config.ema_decay > 0 else None
    loader = make_dataloader(config.data, sample_spec(model_config, config.data),
                             batch_size=micro_global // world, norm_stats=str(norm_path), seed=config.seed,
                             rank=dist_info.rank, world_size=world, pin_memory=device.type == "cuda")
    return Trainer(config=config, device=device, dist=dist_info, model=model, model_config=model_config,
                   tokenizer=tokenizer, optimizer=optimizer, ema=ema, loader=loader, teacher=teacher,
                   norm_path=norm_path, autocast=precision == "bf16" and dist_info.mesh is None,
                   micro_global=micro_global, init_report=init_report)


class Checkpointer:
    """Saves and restores a Trainer's whole state: model, optimizer and EMA shards (DCP), the
    loader's position, the RNG states and the step (lingvla/train/checkpoint.py has the layout)."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        self.root = Path(trainer.config.output_dir) / "checkpoints"

    def latest(self) -> tuple[int, Path] | None:
        found = list_checkpoints(self.root) if self.trainer.config.resume else []
        return found[-1] if found else None

    def save(self) -> Path:
        t = self.trainer
        extra = {"step": t.step, "loader": t.loader.state_dict(), "rng": _rng_state(),
                 "ema_decay": t.config.ema_decay if t.ema is not None else 0.0, "ema_since": t.ema_since}
        path = save_checkpoint(self.root, t.step, t.model, t.optimizer, extra, t.dist, t.config.keep_last, ema=t.ema)
        t.last_saved = t.step
        return path

    def restore(self, path: Path) -> None:
        t = self.trainer
        extra = load_checkpoint(path, t.model, t.optimizer, t.dist, ema=t.ema)
        t.loader.load_state_dict(extra["loader"])
        _set_rng_state(extra["rng"])
        t.step = t.last_saved = extra["step"]
        t.ema_since = extra.get("ema_since", 0) if extra["ema_resumed"] else t.step
        t._batches = None
        if t.dist.is_main:
            resharded = extra["saved_world_size"] != t.dist.world_size
            print(f"resumed from {path} (step {t.step}"
                  + (f"; written by {extra['saved_world_size']} processes, resharded onto {t.dist.world_size})"
                     if resharded else ")"), flush=True)
            if t.ema is not None and not extra["ema_resumed"]:
                print(f"the checkpoint has no EMA: the average (decay {t.config.ema_decay}) starts from its "
                      f"weights at step {t.step}", flush=True)


def train_step(t: Trainer) -> dict:
    """One optimizer step (grad_accum micro-batches) at step t.step; returns its metrics record and
    advances t.step. Raises NonFiniteLossError, without stepping, on a non-finite loss or gradient."""
    config, o, step = t.config, t.config.optim, t.step
    world = t.dist.world_size
    for group in t.optimizer.param_groups:
        group["lr"] = o.lr * group["lr_mult"] * lr_factor(step, config)
    t0 = time.perf_counter()
    micro_batches = [t.next_batch() for _ in range(config.grad_accum)]
    t_data = time.perf_counter() - t0
    total = torch.tensor(float(sum(real_entries(b) for b in micro_batches)))
    total = t.dist.all_reduce_sum(total).item()
    shape = (t.micro_global, t.model_config.chunk_size, t.model_config.action_dim)
    depth_on = t.model_config.depth.enabled
    t_fwd = t_bwd = 0.0
    weighted_loss = torch.zeros((), dtype=torch.float64)
    weighted_depth = torch.zeros((), dtype=torch.float64)
    for micro, batch in enumerate(micro_batches):
        noise, times, state_keep = step_noise(config, step, micro, t.rows, shape)
        if config.data.image_shift:
            pad = config.data.image_shift
            offsets = shift_offsets(config.seed, step, micro, t.rows, t.micro_global, batch["images"].shape[1], pad)
            batch["images"] = shift_images(batch["images"], offsets, pad)
        t.sync()
        t1 = time.perf_counter()
        if t.teacher is not None:  # online targets, outside autocast and the graph
            source = batch["depth"] if config.data.depth_teacher == "sim-depth" else batch["images"]
            with torch.no_grad():
                batch["depth_targets"] = t.teacher(source.to(t.device, non_blocking=True))
        with torch.autocast(t.device.type, dtype=torch.bfloat16, enabled=t.autocast):
            loss, info = t.model(batch, noise=noise.to(t.device), t=times.to(t.device),
                                 state_keep=state_keep.to(t.device))
        share = real_entries(batch) / total
        if depth_on:
            weighted_depth += info["depth_loss"].double().cpu() * share
        t.sync()
        t2 = time.perf_counter()
        (loss * share * world).backward()
        t.sync()
        t_fwd += t2 - t1
        t_bwd += time.perf_counter() - t2
        weighted_loss += loss.detach().double().cpu() * share
    t3 = time.perf_counter()
    grad_norm = nn.utils.clip_grad_norm_(t.model.parameters(), o.grad_clip if o.grad_clip > 0 else float("inf"))
    grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
    step_loss = t.dist.all_reduce_sum(weighted_loss.to(torch.float64)).item()
    if not math.isfinite(step_loss) or not torch.isfinite(grad_norm).item():
        t.optimizer.zero_grad(set_to_none=True)
        root = Path(config.output_dir) / "checkpoints"
        where = f"the last good checkpoint is {root}/step_{t.last_saved:08d}" if t.last_saved is not None \
            else "no checkpoint had been written yet"
        raise NonFiniteLossError(f"non-finite loss ({step_loss}) or gradient norm ({grad_norm.item()}) at "
                                 f"step {step + 1}; stopped without saving: {where}")
    t.optimizer.step()
    t.optimizer.zero_grad(set_to_none=True)
    if t.ema is not None:
        t.ema.update()
    t.sync()
    t_opt = time.perf_counter() - t3
    step_time = t_data + t_fwd + t_bwd + t_opt
    record = {"step": step + 1, "loss": step_loss, "lr": o.lr * lr_factor(step, config),
              "grad_norm": float(grad_norm), "samples_per_s": config.batch_size / step_time,
              "data_s": t_data, "forward_s": t_fwd, "backward_s": t_bwd, "optimizer_s": t_opt}
    if depth_on:
        record["depth_loss"] = t.dist.all_reduce_sum(weighted_depth).item()
    t.step = step + 1
    return record


def train(config: TrainConfig, progress: bool = True, save: bool = True,
          deadline: float | None = None, max_steps: int | None = None) -> dict:
    """Run (or resume) a training run: build, restore the newest checkpoint, step until
    config.steps with checkpoints every save_every, export. Returns a summary dict. save=False
    writes no checkpoints and no export (benchmarks: a 4B run's final checkpoint is ~50 GB with its
    optimizer state).

    deadline (a time.perf_counter() value; one process only): every REPLAN_EVERY steps the step
    count is set to what fits before it at the wall-clock pace of the last REPLAN_EVERY steps (at
    most max_steps, default config.steps), so a time budget holds when a shared machine slows
    down or speeds up; the cosine schedule stretches or shrinks with it. Not for runs that must be
    reproduced step for step."""
    from tqdm import tqdm

    t = build(config)
    if deadline is not None and t.dist.world_size > 1:
        raise ValueError("a training deadline is for one process")
    checkpointer = Checkpointer(t)
    latest = checkpointer.latest()
    if latest is not None:
        checkpointer.restore(latest[1])
    out_dir = Path(config.output_dir)
    writer = MetricsWriter(out_dir, config.tensorboard) if t.dist.is_main else None
    max_steps = config.steps if max_steps is None else max_steps
    bar = tqdm(total=config.steps, initial=t.step, disable=not (progress and t.dist.is_main),
               desc="train", dynamic_ncols=True)
    last_loss = float("nan")
    run_start, samples_done = time.perf_counter(), 0
    try:
        mark = (t.step, time.perf_counter())
        while t.step < config.steps:
            record = train_step(t)
            last_loss = record["loss"]
            samples_done += config.batch_size
            if writer is not None:
                writer.write(record)
            bar.update(1)
            if t.step % config.log_every == 0 or t.step == config.steps:
                bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{record['lr']:.2e}",
                                sps=f"{samples_done / (time.perf_counter() - run_start):.1f}")
            if save and (t.step % config.save_every == 0 or t.step == config.steps):
                checkpointer.save()
            if deadline is not None and t.step - mark[0] >= REPLAN_EVERY and t.step < config.steps:
                now = time.perf_counter()
                pace = (now - mark[1]) / (t.step - mark[0])
                config.steps = max(t.step + 1, min(max_steps, t.step + int((deadline - now) / pace)))
                bar.total = config.steps
                mark = (t.step, now)
    finally:
        bar.close()
        if writer is not None:
            writer.close()

    export_dir = out_dir / "export"
    summary = {"steps": config.steps, "final_loss": last_loss, "output_dir": str(out_dir),
               "export": str(export_dir) if save else None, "world_size": t.dist.world_size,
               "skipped_samples": t.loader.skipped, "wall_s": round(time.perf_counter() - run_start, 2),
               "weights": _weights_note(config.ema_decay if t.ema is not None else 0.0, t.ema_since)}
    if t.init_report is not None:
        summary["init_from"] = t.init_report.to_dict()
    if not save:
        return summary
    if t.ema is None:
        state = full_state_dict(t.model)
    else:
        with t.ema.applied():  # copies: in one process the state dict shares the parameters' storage
            state = {k: v.clone() for k, v in full_state_dict(t.model).items()}
    if t.dist.is_main:
        _export(export_dir, state, t.model_config, t.tokenizer, config, t.norm_path, summary)
        plot_losses(out_dir / "metrics.jsonl", out_dir / "loss.png")
        if t.loader.skipped:
            print(f"skipped {t.loader.skipped} bad samples; last reasons: {t.loader.skip_reasons[-3:]}", flush=True)
    t.dist.barrier()
    return summary


def merged_state(state: dict, config: TrainConfig) -> dict:
    """The weights an export holds: LoRA adapters folded into their layers when the run has them."""
    if not config.optim.lora_rank:
        return state
    from lingvla.model.lora import merge_lora_state

    return merge_lora_state(state, config.optim.lora_alpha / config.optim.lora_rank)


def _export(out: Path, state: dict, model_config, tokenizer, config: TrainConfig, norm_path,
            summary: dict) -> Path:
    """The inference directory of a run: weights, its norm stats and embodiment specs, train_info."""
    from lingvla import checkpoint_dir

    state = merged_state(state, config)
    norm_stats = json.loads(Path(norm_path).read_text())
    return checkpoint_dir.write(out, state, model_config, tokenizer, norm_stats=norm_stats,
                                embodiments=_embodiment_specs(config, norm_stats),
                                normalization=config.data.normalization,
                                train_info={"train_config": config.to_dict(), "summary": summary})


def _weights_note(decay: float, since: int) -> str:
    return f"ema {decay} since step {since}" if decay > 0 else "raw"


def _embodiment_specs(config: TrainConfig, norm_stats: dict) -> dict:
    """The YAML specs of every embodiment in the stats, so an export is self-contained."""
    from lingvla.data.embodiments import load_registry

    registry = load_registry(config.data.embodiment_paths or None)
    return {name: registry.get(name).to_spec() for name in norm_stats.get("norm_stats", {})}


def export_checkpoint(run_dir: str | Path, step: int | None = None, out: str | Path | None = None,
                      raw: bool = False, layout: str = "lingvla", drop: tuple[str, ...] = ()) -> Path:
    """Write an inference directory (as a finished run's export/) from a training checkpoint of
    `run_dir` (default: its latest); out defaults to RUN_DIR/export_step_NNNNNNNN (+ "_raw").
    The weights are the checkpoint's EMA when it has one, unless raw=True.

    layout="released": the released LingBot-VLA layout instead (shards + index + config.json,
    lingvla/model/released.py; out defaults to ..._released), for tools built on the released code;
    `drop` names prefixes of ours to leave out (the depth parameters have no released name)."""
    if layout not in ("lingvla", "released"):
        raise ValueError(f"layout={layout!r}; expected lingvla or released")
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    from lingvla.model.lingvla import build_model
    from lingvla.train.config import load_train_config

    run_dir = Path(run_dir)
    config_path, norm_path = run_dir / "train_config.yaml", run_dir / "norm_stats.json"
    for path in (config_path, norm_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: {run_dir} is not a `lingvla train` output directory")
    found = dict(list_checkpoints(run_dir / "checkpoints"))
    if not found:
        raise FileNotFoundError(f"no complete checkpoint under {run_dir / 'checkpoints'}")
    if step is None:
        step = max(found)
    elif step not in found:
        raise FileNotFoundError(f"no checkpoint of step {step} in {run_dir / 'checkpoints'}; "
                                f"steps saved: {sorted(found)}")
    config = load_train_config(str(config_path))
    model = build_model(config.model)
    if config.optim.lora_rank:
        from lingvla.model.lora import apply_lora

        apply_lora(model, config.optim.lora_rank, config.optim.lora_alpha, config.optim.lora_targets)
    state = {"model": get_model_state_dict(model)}
    names = [] if raw else checkpoint_ema_names(found[step])
    params = dict(model.named_parameters())
    weights_note = "raw"
    if names:
        unknown = sorted(set(names) - set(params))
        if unknown:
            raise ValueError(f"{found[step]}: EMA entries {unknown[:3]} name no parameter of the run's model")
        state["ema"] = {n: torch.empty_like(params[n], dtype=torch.float32) for n in names}
        extra = torch.load(found[step] / "extra_rank0.pt", weights_only=False)
        # the decay the checkpoint was written with (train_config.yaml may be a later resume's)
        weights_note = _weights_note(extra.get("ema_decay", config.ema_decay), extra.get("ema_since", 0))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process")
        dcp.load(state, checkpoint_id=str(found[step]))
    set_model_state_dict(model, state["model"])
    if names:
        with torch.no_grad():
            for name, shadow in state["ema"].items():
                params[name].copy_(shadow)
    default = run_dir / f"export_step_{step:08d}{'_raw' if raw else ''}{'_released' if layout == 'released' else ''}"
    out = Path(out) if out is not None else default
    if layout == "released":
        from lingvla.model.released import write_released

        return write_released(out, merged_state(full_state_dict(model), config), model.config, drop=tuple(drop))
    summary = {"steps": step, "output_dir": str(run_dir), "export": str(out), "from_checkpoint": str(found[step]),
               "weights": weights_note}
    return _export(out, full_state_dict(model), model.config, model.prompt_tokenizer.tokenizer, config,
                   norm_path, summary)
