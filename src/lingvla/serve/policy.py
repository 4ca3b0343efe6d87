"""The inference object: one checkpoint directory in, robot-unit action chunks out.

The policy server, the simulator's closed-loop evaluation and user code all call the same
`Policy.infer`, so preprocessing (camera mapping, resize-with-pad, normalization, padding into the
unified width) and postprocessing (cut to the robot's dims, un-normalize) exist once.

    policy = Policy.from_checkpoint("runs/aloha/export")
    out = policy.infer({"images": {"top": hwc_uint8, "left_wrist": ..., "right_wrist": ...},
                        "state": np.float32[14], "prompt": "transfer the cube"})
    out["actions"]  # float32 [50, 14], robot units
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lingvla.data.embodiments import CAMERA_SLOTS, Embodiment, parse_embodiment
from lingvla.data.normalize import Normalizer
from lingvla.data.transforms import RobotTransform
from lingvla.model.lingvla import LingVLA

IMAGE_PREFIX = "observation.images."


class ObservationError(ValueError):
    """An observation that does not fit the policy; the message names the field and the rule."""


class Policy:
    def __init__(self, model: LingVLA, normalizer: Normalizer, embodiment: Embodiment,
                 num_steps: int | None = None, graphed: bool = False, compile_layers: bool = False,
                 allow_missing_cameras: bool = False):
        """allow_missing_cameras: serve an observation that lacks one of the embodiment's cameras,
        its slot masked out (as in training on data without that camera); by default such an
        observation is an ObservationError naming the camera, not a silent change of input.
        graphed: sample through lingvla.model.graphed.GraphedSampler, one CUDA graph per chunk
        on a GPU (5.4x faster than eager for the 4B model on an H200, BENCHMARKS.md); on CPU the
        same buffer path runs eagerly. It switches the model to the sdpa attention backend (same
        numbers as flex, tested). RTC requests keep the eager sampler (they need gradients).
        compile_layers (with graphed): torch.compile the layers before the graph is captured and run
        the expert on its concatenated weights (GraphedSampler's compile_layers and fuse_expert)."""
        if compile_layers and not graphed:
            raise ValueError("compile_layers needs graphed=True (the compiled layers are captured in the graph)")
        self.model = model.eval()
        self.normalizer = normalizer
        self.embodiment = embodiment
        self.config = model.config
        self.num_steps = num_steps or self.config.num_steps
        self.allow_missing_cameras = bool(allow_missing_cameras)
        self.sampler = None
        if graphed:
            from lingvla.model.graphed import GraphedSampler

            self.config.attn_backend = "sdpa"
            self.sampler = GraphedSampler(self.model, num_steps=self.num_steps, compile_layers=compile_layers,
                                          fuse_expert=compile_layers)
        self.slots = CAMERA_SLOTS[:self.config.num_cameras]
        # raw observation -> batch contract -> robot units: the training samples' path too
        self.transform = RobotTransform(embodiment, normalizer, self.config.action_dim, self.config.image_size,
                                        self.config.image_resize)
        self.dim_mask = self.transform.dim_mask[None]
        # Every name a client may use for a camera: the slot, the dataset key, its short form.
        self.camera_names: dict[str, int] = {}
        for i, slot in enumerate(self.slots):
            self.camera_names[slot] = i
            for key in embodiment.cameras.get(slot) or []:
                self.camera_names[key] = i
                if key.startswith(IMAGE_PREFIX):
                    self.camera_names[key[len(IMAGE_PREFIX):]] = i

    @classmethod
    def from_checkpoint(cls, directory: str | Path, *, embodiment: str | None = None,
                        device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                        num_steps: int | None = None, graphed: bool = False,
                        compile_layers: bool = False, allow_missing_cameras: bool = False) -> "Policy":
        """Load an inference directory (model.safetensors, config.yaml, norm_stats.json,
        embodiments.yaml). `embodiment` picks the robot when the checkpoint knows several."""
        from lingvla import checkpoint_dir

        directory = Path(directory)
        files = checkpoint_dir.read_policy_files(directory)
        specs = files.embodiments
        if embodiment is None:
            if len(specs) != 1:
                raise ValueError(f"{directory} holds embodiments {sorted(specs)}; choose one with embodiment=")
            embodiment = next(iter(specs))
        if embodiment not in specs:
            raise ValueError(f"embodiment {embodiment!r} is not in {directory} (it has {sorted(specs)})")
        emb = parse_embodiment(embodiment, specs[embodiment], str(directory / checkpoint_dir.EMBODIMENTS_NAME))
        normalizer = Normalizer.from_file(files.norm_stats_path, embodiment, mode=files.normalization,
                                          state_dim=emb.state_dim, action_dim=emb.action_dim)
        model = LingVLA.from_pretrained(directory, device=device, dtype=dtype)
        return cls(model, normalizer, emb, num_steps=num_steps, graphed=graphed, compile_layers=compile_layers,
                   allow_missing_cameras=allow_missing_cameras)

    @property
    def metadata(self) -> dict:
        """What a client needs to know; sent as the server's first frame."""
        return {
            "policy": "lingvla",
            "embodiment": self.embodiment.name,
            "state_dim": self.embodiment.state_dim,
            "action_dim": self.embodiment.action_dim,
            "action_horizon": self.config.chunk_size,
            "num_steps": self.num_steps,
            "image_size": self.config.image_size,
            "cameras": {slot: sorted(n for n, i in self.camera_names.items() if i == k)
                        for k, slot in enumerate(self.slots)},
            "max_prompt_tokens": self.config.max_token_len,
        }

    # ------------------------------------------------------------------------- preprocessing
    def _image(self, name: str, value) -> np.ndarray:
        array = np.asarray(value)
        if array.dtype != np.uint8:
            raise ObservationError(f"images[{name!r}] must be uint8; got {array.dtype}")
        if array.ndim != 3:
            raise ObservationError(f"images[{name!r}] must be HxWx3 (or 3xHxW); got shape {array.shape}")
        if array.shape[-1] != 3 and array.shape[0] == 3:
            array = array.transpose(1, 2, 0)
        if array.shape[-1] != 3 or min(array.shape[:2]) < 1:
            raise ObservationError(f"images[{name!r}] must be HxWx3 (or 3xHxW); got shape {array.shape}")
        return self.transform.image(array)

    def batch_from_obs(self, obs: dict) -> dict:
        """One observation -> a batch-contract dict of size 1 (normalized, padded)."""
        if not isinstance(obs, dict):
            raise ObservationError(f"observation must be a dict; got {type(obs).__name__}")
        missing = [k for k in ("images", "state", "prompt") if k not in obs]
        if missing:
            raise ObservationError(f"observation is missing {missing} (expected images, state, prompt)")
        images = obs["images"]
        if not isinstance(images, dict) or not images:
            raise ObservationError("images must be a non-empty dict {camera name: uint8 image}")
        size = self.config.image_size
        pixels = np.zeros((1, len(self.slots), 3, size, size), dtype=np.uint8)
        image_mask = np.zeros((1, len(self.slots)), dtype=bool)
        for name, value in images.items():
            slot = self.camera_names.get(name)
            if slot is None:
                raise ObservationError(f"unknown camera {name!r}; this policy takes "
                                       f"{sorted(self.camera_names)}")
            if image_mask[0, slot]:
                raise ObservationError(f"camera {name!r} fills slot {self.slots[slot]!r}, already given")
            pixels[0, slot] = self._image(name, value)
            image_mask[0, slot] = True
        if not self.allow_missing_cameras:
            lacking = [s for i, s in enumerate(self.slots) if not image_mask[0, i] and self.embodiment.cameras.get(s)]
            if lacking:
                raise ObservationError(f"observation lacks camera(s) {lacking} (names accepted: "
                                       f"{ {s: self.embodiment.cameras[s] for s in lacking} }); this policy "
                                       "was trained with them. Send every camera, or load the policy with "
                                       "allow_missing_cameras=True to serve with the slot masked out")
        state = np.asarray(obs["state"])
        if state.dtype.kind not in "fiu":
            raise ObservationError(f"state must be numeric; got dtype {state.dtype}")
        state = state.astype(np.float32).reshape(-1)
        if state.shape[0] != self.embodiment.state_dim:
            raise ObservationError(f"state has {state.shape[0]} values; embodiment "
                                   f"{self.embodiment.name!r} has state_dim={self.embodiment.state_dim}")
        if not np.isfinite(state).all():
            raise ObservationError(f"state contains NaN or inf at dims {np.flatnonzero(~np.isfinite(state)).tolist()}")
        prompt = obs["prompt"]
        if not isinstance(prompt, str):
            raise ObservationError(f"prompt must be a str; got {type(prompt).__name__}")
        unified = self.transform.state(state)
        return {"images": torch.from_numpy(pixels), "image_mask": torch.from_numpy(image_mask),
                "prompt": [prompt], "state": torch.from_numpy(unified.astype(np.float32))[None],
                "action_dim_mask": self.dim_mask.clone()}

    def warmup(self, prompt: str = "warm up") -> float:
        """One chunk on a blank observation (every camera black, state zero) -> seconds it took.

        With graphed=True this captures the CUDA graph (and compiles the layers with
        compile_layers) before the first real request, which then replays it: every observation
        fills the same input shapes (images resized to the model's size, prompts padded)."""
        import time

        size = self.config.image_size
        obs = {"images": {slot: np.zeros((size, size, 3), np.uint8) for slot in self.slots},
               "state": np.zeros(self.embodiment.state_dim, np.float32), "prompt": prompt}
        start = time.perf_counter()
        self.infer(obs)
        return time.perf_counter() - start

    def actions_from_model(self, chunk: torch.Tensor) -> np.ndarray:
        """Model output [chunk, action_dim] (normalized, unified) -> robot units [chunk, dim]."""
        return self.transform.to_robot(chunk)

    # ---------------------------------------------------------------------------------- infer
    @torch.no_grad()
    def infer(self, obs: dict, *, noise: torch.Tensor | None = None, prefix_actions=None,
              prefix_delay: int = 0, rtc=None) -> dict:
        """-> {"actions": float32 [chunk_size, action_dim]} in the robot's own units.

        prefix_actions (robot units [k, action_dim], aligned to this observation's time) asks for
        real-time chunking: the chunk continues those actions, its first prefix_delay ones equal
        them exactly (lingvla.serve.rtc; rtc: an RTCConfig choosing the sampler)."""
        batch = self.batch_from_obs(obs)
        try:
            if prefix_actions is not None:
                from lingvla.serve.rtc import infer_with_prefix

                return {"actions": infer_with_prefix(self, batch, prefix_actions, prefix_delay,
                                                     noise=noise, config=rtc)}
            if self.sampler is not None:
                chunk = self.sampler.sample(batch, noise=noise)
            else:
                chunk = self.model.sample_actions(batch, noise=noise, num_steps=self.num_steps)
        except ValueError as err:  # e.g. a prompt over the token budget, a malformed prefix
            raise ObservationError(str(err)) from err
        return {"actions": self.actions_from_model(chunk[0])}
