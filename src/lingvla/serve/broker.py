"""The client-side action broker: one action per control tick out of a stream of action chunks.

    broker = ActionBroker(policy, Execution(mode="rtc", execute_horizon=25, delay=5))
    while True:
        robot.apply(broker.act(robot.observe()))

An `Execution` says how chunks drive the robot. Time is counted in control ticks. A chunk requested
at tick k is computed from the observation of tick k, so its step i is meant for tick k + i; it
becomes usable `delay` ticks later (the inference delay d, in ticks). A new chunk is requested every
`execute_horizon` ticks (s). Modes:

- "chunk": execute the newest usable chunk (with d > 0 this is naive asynchronous chunking: the
  switch to a freshly sampled chunk can jump).
- "ensemble": ACT's temporal ensembling: average every usable chunk that covers the tick with
  weights exp(-m * i), i = 0 for the oldest (m = `ensemble_decay`; m > 0 favours older chunks, as
  ACT does, m < 0 newer ones).
- "rtc": real-time chunking. The request carries the current chunk's remaining actions and d
  (`prefix_actions`, `prefix_delay`) and the policy samples a continuation (lingvla.serve.rtc, with
  the Execution's `rtc` config; None: the policy's or the server's default sampler); the broker then
  executes the new chunk from step d, exactly as in "chunk" mode.

With `asynchronous=True` the request runs in a background thread while the robot keeps acting; the
switch still happens exactly d ticks after the request (the broker waits if the chunk is late and
counts a stall), so the executed stream is the same as with `asynchronous=False`, which computes
the chunk at once and holds it back d ticks (a simulated delay). The first chunk (and any gap) is
fetched synchronously.

A chunk source is `source(obs, prefix_actions | None, prefix_delay) -> float [T, dim]`;
`as_source` makes one from a `lingvla.serve.policy.Policy`, an openpi-style client (`.infer(obs)`,
e.g. openpi_client's WebsocketClientPolicy against `lingvla serve`) or a plain callable.
"""

from __future__ import annotations

import math
import numbers
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from lingvla.serve.rtc import RTCConfig

MODES = ("chunk", "ensemble", "rtc")


