"""The policy server: OpenPI's websocket protocol in front of one `lingvla.serve.policy.Policy`.

Protocol (openpi-client's WebsocketClientPolicy works against it unchanged):
- websocket on ws://HOST:PORT; every frame both ways is msgpack-numpy (lingvla.serve.protocol);
- on connect the server sends the metadata map (Policy.metadata plus a "server" entry);
- then each binary frame from the client is one observation and gets one reply, in order:
  {"actions": float32 [chunk, dim], "server_timing": {"infer_ms", "queue_ms", "prev_total_ms"}};
- a request that fails gets a *text* frame naming the problem (openpi-client raises on it) and the
  connection stays open for the next request;
- GET /healthz answers 200 "OK"; with a token, the websocket handshake needs the header
  "Authorization: Api-Key <token>" (what openpi-client sends) or "Authorization: Bearer <token>":
  401 without it, 403 with a wrong one.

Optional observation keys: "noise_seed" (int, deterministic sampling), "prefix_actions" /
"prefix_delay" / "rtc_method" (real-time chunking, lingvla.serve.rtc).

The released LingBot-VLA server's messages are answered too, told apart by their keys: a request
{"observation.images.<camera>": HWC uint8, ..., "observation.state": raw joints, "task": str}
gets {"action": float32 [use_length, dim] in robot units, "server_timing": {...}} (use_length:
`released_use_length`, default the whole chunk), and {"reset": true, "robo_name": ...} gets
{"action": None} (the policy keeps no state between requests, so a reset has nothing to clear).

One model, one inference thread: requests from all connections queue FIFO in a single-worker
executor while the asyncio loop keeps accepting, answering /healthz and keepalive pings. A request
whose client goes away while it waits is skipped; one already running finishes and its reply is
dropped. SIGTERM / SIGINT: stop accepting, finish the requests in flight, close every connection
(1001), exit 0.
"""

from __future__ import annotations

import asyncio
import hmac
import http
import json
import logging
import signal
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from lingvla.serve.protocol import ProtocolError, packb, unpackb

log = logging.getLogger("lingvla.serve")

DEFAULT_MAX_MESSAGE_BYTES = 32 * 2**20
# Frames up to this many times the limit are read and answered with an error (the connection
# stays usable); anything larger closes the connection with 1009 before it is buffered whole.
TRANSPORT_LIMIT_FACTOR = 4
SERVER_KEYS = ("noise_seed", "prefix_actions", "prefix_delay", "rtc_method")


class RequestError(ValueError):
    """A request the server cannot run; sent back to the client as text."""


RELEASED_IMAGE_PREFIX = "observation.images."


def _released_style(obs: dict) -> bool:
    return "reset" in obs or "observation.state" in obs or any(
        isinstance(k, str) and k.startswith(RELEASED_IMAGE_PREFIX) for k in obs)


def _released_observation(obs: dict) -> dict:
    """The released server's request -> Policy.infer's observation (camera keys kept whole: the
    policy accepts an embodiment's dataset keys, e.g. observation.images.cam_high)."""
    missing = [k for k in ("observation.state", "task") if k not in obs]
    images = {k: v for k, v in obs.items() if isinstance(k, str) and k.startswith(RELEASED_IMAGE_PREFIX)}
    if missing or not images:
        raise RequestError(f"released-style request lacks {missing + ([] if images else ['observation.images.*'])} "
                           "(expected observation.images.<camera>, observation.state, task)")
    out = {"images": images, "state": obs["observation.state"], "prompt": obs["task"]}
    for key in SERVER_KEYS:
        if key in obs:
            out[key] = obs[key]
    unknown = sorted(set(obs) - set(images) - {"observation.state", "task", *SERVER_KEYS})
    if unknown:
        raise RequestError(f"released-style request has unknown keys {unknown}")
    return out


def check_token(header: str | None, token: str) -> http.HTTPStatus | None:
    """None if the Authorization header carries the token, else the status to refuse with."""
    if not header:
        return http.HTTPStatus.UNAUTHORIZED
    scheme, _, key = header.strip().partition(" ")
    if scheme.lower() not in ("api-key", "bearer"):
        return http.HTTPStatus.UNAUTHORIZED
    if not hmac.compare_digest(key.strip().encode(), token.encode()):
        return http.HTTPStatus.FORBIDDEN
    return None


