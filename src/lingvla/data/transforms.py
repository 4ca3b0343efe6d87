"""One transform path, OpenPI's shape: a robot's raw data -> the batch contract -> robot units.

`RobotTransform(embodiment, normalizer, width, image_size, image_resize)` turns
  - a camera frame (uint8 HxWx3, any size) into the model's uint8 3xSxS square        image()
  - the robot's raw state [dim] into the normalized, unified state [width]            state()
  - recorded actions [T, dim] into normalized, unified actions [T, width]             actions()
  - a model chunk (normalized, unified [T, width]) back into robot units [T, dim]     to_robot()
and holds `dim_mask` (the unified positions the robot uses). Training samples
(lingvla/data/samples.py) and the served policy (lingvla/serve/policy.py) both go through it, so
a policy sees at run time exactly what it was trained on. (The training loader decodes video
frames straight onto the square with the same fit, lingvla.data.video.fit_image's modes, in one
pass per frame.)
"""

from __future__ import annotations

import numpy as np
import torch

from lingvla.data.embodiments import Embodiment
from lingvla.data.normalize import Normalizer
from lingvla.data.video import RESIZE_MODES, fit_image


class RobotTransform:
    def __init__(self, embodiment: Embodiment, normalizer: Normalizer | None, width: int, image_size: int,
                 image_resize: str = "pad"):
        """normalizer None leaves values in robot units (for inspecting data, not for a model)."""
        if image_resize not in RESIZE_MODES:
            raise ValueError(f"image_resize={image_resize!r}; expected one of {RESIZE_MODES}")
        self.embodiment, self.normalizer = embodiment, normalizer
        self.width, self.image_size, self.image_resize = int(width), int(image_size), image_resize
        self.dim_mask = torch.from_numpy(embodiment.dim_mask(self.width))

    def image(self, frame: np.ndarray) -> np.ndarray:
        return fit_image(frame, self.image_size, self.image_resize).transpose(2, 0, 1)

    def state(self, raw) -> np.ndarray:
        x = np.asarray(raw, dtype=np.float32)
        if self.normalizer is not None:
            x = self.normalizer.normalize_state(x)
        return self.embodiment.pack("state", x, self.width).astype(np.float32)

    def actions(self, raw) -> np.ndarray:
        x = np.asarray(raw, dtype=np.float32)
        if self.normalizer is not None:
            x = self.normalizer.normalize_action(x)
        return self.embodiment.pack("action", x, self.width).astype(np.float32)

    def to_robot(self, chunk) -> np.ndarray:
        if isinstance(chunk, torch.Tensor):
            chunk = chunk.float().cpu().numpy()
        robot = self.embodiment.unpack("action", np.asarray(chunk, dtype=np.float32), self.width)
        if self.normalizer is not None:
            robot = self.normalizer.unnormalize_action(robot)
        return np.asarray(robot, dtype=np.float32)