@dataclass(frozen=True)
class Execution:
    """How chunks drive the robot: which chunks make each tick's action (`mode`, one of MODES), how
    many actions of a chunk run before the next one is requested, and how late that one arrives."""

    mode: str = "chunk"
    execute_horizon: int | None = None  # s: actions executed per chunk (None: the mode's default, `resolve`)
    delay: int = 0  # d: ticks executed while the next chunk is computed (0 <= d <= s)
    ensemble_decay: float = 0.01  # "ensemble": ACT's m in the weights exp(-m * i)
    rtc: RTCConfig | None = None  # "rtc": the sampler's config (None: the policy's or server's default)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"unknown broker mode {self.mode!r}: mode must be one of {MODES}")
        for name in ("execute_horizon", "delay"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
                raise ValueError(f"{name} must be an int; got {value!r}")
        if self.execute_horizon is not None and self.execute_horizon < 1:
            raise ValueError(f"execute_horizon must be >= 1; got {self.execute_horizon}")
        if self.delay < 0 or (self.execute_horizon is not None and self.delay > self.execute_horizon):
            raise ValueError(f"delay must be in [0, execute_horizon]: one request in flight at a time; "
                             f"got delay={self.delay}, execute_horizon={self.execute_horizon}")
        if not (isinstance(self.ensemble_decay, numbers.Real) and math.isfinite(self.ensemble_decay)):
            raise ValueError(f"ensemble_decay must be a finite number; got {self.ensemble_decay!r}")
        if self.rtc is not None and self.mode != "rtc":
            raise ValueError(f"rtc (an RTCConfig) is for mode 'rtc'; got mode {self.mode!r}")

    def resolve(self, chunk_size: int) -> Execution:
        """This execution for chunks of `chunk_size` actions, execute_horizon filled in when None:
        1 for "ensemble" (ACT), half the chunk for "rtc", the whole chunk for "chunk"."""
        if self.execute_horizon is not None:
            return self
        mode = self.mode
        horizon = 1 if mode == "ensemble" else chunk_size // 2 if mode == "rtc" else chunk_size
        return replace(self, execute_horizon=horizon)


def policy_source(policy, rtc=None):
    """A source over a local `lingvla.serve.policy.Policy` (rtc: an RTCConfig for its sampler)."""

    def source(obs, prefix_actions=None, prefix_delay=0):
        if prefix_actions is None:
            return policy.infer(obs)["actions"]
        return policy.infer(obs, prefix_actions=prefix_actions, prefix_delay=prefix_delay, rtc=rtc)["actions"]

    return source


def client_source(client, rtc_method: str | None = None):
    """A source over a remote policy (`client.infer(obs) -> {"actions": ...}`): the RTC inputs
    travel as the observation keys `prefix_actions` / `prefix_delay` (and `rtc_method`)."""

    def source(obs, prefix_actions=None, prefix_delay=0):
        if prefix_actions is not None:
            obs = dict(obs, prefix_actions=np.asarray(prefix_actions, dtype=np.float32),
                       prefix_delay=int(prefix_delay))
            if rtc_method is not None:
                obs["rtc_method"] = rtc_method
        return client.infer(obs)["actions"]

    return source


def as_source(obj, rtc=None):
    from lingvla.serve.policy import Policy

    if isinstance(obj, Policy):
        return policy_source(obj, rtc)
    if hasattr(obj, "infer"):
        return client_source(obj, getattr(rtc, "method", None))
    if callable(obj):
        return obj
    raise TypeError(f"cannot get action chunks from a {type(obj).__name__}")


@dataclass
class _Chunk:
    start: int  # the tick of the observation it was computed from = the tick of its step 0
    available: int  # first tick it may drive the robot
    actions: np.ndarray | None = None
    future: Future | None = None


class ActionBroker:
    """One action per control tick out of a chunk source, executed as `execution` says (module doc).
    `execution` is resolved against the chunk size once the first chunk is in hand."""

    def __init__(self, source, execution: Execution = Execution(), *, asynchronous: bool = False,
                 chunk_size: int | None = None):
        self.source = as_source(source, execution.rtc)
        self.execution = execution
        self.chunk_size = chunk_size
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lingvla-broker") \
            if asynchronous else None
        self.reset()

    # ------------------------------------------------------------------------------ state
    def reset(self) -> None:
        """Forget all chunks (a new episode); waits for a request still in flight."""
        pending = getattr(self, "_pending", None)
        if pending is not None and pending.future is not None:
            pending.future.exception()
        self.tick = 0
        self._chunks: list[_Chunk] = []
        self._pending: _Chunk | None = None
        self._next_request = 0
        self.actions: list[np.ndarray] = []  # every action returned, in order
        self.switches: list[int] = []  # ticks at which a new chunk started to drive the robot
        self.latencies_ms: list[float] = []  # request -> chunk in hand
        self.stalls = 0  # switches that had to wait for a late chunk

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    # ------------------------------------------------------------------------------- chunks
    def _check_chunk(self, actions) -> np.ndarray:
        actions = np.asarray(actions, dtype=np.float32)
        if actions.ndim != 2:
            raise ValueError(f"a chunk must be [T, dim]; got shape {actions.shape}")
        if self.chunk_size is None:
            self.chunk_size = actions.shape[0]
        if actions.shape[0] != self.chunk_size:
            raise ValueError(f"chunk has {actions.shape[0]} steps; expected {self.chunk_size}")
        ex = self.execution = self.execution.resolve(self.chunk_size)
        if ex.execute_horizon + ex.delay > self.chunk_size:
            raise ValueError(f"execute_horizon ({ex.execute_horizon}) + delay ({ex.delay}) exceeds the "
                             f"chunk ({self.chunk_size}): the robot would run out of actions")
        return actions

    def _resolve(self, chunk: _Chunk) -> None:
        if chunk.future is not None:
            if not chunk.future.done():
                self.stalls += 1
            chunk.actions, chunk.future = chunk.future.result(), None
        actions, latency_ms = chunk.actions
        chunk.actions = self._check_chunk(actions)
        self.latencies_ms.append(latency_ms)
        self._chunks.append(chunk)
        self.switches.append(self.tick)

    def _prefix(self) -> np.ndarray | None:
        """The current plan from this tick on (RTC's prefix), or None before the first chunk."""
        if self.execution.mode != "rtc" or not self._chunks:
            return None
        newest = self._chunks[-1]
        rest = newest.actions[self.tick - newest.start:]
        return rest if len(rest) else None

    def _request(self, obs, delay: int) -> _Chunk:
        prefix = self._prefix()
        args = (obs, prefix, delay) if prefix is not None else (obs, None, 0)
        chunk = _Chunk(start=self.tick, available=self.tick + delay)
        if self._executor is not None and delay > 0:
            # The robot may refill its buffers (a simulator renders into the same arrays) while
            # the request runs: the background thread gets its own copy.
            chunk.future = self._executor.submit(self._call_source, _snapshot(args[0]), *args[1:])
        else:
            chunk.actions = self._call_source(*args)
        return chunk

    def _call_source(self, *args) -> tuple[np.ndarray, float]:
        start = time.perf_counter()
        actions = self.source(*args)
        return actions, (time.perf_counter() - start) * 1000

    def _covering(self) -> list[_Chunk]:
        return [c for c in self._chunks if c.start <= self.tick < c.start + self.chunk_size]

    # ---------------------------------------------------------------------------------- act
    def _resolve_due(self) -> None:
        if self._pending is not None and self._pending.available <= self.tick:
            self._resolve(self._pending)
            self._pending = None

    def needs_observation(self) -> bool:
        """Whether this tick's act() sends its observation to the source. A caller that pays for
        observations (a simulator rendering cameras) may pass None to act() when it does not."""
        self._resolve_due()
        return not self._covering() or (self.tick >= self._next_request and self._pending is None)

    def act(self, obs) -> np.ndarray:
        """The action for this control tick (robot units, float32 [dim]). `obs` may be None on
        ticks that do not need it (`needs_observation()`)."""
        if obs is None and self.needs_observation():
            raise ValueError(f"tick {self.tick} requests a chunk: act() needs the observation")
        self._resolve_due()
        if not self._covering():
            # Start of an episode (or a gap): nothing to execute, so wait for a chunk now.
            self._resolve(self._request(obs, 0))
            self._next_request = self.tick + self.execution.execute_horizon
        elif self.tick >= self._next_request and self._pending is None:
            delay = self.execution.delay
            chunk = self._request(obs, delay)
            if delay == 0:
                self._resolve(chunk)
            else:
                self._pending = chunk
            self._next_request = self.tick + self.execution.execute_horizon
        # Chunks that can no longer cover any tick are dropped.
        self._chunks = self._covering()
        action = self._mix(self._chunks)
        self.actions.append(action)
        self.tick += 1
        return action

    def _mix(self, chunks: list[_Chunk]) -> np.ndarray:
        if self.execution.mode != "ensemble":
            newest = chunks[-1]
            return newest.actions[self.tick - newest.start].copy()
        weights = ensemble_weights(len(chunks), self.execution.ensemble_decay)
        rows = np.stack([c.actions[self.tick - c.start] for c in chunks])
        return (weights[:, None] * rows).sum(0).astype(np.float32)


def _snapshot(obs):
    if isinstance(obs, dict):
        return {k: _snapshot(v) for k, v in obs.items()}
    if isinstance(obs, np.ndarray):
        return obs.copy()
    return obs


def ensemble_weights(n: int, decay: float) -> np.ndarray:
    """ACT's weights over n chunks, oldest first: exp(-decay * i), normalized to sum 1."""
    w = np.exp(-decay * np.arange(n, dtype=np.float64))
    return w / w.sum()


def boundary_jumps(actions, switches) -> np.ndarray:
    """L2 size of the step into each switch tick (the first action of a newly arrived chunk)."""
    actions = np.asarray(actions)
    ticks = [k for k in switches if 0 < k < len(actions)]
    return np.linalg.norm(actions[ticks] - actions[[k - 1 for k in ticks]], axis=-1)
