"""Parallelism applied to a plain model from the outside, in a fixed order (torchtitan's way):
activation checkpointing per joint layer -> torch.compile per joint layer -> FSDP2 `fully_shard`
per vision block, per joint layer, and on the root.

Shard units: each joint (MoT) layer holds the VLM layer and the expert layer of one depth, since
both streams' weights are needed at the same point (the shared attention): one all-gather per
layer per pass. The ViT blocks are units of their own. The root unit holds the embeddings, the
patch embedding/merger and the small action/state heads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from lingvla.train.config import ParallelConfig


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    mesh: object | None = None  # DeviceMesh for FSDP/HSDP; None in a single process

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def all_reduce_sum(self, value: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value


def init_distributed(device: torch.device, parallel: ParallelConfig) -> Distributed:
    """Join the torchrun process group when launched by torchrun; else a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1 and not parallel.cpu_offload:
        return Distributed()
    if world == 1 and "RANK" not in os.environ:
        # CPU offload is an FSDP2 feature: one process gets a process group of its own
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0",
                           "LOCAL_RANK": "0", "WORLD_SIZE": "1"})
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        # Small bookkeeping reductions (loss, entry counts) run on CPU tensors: give CPU tensors
        # gloo next to NCCL.
        backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend)
    replicate = parallel.dp_replicate
    shard = parallel.dp_shard if parallel.dp_shard > 0 else world // replicate
    if replicate * shard != world:
        raise ValueError(f"parallel.dp_replicate x dp_shard = {replicate} x {shard} does not equal "
                         f"the world size {world}")
    from torch.distributed.device_mesh import init_device_mesh

    if replicate > 1:
        mesh = init_device_mesh(device.type, (replicate, shard), mesh_dim_names=("replicate", "shard"))
    else:
        mesh = init_device_mesh(device.type, (shard,), mesh_dim_names=("shard",))
    return Distributed(rank, world, local_rank, mesh)


def resolve_precision(parallel: ParallelConfig, device: torch.device) -> str:
    if parallel.mixed_precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return parallel.mixed_precision


def apply_activation_checkpointing(model: nn.Module) -> None:
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    for i, layer in enumerate(model.layers):
        model.layers[i] = checkpoint_wrapper(layer, preserve_rng_state=False)


def apply_compile(model: nn.Module) -> None:
    # Identical layers share one compiled graph; the mask and shapes are static per run.
    for layer in model.layers:
        layer.compile(dynamic=False)


def apply_fsdp(model: nn.Module, mesh, precision: str, cpu_offload: bool = False) -> None:
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    kwargs = {"mesh": mesh}
    if precision == "bf16":
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    if cpu_offload:
        # parameter shards, their gradients and so the optimizer states live in host memory; each
        # unit is copied to the device for its forward and backward
        kwargs["offload_policy"] = CPUOffloadPolicy(pin_memory=torch.cuda.is_available())
    blocks = getattr(model.vision.visual, "blocks", [])
    for block in blocks:
        fully_shard(block, **kwargs)
    # Every unit reshards after forward: a unit left gathered (reshard_after_forward=False) across
    # a forward without backward (an eval pass) keeps stale weights after the next optimizer step.
    for layer in model.layers:
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)


def parallelize(model: nn.Module, parallel: ParallelConfig, dist_info: Distributed,
                device: torch.device) -> nn.Module:
    """Apply checkpointing, compile and FSDP2 to `model` in place; returns it."""
    if parallel.activation_checkpointing:
        apply_activation_checkpointing(model)
    if parallel.compile:
        apply_compile(model)
    precision = resolve_precision(parallel, device)
    if dist_info.mesh is not None:
        apply_fsdp(model, dist_info.mesh, precision, parallel.cpu_offload)

    return model
