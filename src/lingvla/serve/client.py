"""A client of the released LingBot-VLA server's messages, for robots and benchmarks (RoboTwin)
that talk to `lingvla serve` (or to the released server) the released way.

    client = ReleasedClient("gpu-host", 8000, token="SECRET")
    client.reset("aloha")                                   # {"reset": true, "robo_name": ...}
    actions = client.infer({"cam_high": hwc, "cam_left_wrist": hwc, "cam_right_wrist": hwc},
                           state=joints_14, task="put the cup on the plate")   # [use_length, 14]

Messages (msgpack-numpy over a websocket, the server speaking first with its metadata):
request {"observation.images.<camera>": uint8 HWC, "observation.state": float [dim], "task": str},
reply {"action": float [use_length, dim], "server_timing": {...}}; reset {"reset": true,
"robo_name": name} -> {"action": None}. A text frame from the server is an error, raised here as
ServerError with its text. Needs only numpy, msgpack and websockets (not torch).
"""

from __future__ import annotations

import numpy as np

from lingvla.serve.protocol import packb, unpackb

IMAGE_PREFIX = "observation.images."


class ServerError(RuntimeError):
    """The server answered a request with an error (its text frame)."""


class ReleasedClient:
    def __init__(self, host: str = "127.0.0.1", port: int = 8000, *, token: str | None = None,
                 timeout: float = 60.0, noise_seed: int | None = None):
        from websockets.sync.client import connect

        headers = {"Authorization": f"Api-Key {token}"} if token else None
        # entered as a context manager: websockets >= 17 wants that; earlier versions return self
        self._ws = connect(f"ws://{host}:{port}", additional_headers=headers, max_size=None,
                           open_timeout=timeout, compression=None).__enter__()
        self.timeout = timeout
        self.noise_seed = noise_seed
        self.metadata = unpackb(self._ws.recv(timeout=timeout))

    def _call(self, message: dict):
        self._ws.send(packb(message))
        reply = self._ws.recv(timeout=self.timeout)
        if isinstance(reply, str):
            raise ServerError(reply)
        return unpackb(reply)

    def reset(self, robo_name: str | None = None) -> None:
        reply = self._call({"reset": True, "robo_name": robo_name})
        if not isinstance(reply, dict) or reply.get("action", 0) is not None:
            raise ServerError(f"unexpected reply to reset: {reply!r}")

    def infer(self, images: dict[str, np.ndarray], state, task: str) -> np.ndarray:
        """images: {camera: uint8 HxWx3} (camera names with or without "observation.images.")."""
        message = {(k if k.startswith(IMAGE_PREFIX) else IMAGE_PREFIX + k): np.ascontiguousarray(v, dtype=np.uint8)
                   for k, v in images.items()}
        message["observation.state"] = np.asarray(state, dtype=np.float32)
        message["task"] = task
        if self.noise_seed is not None:
            message["noise_seed"] = int(self.noise_seed)
        reply = self._call(message)
        if not isinstance(reply, dict) or "action" not in reply:
            raise ServerError(f"reply without 'action': {sorted(reply) if isinstance(reply, dict) else reply!r}")
        self.last_timing = reply.get("server_timing")
        return np.asarray(reply["action"])

    def close(self) -> None:
        self._ws.close()

    def __enter__(self) -> "ReleasedClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
