from pathlib import Path

import numpy as np
import pytest
import torch

from lingvla.batch import random_batch
from lingvla.config import tiny_config
from lingvla.model.lingvla import LingVLA

# 56 px keeps the model tests fast: 4 tokens per camera, same code paths as 224.
TEST_IMAGE_SIZE = 56


def make_batch(config, batch_size=2, seed=0, prompts=None, real_dims=14, pad_from=None):
    batch = random_batch(config, batch_size, seed=seed, real_dims=real_dims, prompts=prompts)
    if pad_from is not None:
        batch["action_is_pad"][:, pad_from:] = True
    return batch


def tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    overrides.setdefault("image_size", TEST_IMAGE_SIZE)
    return LingVLA(tiny_config(**overrides)).eval()


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def make_tiny_checkpoint(directory, image_size=TEST_IMAGE_SIZE, seed=0, embodiment="aloha", num_cameras=3):
    """An inference directory exactly as training exports it, with a random tiny model and
    made-up (but valid) normalization stats."""
    from lingvla import checkpoint_dir

    checkpoint_dir.write_random(directory, tiny_config(image_size=image_size, num_cameras=num_cameras), seed=seed,
                                embodiment=embodiment, stats="random",
                                train_info={"train_config": {"data": {"normalization": "quantile"}}})
    return directory


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "export")


# ---- closed-loop test doubles (the simulator tests) ----

class ReplayPolicy:
    """Test double: replays the scripted joint actions of one seed, `every` actions per call."""

    def __init__(self, task: str, seed: int, every: int, chunk: int = 50):
        from lingvla.sim.scripted import record_joint_actions

        self.actions = record_joint_actions(task, seed).actions
        self.every, self.chunk, self.calls = every, chunk, 0

    def reset(self) -> None:
        self.calls = 0

    def infer(self, obs: dict) -> dict:
        assert set(obs["images"]) == {"top", "left_wrist", "right_wrist"} and obs["prompt"]
        start = self.calls * self.every
        self.calls += 1
        rows = np.minimum(np.arange(start, start + self.chunk), len(self.actions) - 1)
        return {"actions": self.actions[rows]}


class HoldStill:
    """Test double: every action is the current joint state."""

    def infer(self, obs: dict) -> dict:
        return {"actions": np.tile(np.asarray(obs["state"], np.float32), (50, 1))}


def run_sim_cli(argv: list[str]) -> int:
    """Run a `lingvla` sim command (gen-demos, eval-sim, ...) in this process; its return code."""
    from lingvla.cli import main

    return main(argv)


ROBOTWIN_FOLDER = Path(__file__).resolve().parents[1] / "integrations" / "robotwin" / "lingvla"


def load_robotwin_module():
    """integrations/robotwin/lingvla/deploy_policy.py as RoboTwin loads it: a module from a file."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("lingvla_robotwin", ROBOTWIN_FOLDER / "deploy_policy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
