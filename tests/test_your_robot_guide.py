"""docs/your-robot.md walked end to end at tiny sizes: a checkpoint in the released layout and a
generated LeRobot dataset -> embodiment inspect -> stats -> fine-tune from the released weights
(the released preprocessing on) -> eval-open -> serve -> the released-style client and the
RoboTwin folder get actions -> export back to the released layout."""

import json

import numpy as np
import torch
import yaml

from conftest import load_robotwin_module
from lingvla.cli import main
from lingvla.config import tiny_config
from lingvla.model import released
from lingvla.model.lingvla import LingVLA
from lingvla.model.weights import init_from



def test_the_guide_end_to_end(tmp_path, capsys):
    from lingvla.data.synthetic import write_synthetic_dataset
    from lingvla.serve.client import ReleasedClient
    from lingvla.serve.policy import Policy
    from lingvla.serve.server import ServerThread

    # what the user brings: a released checkpoint (here a tiny one in the exact layout) and data
    torch.manual_seed(11)
    start = LingVLA(tiny_config(image_size=56, chunk_size=10))
    released.write_released(tmp_path / "hf_ckpt", start.state_dict(), start.config, shard_bytes=200_000)
    data = write_synthetic_dataset(tmp_path / "my_robot", num_episodes=3, episode_length=30, image_hw=(48, 64),
                                   cameras=("cam_high", "cam_left_wrist", "cam_right_wrist"))

    # 1. the data maps onto the embodiment; its stats
    assert main(["embodiment", "inspect", str(data), "--width", "32", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["cameras"]["head"]["key"] == "observation.images.cam_high"
    assert main(["stats", str(data), "--embodiment", "aloha", "--out", str(tmp_path / "norm_stats.json")]) == 0
    capsys.readouterr()

    # 2-3. fine-tune from the released weights, with the released preprocessing and numerics
    config = {"model": {"preset": "tiny", "image_size": 56, "chunk_size": 10, "image_resize": "squash",
                        "attention_fp32": True},
              "init_from": str(tmp_path / "hf_ckpt"),
              "data": {"datasets": [{"path": str(data), "embodiment": "aloha", "exclude_episodes": [2]}],
                       "norm_stats": str(tmp_path / "norm_stats.json"), "num_workers": 0,
                       "normalization": "bounds_99_woclip"},
              "optim": {"lr": 1e-3, "warmup_steps": 0}, "batch_size": 4, "steps": 4, "save_every": 4,
              "output_dir": str(tmp_path / "run"), "tensorboard": False}
    (tmp_path / "my_robot_train.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", str(tmp_path / "my_robot_train.yaml"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "(released): " in out and "note:" not in out  # released values set: no parity note
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["init_from"]["kind"] == "released" and summary["steps"] == 4
    export = tmp_path / "run" / "export"

    # 4. the held-out episode, open loop
    assert main(["eval-open", str(export), str(data), "--episodes", "2", "--stride", "10", "--no-progress"]) == 0
    check = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert check["episodes"] == [2] and check["chunks"] == 3 and np.isfinite(check["mae"])
    assert (tmp_path / "run" / "eval_open" / "episode_000002.png").is_file()

    # 5. serve; the released-style client and the RoboTwin folder get actions
    policy = Policy.from_checkpoint(export)
    assert policy.config.image_resize == "squash" and policy.config.attention_fp32
    rng = np.random.default_rng(0)
    frame = {c: rng.integers(0, 256, (240, 320, 3), dtype=np.uint8) for c in ("head", "left", "right")}
    with ServerThread(policy, port=0) as server:
        with ReleasedClient("127.0.0.1", server.port) as client:
            client.reset("aloha")
            action = client.infer({"cam_high": frame["head"], "cam_left_wrist": frame["left"],
                                   "cam_right_wrist": frame["right"]}, np.zeros(14, np.float32), "transfer the cube")
            assert action.shape == (10, 14) and np.isfinite(action).all()
        module = load_robotwin_module()
        model = module.get_model({"host": "127.0.0.1", "port": server.port})

        class TaskEnv:
            taken = []
            eval_success = False

            def get_instruction(self):
                return "transfer the cube"

            def take_action(self, action, action_type="qpos"):
                self.taken.append(action)

        env = TaskEnv()
        module.reset_model(model)
        module.eval(env, model, {"observation": {f"{k}_camera": {"rgb": v} for k, v in frame.items()},
                                 "joint_action": {"vector": np.zeros(14, np.float32)}})
        assert len(env.taken) == 10 and env.taken[0].shape == (14,)
        model.client.close()

    # 6. back to the released layout, tensor for tensor what training exported
    assert main(["export", str(tmp_path / "run"), "--layout", "released"]) == 0
    capsys.readouterr()
    back = tmp_path / "run" / "export_step_00000004_released"
    fresh = LingVLA(tiny_config(image_size=56, chunk_size=10))
    init_from(fresh, back)
    trained = LingVLA.from_pretrained(export)
    for key, value in trained.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
