"""RoboTwin 2.0 policy module (get_model / eval / reset_model) for a policy served by `lingvla serve`.

RoboTwin calls get_model(usr_args) once with deploy_policy.yml's keys, reset_model(model) before
each episode and eval(TASK_ENV, model, observation) until the episode ends. Each eval sends the
current observation - the head, left and right camera images and the 14-D joint vector (left arm
6 + gripper, right arm 6 + gripper; grippers in [0, 1]) - with the task's instruction to the server
in the released LingBot-VLA messages, and executes the rows of the returned chunk as absolute joint
targets (take_action(..., action_type="qpos")), stopping early once the task succeeds.

Needs numpy, msgpack, websockets and lingvla's client (`pip install --no-deps lingvla msgpack
websockets` in RoboTwin's environment is enough: the client does not import torch).
"""

import numpy as np

from lingvla.serve.client import ReleasedClient

# RoboTwin camera -> the released model's camera name (lingvla's aloha embodiment accepts both)
CAMERAS = {"head_camera": "cam_high", "left_camera": "cam_left_wrist", "right_camera": "cam_right_wrist"}


class LingvlaRemote:
    def __init__(self, usr_args: dict):
        self.robo_name = usr_args.get("robo_name") or "aloha"
        seed = usr_args.get("noise_seed")
        self.client = ReleasedClient(usr_args.get("host") or "127.0.0.1", int(usr_args.get("port") or 8000),
                                     token=usr_args.get("token"), timeout=float(usr_args.get("timeout_s") or 120),
                                     noise_seed=None if seed is None else int(seed))
        self.chunks = 0


def encode_obs(observation: dict) -> tuple[dict, np.ndarray]:
    """RoboTwin's observation dict -> ({released camera name: uint8 HxWx3}, joint vector)."""
    cameras = observation["observation"]
    images = {}
    for robotwin, name in CAMERAS.items():
        if robotwin in cameras:
            images[name] = np.asarray(cameras[robotwin]["rgb"], dtype=np.uint8)
    state = np.asarray(observation["joint_action"]["vector"], dtype=np.float32)
    return images, state


def get_model(usr_args):
    return LingvlaRemote(usr_args)


def eval(TASK_ENV, model, observation):
    images, state = encode_obs(observation)
    actions = model.client.infer(images, state, TASK_ENV.get_instruction())
    model.chunks += 1
    for action in actions:
        TASK_ENV.take_action(np.asarray(action, dtype=np.float64), action_type="qpos")
        if getattr(TASK_ENV, "eval_success", False):
            break


def reset_model(model):
    model.client.reset(model.robo_name)