class PolicyServer:
    """Serve `policy` (anything with .infer(obs, **kw) -> {"actions": ...} and .metadata)."""

    def __init__(self, policy, *, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, rtc_method: str = "inpaint",
                 released_use_length: int | None = None):
        from lingvla.serve.rtc import RTCConfig

        self.policy = policy
        chunk = getattr(getattr(policy, "config", None), "chunk_size", None)
        self.released_use_length = released_use_length if released_use_length is None else int(released_use_length)
        if released_use_length is not None and not 1 <= released_use_length <= (chunk or released_use_length):
            raise ValueError(f"released_use_length={released_use_length}; expected 1 .. chunk size {chunk}")
        self.host, self.port, self.token = host, port, token
        self.max_message_bytes = int(max_message_bytes)
        self.default_rtc = RTCConfig(method=rtc_method)
        self.metadata = dict(policy.metadata)
        self.metadata["server"] = {"protocol": "openpi-websocket", "max_message_bytes": self.max_message_bytes,
                                   "rtc_methods": ["inpaint", "guidance"], "rtc_default": rtc_method,
                                   "optional_keys": list(SERVER_KEYS),
                                   "released_messages": {"use_length": self.released_use_length or chunk}}
        self.stats = {"connections": 0, "requests": 0, "errors": 0, "dropped": 0}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lingvla-infer")
        self._busy: set = set()
        self._stopping = False
        self._server = None
        self.ready = threading.Event()

    # ---------------------------------------------------------------------------- handshake
    def _process_request(self, connection, request):
        if request.path == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        if self.token is not None:
            refused = check_token(request.headers.get("Authorization"), self.token)
            if refused is not None:
                log.warning("refused %s: %s", connection.remote_address, refused.phrase)
                return connection.respond(refused, "send 'Authorization: Api-Key <token>' or "
                                                   "'Authorization: Bearer <token>'\n")
        return None

    # ------------------------------------------------------------------------------ requests
    def _parse(self, message) -> tuple[dict, dict]:
        """A frame -> (observation for Policy.infer, its keyword arguments)."""
        from lingvla.serve.rtc import RTCConfig

        if isinstance(message, str):
            raise RequestError("expected a binary msgpack frame; got a text frame")
        if len(message) > self.max_message_bytes:
            raise RequestError(f"message of {len(message)} bytes exceeds the server's limit of "
                               f"{self.max_message_bytes} bytes (lingvla serve --max-message-mb)")
        obs = unpackb(message)
        if not isinstance(obs, dict):
            raise RequestError(f"observation must be a msgpack map; got {type(obs).__name__}")
        obs = dict(obs)
        kwargs = {}
        if _released_style(obs):
            kwargs["released"] = True
            if obs.get("reset"):
                kwargs["reset"] = True
                return obs, kwargs
            obs = _released_observation(obs)
        seed = obs.pop("noise_seed", None)
        if seed is not None:
            if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
                raise RequestError(f"noise_seed must be a non-negative int; got {seed!r}")
            kwargs["noise"] = self._noise(int(seed))
        prefix = obs.pop("prefix_actions", None)
        delay = obs.pop("prefix_delay", 0)
        method = obs.pop("rtc_method", None)
        if prefix is not None:
            kwargs["prefix_actions"], kwargs["prefix_delay"] = prefix, delay
            config = self.default_rtc
            if method is not None:
                try:
                    config = RTCConfig(method=str(method), max_guidance=config.max_guidance,
                                       schedule=config.schedule)
                except ValueError as err:
                    raise RequestError(str(err)) from err
            kwargs["rtc"] = config
        return obs, kwargs

    def _noise(self, seed: int):
        import torch

        c = self.policy.config
        g = torch.Generator().manual_seed(seed)
        return torch.randn((1, c.chunk_size, c.action_dim), generator=g)

    def _infer(self, obs: dict, kwargs: dict, enqueued: float):
        started = time.perf_counter()
        kwargs = {k: v for k, v in kwargs.items() if k != "released"}
        out = self.policy.infer(obs, **kwargs)
        done = time.perf_counter()
        return out, (started - enqueued) * 1000, (done - started) * 1000

    async def _answer(self, connection, message, prev_total_ms):
        """-> bytes or str to send, or None when the client went away meanwhile."""
        from lingvla.serve.policy import ObservationError

        self.stats["requests"] += 1
        try:
            obs, kwargs = self._parse(message)
        except (RequestError, ProtocolError) as err:
            return self._error(connection, err)
        released = kwargs.get("released", False)
        if kwargs.get("reset"):
            log.info("reset from %s (robo_name %r)", connection.remote_address, obs.get("robo_name"))
            return packb({"action": None})
        loop = asyncio.get_running_loop()
        job = loop.run_in_executor(self._executor, self._infer, obs, kwargs, time.perf_counter())
        closed = asyncio.ensure_future(connection.wait_closed())
        try:
            await asyncio.wait({job, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
        if not job.done():
            # A job still queued is skipped; one already running finishes unobserved.
            job.cancel()
            self.stats["dropped"] += 1
            log.info("client %s left during inference; reply dropped", connection.remote_address)
            return None
        try:
            out, queue_ms, infer_ms = job.result()
        except ObservationError as err:
            return self._error(connection, err)
        except Exception as err:  # a bug or an exhausted device: report it, keep serving
            log.error("inference failed:\n%s", traceback.format_exc())
            return self._error(connection, err, internal=True)
        timing = {"infer_ms": infer_ms, "queue_ms": queue_ms}
        if prev_total_ms is not None:
            timing["prev_total_ms"] = prev_total_ms
        actions = np.asarray(out["actions"], dtype=np.float32)
        if released:
            return packb({"action": actions[:self.released_use_length], "server_timing": timing})
        reply = dict(out)
        reply["actions"] = actions
        reply["server_timing"] = timing
        return packb(reply)

    def _error(self, connection, err: Exception, internal: bool = False) -> str:
        self.stats["errors"] += 1
        kind = "internal server error" if internal else type(err).__name__
        log.info("request from %s refused: %s: %s", connection.remote_address, kind, err)
        return f"{kind}: {err}"

    async def _handler(self, connection) -> None:
        from websockets.exceptions import ConnectionClosed

        self.stats["connections"] += 1
        log.info("connection from %s", connection.remote_address)
        try:
            await connection.send(packb(self.metadata))
            prev_total_ms = None
            while not self._stopping:
                message = await connection.recv()
                received = time.perf_counter()
                self._busy.add(connection)
                try:
                    reply = await self._answer(connection, message, prev_total_ms)
                    if reply is None:
                        return
                    await connection.send(reply)
                finally:
                    self._busy.discard(connection)
                prev_total_ms = (time.perf_counter() - received) * 1000
            await connection.close(1001, "server shutting down")
        except ConnectionClosed:
            pass
        finally:
            log.info("connection from %s closed", connection.remote_address)

    # ---------------------------------------------------------------------------------- run
    async def serve(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set, then shut down gracefully."""
        from websockets.asyncio.server import serve

        limit = self.max_message_bytes * TRANSPORT_LIMIT_FACTOR
        async with serve(self._handler, self.host, self.port, process_request=self._process_request,
                         max_size=limit, compression=None) as server:
            self._server = server
            self.port = server.sockets[0].getsockname()[1]
            log.info("serving on ws://%s:%d", self.host, self.port)
            self.ready.set()
            await stop.wait()
            log.info("shutting down: finishing %d request(s) in flight", len(self._busy))
            self._stopping = True
            server.close(close_connections=False)
            idle = [c.close(1001, "server shutting down") for c in server.connections if c not in self._busy]
            await asyncio.gather(*idle, return_exceptions=True)
            await server.wait_closed()
        self._executor.shutdown(wait=True)
        log.info("stopped: %s", json.dumps(self.stats))

    def run(self) -> int:
        """Blocking: serve until SIGTERM or SIGINT; returns the exit status (0)."""

        async def main():
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            await self.serve(stop)

        asyncio.run(main())
        return 0


class ServerThread:
    """A PolicyServer on its own event loop in a background thread (tests, benchmarks).

        with ServerThread(policy, port=0) as server:
            client = WebsocketClientPolicy("127.0.0.1", server.port)
    """

    def __init__(self, policy, **kwargs):
        kwargs.setdefault("port", 0)
        self.server = PolicyServer(policy, **kwargs)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="lingvla-server", daemon=True)

    def _main(self) -> None:
        async def main():
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            await self.server.serve(self._stop)

        try:
            asyncio.run(main())
        except BaseException as err:  # surfaced by start()
            self._error = err
            self.server.ready.set()

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return f"ws://{self.server.host}:{self.server.port}"

    def start(self, timeout: float = 30.0) -> "ServerThread":
        self._thread.start()
        if not self.server.ready.wait(timeout) or self._error is not None:
            raise RuntimeError(f"server did not start: {self._error!r}")
        return self

    def stop(self, timeout: float = 30.0) -> None:
        if self._loop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
