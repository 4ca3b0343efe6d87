"""The released LingBot-VLA messages against `lingvla serve`: a client written from the message
description (request keys, reset, reply 'action'), named errors that keep the connection open,
and the RoboTwin 2.0 policy module driven by recorded observation dicts of RoboTwin's layout."""


import numpy as np
import pytest

from conftest import ROBOTWIN_FOLDER, load_robotwin_module
from lingvla import checkpoint_dir
from lingvla.config import tiny_config
from lingvla.serve.client import ReleasedClient, ServerError
from lingvla.serve.policy import Policy
from lingvla.serve.server import ServerThread



@pytest.fixture(scope="module")
def served(tmp_path_factory):
    directory = checkpoint_dir.write_random(tmp_path_factory.mktemp("released") / "export",
                                            tiny_config(image_size=56, chunk_size=8), stats="random")
    policy = Policy.from_checkpoint(directory)
    with ServerThread(policy, port=0, released_use_length=5) as server:
        yield policy, server


def robotwin_observation(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    cams = {name: {"rgb": rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)}
            for name in ("head_camera", "left_camera", "right_camera")}
    return {"observation": cams, "joint_action": {"vector": rng.uniform(-1, 1, 14).astype(np.float32)}}


def expected_chunk(policy, server, images, state, task, seed):
    obs = {"images": {f"observation.images.{k}": v for k, v in images.items()}, "state": state, "prompt": task}
    return policy.infer(obs, noise=server.server._noise(seed))["actions"]


def test_released_messages(served):
    policy, server = served
    with ReleasedClient("127.0.0.1", server.port, noise_seed=3) as client:
        assert client.metadata["server"]["released_messages"] == {"use_length": 5}
        client.reset("aloha")
        rng = np.random.default_rng(0)
        images = {c: rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
                  for c in ("cam_high", "cam_left_wrist", "cam_right_wrist")}
        state = rng.uniform(-1, 1, 14).astype(np.float32)
        action = client.infer(images, state, "put the block on the plate")
        assert action.shape == (5, 14) and action.dtype == np.float32
        np.testing.assert_allclose(action, expected_chunk(policy, server, images, state,
                                                          "put the block on the plate", 3)[:5], rtol=1e-5, atol=1e-5)
        with pytest.raises(ServerError, match="lacks \\['task'\\]"):
            client._call({"observation.images.cam_high": images["cam_high"], "observation.state": state})
        with pytest.raises(ServerError, match="ObservationError: state has 3 values"):
            client.infer(images, state[:3], "open")
        with pytest.raises(ServerError, match="unknown keys \\['speed'\\]"):
            client._call({"observation.images.cam_high": images["cam_high"], "observation.state": state,
                          "task": "open", "speed": 2})
        assert client.infer(images, state, "open").shape == (5, 14)  # the connection kept serving


def test_robotwin_module_drives_a_task_environment(served):
    policy, server = served
    module = load_robotwin_module()
    import yaml

    usr_args = yaml.safe_load((ROBOTWIN_FOLDER / "deploy_policy.yml").read_text())
    usr_args.update(port=server.port, noise_seed=7)

    class TaskEnv:
        def __init__(self):
            self.actions, self.eval_success = [], False

        def get_instruction(self):
            return "beat the block with the hammer"

        def take_action(self, action, action_type="qpos"):
            assert action_type == "qpos"
            self.actions.append(np.asarray(action))
            self.eval_success = len(self.actions) >= 7  # success in the second chunk

    model = module.get_model(usr_args)
    env = TaskEnv()
    module.reset_model(model)
    first = robotwin_observation(0)
    module.eval(env, model, first)
    assert len(env.actions) == 5 and all(a.shape == (14,) for a in env.actions)
    images = {"cam_high": first["observation"]["head_camera"]["rgb"],
              "cam_left_wrist": first["observation"]["left_camera"]["rgb"],
              "cam_right_wrist": first["observation"]["right_camera"]["rgb"]}
    expected = expected_chunk(policy, server, images, first["joint_action"]["vector"],
                              "beat the block with the hammer", 7)
    np.testing.assert_allclose(np.stack(env.actions), expected[:5], rtol=1e-5, atol=1e-5)
    module.eval(env, model, robotwin_observation(1))
    assert len(env.actions) == 7 and model.chunks == 2  # stopped at success
    module.reset_model(model)
    model.client.close()
