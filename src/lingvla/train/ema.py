"""Exponential moving average (EMA) of the trainable weights: `ema_decay` in the training config.

After every optimizer step, shadow <- decay * shadow + (1 - decay) * weights, in fp32, shard by shard
under FSDP2 (the shadows are DTensors placed like the parameters). Checkpoints store the shadows
under "ema" next to "model" and "optim", so a resumed run continues the same average; a run that
turns EMA on when resuming a checkpoint without one starts the average from the resumed weights.
The export (`lingvla export`, the trainer's final export/) holds the averaged weights when the run
has them (`--raw` for the trained weights themselves). Training itself never reads the shadows, so
the trained weights of a run are the same with EMA on or off.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

# Wrappers that insert themselves into parameter names (activation checkpointing, torch.compile).
_WRAPPER_PARTS = ("_checkpoint_wrapped_module.", "_orig_mod.")


def clean_name(name: str) -> str:
    """A parameter's name as the model's own state dict spells it (no wrapper prefixes)."""
    for part in _WRAPPER_PARTS:
        name = name.replace(part, "")
    return name


class EMA:
    """The moving average of `model`'s trainable parameters (taken as they are when created)."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay={decay}; expected 0 < decay < 1 (0 turns EMA off)")
        self.decay = float(decay)
        named = [(clean_name(n), p) for n, p in model.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.shadows = [p.detach().float().clone() for p in self.params]

    def _weights(self) -> list[torch.Tensor]:
        return [p.detach() if p.dtype == torch.float32 else p.detach().float() for p in self.params]

    @torch.no_grad()
    def reset(self) -> None:
        """Restart the average at the current weights."""
        torch._foreach_copy_(self.shadows, self._weights())

    @torch.no_grad()
    def update(self) -> None:
        torch._foreach_lerp_(self.shadows, self._weights(), 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The shadows by parameter name (DCP loads into these same tensors in place)."""
        return dict(zip(self.names, self.shadows))

    @contextmanager
    def applied(self):
        """Inside: the model's parameters hold the averaged weights; restored on exit."""
        saved = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, shadow in zip(self.params, self.shadows):
                p.copy_(shadow)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, raw in zip(self.params, saved):
                    p.copy_(raw)


def checkpoint_ema_names(path) -> list[str]:
    """The parameter names of the EMA shadows a DCP checkpoint directory holds (none: no EMA)."""
    from torch.distributed.checkpoint import FileSystemReader

    keys = FileSystemReader(str(path)).read_metadata().state_dict_metadata
    return [key[len("ema."):] for key in keys if key.startswith("ema.")]
