"""Samples and batches: action chunks, padding, unified space, cameras, the batch contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lingvla.batch import check_batch
from lingvla.data.embodiments import load_registry
from lingvla.data.errors import EmbodimentMismatchError
from lingvla.data.config import DataConfig
from lingvla.data.lerobot import LeRobotDataset, LeRobotDatasetWriter
from lingvla.data.mixture import make_dataloader
from lingvla.data.samples import RobotDataset, SampleSpec, collate
from lingvla.data.stats import compute_norm_stats, write_norm_stats
from lingvla.data.synthetic import smooth_frames, trajectories, write_synthetic_dataset
from lingvla.data.video import resize_with_pad

FRANKA_YAML = """
franka_pair:
  description: test robot, two 7-DoF arms with gripper widths, gripper pinned at a fixed position
  status: assumed
  robot_types: [franka_pair]
  state:
    - {name: left_arm, column: observation.state, start: 0, stop: 7}
    - {name: left_gripper, column: observation.state, start: 7, stop: 8}
    - {name: right_arm, column: observation.state, start: 8, stop: 15}
    - {name: right_gripper, column: observation.state, start: 15, stop: 16}
  action:
    - {name: left_arm, column: action, start: 0, stop: 7}
    - {name: left_gripper, column: action, indices: [7]}
    - {name: right_arm, column: action, start: 8, stop: 15}
    - {name: right_gripper, column: action, start: 15, stop: 16, offset: 20}
  cameras:
    head: observation.images.front
    left_wrist: null
    right_wrist: [observation.images.wrist_right]
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("samples")
    aloha = write_synthetic_dataset(tmp / "aloha", lengths=[40, 60], image_hw=(48, 64))
    franka = write_synthetic_dataset(tmp / "franka", lengths=[30], dim=16, robot_type="franka_pair",
                                     cameras=("front", "wrist_right"), image_hw=(64, 48), seed=7)
    (tmp / "franka.yaml").write_text(FRANKA_YAML)
    registry = load_registry([tmp / "franka.yaml"])
    stats = tmp / "norm_stats.json"
    write_norm_stats(stats, "aloha", compute_norm_stats([aloha], "aloha"))
    write_norm_stats(stats, "franka_pair", compute_norm_stats([franka], "franka_pair", registry=registry))
    return {"aloha": aloha, "franka": franka, "yaml": tmp / "franka.yaml", "registry": registry, "stats": stats}


def test_action_chunk_and_padding_at_episode_end(data):
    ds = RobotDataset(data["aloha"], "aloha", spec=SampleSpec(chunk_size=50, image_size=32, action_dim=32))
    _, actions = trajectories(40, 14, seed=0)
    states1, actions1 = trajectories(60, 14, seed=1)
    s = ds[25]  # episode 0 (length 40), frame 25: 15 real steps, 35 padded
    pad = s["action_is_pad"].numpy()
    assert pad.sum() == 35 and not pad[:15].any() and pad[15:].all()
    np.testing.assert_array_equal(s["actions"][:15, :14].numpy(), actions[25:40])
    np.testing.assert_array_equal(s["actions"][15:, :14].numpy(), np.repeat(actions[39:40], 35, 0))
    assert not s["actions"][:, 14:].any() and not s["state"][14:].any()
    s = ds[39]  # last frame of episode 0 must not see episode 1
    assert s["action_is_pad"].sum() == 49
    np.testing.assert_array_equal(s["actions"][0, :14].numpy(), actions[39])
    s = ds[40 + 5]  # episode 1, frame 5: a full chunk
    assert not s["action_is_pad"].any()
    np.testing.assert_array_equal(s["state"][:14].numpy(), states1[5])
    np.testing.assert_array_equal(s["actions"][:, :14].numpy(), actions1[5:55])
    assert s["prompt"] == "transfer the cube" and ds[0]["prompt"] == "pick up the cube"


def test_two_embodiments_in_one_batch(data):
    mixture = DataConfig(datasets=[(data["aloha"], "aloha", 1.0), (data["franka"], "franka_pair", 1.0)],
                         embodiment_paths=[data["yaml"]], num_workers=0)
    loader = make_dataloader(mixture,
                             SampleSpec(action_dim=32, image_size=32), batch_size=16,
                             norm_stats=data["stats"], seed=3)
    batch = next(iter(loader))
    assert set(batch) == {"images", "image_mask", "prompt", "state", "actions", "action_dim_mask",
                          "action_is_pad", "embodiment"}
    assert check_batch(batch, num_cameras=3, image_size=32, action_dim=32, chunk_size=50) == 16
    kinds = set(batch["embodiment"])
    assert kinds == {"aloha", "franka_pair"}
    franka_mask = np.zeros(32, bool)
    franka_mask[list(range(15)) + [20]] = True  # right gripper pinned at offset 20
    for i, name in enumerate(batch["embodiment"]):
        mask = batch["action_dim_mask"][i].numpy()
        if name == "aloha":
            np.testing.assert_array_equal(mask, np.arange(32) < 14)
            assert batch["image_mask"][i].tolist() == [True, True, True]
            assert not batch["state"][i, 14:].any()
        else:
            np.testing.assert_array_equal(mask, franka_mask)
            assert batch["image_mask"][i].tolist() == [True, False, True]
            assert not batch["images"][i, 1].any()  # missing camera: zeros, masked
            assert not batch["state"][i, 16:].any()
        assert not batch["actions"][i][:, ~mask].any()
    assert batch["images"].dtype == torch.uint8 and batch["state"].dtype == torch.float32


def test_normalized_values_and_unified_layout(data):
    from lingvla.data.normalize import Normalizer

    registry = data["registry"]
    ds = RobotDataset(data["franka"], "franka_pair", spec=SampleSpec(image_size=32), norm_stats=data["stats"],
                      registry=registry)
    raw = RobotDataset(data["franka"], "franka_pair", spec=SampleSpec(image_size=32), registry=registry)
    norm = Normalizer.from_file(data["stats"], "franka_pair")
    s, r = ds[3], raw[3]
    emb = registry.get("franka_pair")
    robot_actions = emb.unpack("action", r["actions"].numpy(), 32)
    np.testing.assert_allclose(emb.unpack("action", s["actions"].numpy(), 32),
                               norm.normalize_action(robot_actions), rtol=1e-5, atol=1e-6)
    assert s["actions"][0, 20] != 0 and s["actions"][0, 15] == 0


def test_images_resized_with_padding(data):
    ds = LeRobotDataset(data["franka"])  # 64 x 48 (portrait) source
    img = ds.video_frame("observation.images.front", 0, 3, size=32)
    assert img.shape == (32, 32, 3)
    assert not img[:, :4].any() and not img[:, -4:].any()  # 24 px wide content, centred
    assert img[:, 4:28].mean() > 50
    src = smooth_frames(30, 64, 48, seed=7)[3]
    direct = resize_with_pad(src, 32)
    assert np.abs(direct.astype(int) - img.astype(int))[:, 4:28].mean() < 6
    wide = resize_with_pad(np.full((10, 40, 3), 200, np.uint8), 40)
    assert wide.shape == (40, 40, 3) and not wide[:15].any() and (wide[15:25] == 200).all()


def test_dimension_errors(data, tmp_path):
    registry = data["registry"]
    with pytest.raises(ValueError, match="needs 21 unified action positions.*unified width is 16"):
        RobotDataset(data["franka"], "franka_pair", spec=SampleSpec(action_dim=16), registry=registry)
    with pytest.raises(EmbodimentMismatchError, match="has 14 dims but embodiment 'franka_pair' reads index 14 for state field 'right_arm'"):
        RobotDataset(data["aloha"], "franka_pair", registry=registry)
    w = LeRobotDatasetWriter(tmp_path / "nostate", fps=50, features={"action": {"dtype": "float32", "shape": [14]}})
    w.add_episode(task="t", frames={"action": np.zeros((3, 14), np.float32)})
    w.finalize()
    with pytest.raises(EmbodimentMismatchError, match="no column 'observation.state'"):
        RobotDataset(tmp_path / "nostate", "aloha")
    with pytest.raises(KeyError, match="unknown embodiment 'nope'"):
        RobotDataset(data["aloha"], "nope")


def test_collate_matches_contract(data):
    ds = RobotDataset(data["aloha"], None,
                      spec=SampleSpec(image_size=28, chunk_size=10, camera_slots=("head", "left_wrist")),
                      norm_stats=data["stats"])
    batch = collate([ds[i] for i in (0, 50, 99)])
    assert check_batch(batch, num_cameras=2, image_size=28, action_dim=32, chunk_size=10) == 3
    assert batch["embodiment"] == ["aloha"] * 3 and batch["action_is_pad"][2].sum() == 9


def test_user_yaml_via_env_and_spec_round_trip(data, monkeypatch):
    from lingvla.data.embodiments import get_embodiment, parse_embodiment

    monkeypatch.setenv("LINGVLA_EMBODIMENTS", str(data["yaml"]))
    emb = get_embodiment("franka_pair")
    assert emb.status == "assumed" and emb.action_dim == 16 and emb.cameras["left_wrist"] == []
    again = parse_embodiment("franka_pair", emb.to_spec())
    assert again.positions("action", 32).tolist() == emb.positions("action", 32).tolist()
    assert get_embodiment("aloha").camera_key("head", {"observation.images.cam_high"}) == "observation.images.cam_high"


def test_worker_processes_after_use_in_main(data):
    ds = RobotDataset(data["aloha"], "aloha", spec=SampleSpec(image_size=32, chunk_size=5))
    expected = collate([ds[i] for i in range(8)])  # opens containers in this process first
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate)
    got = [b for _, b in zip(range(2), loader)]
    assert torch.equal(torch.cat([b["images"] for b in got]), expected["images"])
    assert torch.equal(torch.cat([b["actions"] for b in got]), expected["actions"])


def test_episode_selection(data):
    """episodes / exclude_episodes keep or leave out whole episodes, with or without a window, in the
    samples, the mixture and the norm stats; a bad list is an error naming it."""
    whole = RobotDataset(data["aloha"], "aloha", spec=SampleSpec(chunk_size=10, image_size=32, action_dim=32))
    second = RobotDataset(data["aloha"], "aloha", spec=SampleSpec(chunk_size=10, image_size=32, action_dim=32),
                          episodes=[1])
    first = RobotDataset(data["aloha"], "aloha", spec=SampleSpec(chunk_size=10, image_size=32, action_dim=32),
                         exclude_episodes=[1])
    windowed = RobotDataset(data["aloha"], "aloha",
                            spec=SampleSpec(chunk_size=10, image_size=32, action_dim=32),
                            episodes=[1], episode_frames=[5, 45])
    assert (len(first), len(second), len(windowed)) == (40, 60, 40)  # episode 0: 40 frames, 1: 60
    for ds, i, j in [(second, 0, 40), (second, 59, 99), (first, 39, 39), (windowed, 0, 45), (windowed, 39, 84)]:
        a, b = ds[i], whole[j]
        np.testing.assert_array_equal(a["state"].numpy(), b["state"].numpy())
        np.testing.assert_array_equal(a["actions"].numpy(), b["actions"].numpy())
    kept = DataConfig(datasets=[{"path": data["aloha"], "embodiment": "aloha", "exclude_episodes": [0]}],
                      num_workers=0)
    loader = make_dataloader(kept,
                             SampleSpec(chunk_size=10, image_size=32), batch_size=6,
                             norm_stats=data["stats"])
    assert len(loader.dataset) == 60
    # the stats count the kept episodes' frames only
    stats = compute_norm_stats([{"path": data["aloha"], "exclude_episodes": [1]}], "aloha")
    states0, _ = trajectories(40, 14, seed=0)
    assert stats["count"] == 40
    np.testing.assert_allclose(stats["state"]["mean"], states0.mean(0), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="not both"):
        RobotDataset(data["aloha"], "aloha", episodes=[0], exclude_episodes=[1])
    with pytest.raises(ValueError, match=r"exclude_episodes \[7\].*no such episode"):
        RobotDataset(data["aloha"], "aloha", exclude_episodes=[1, 7])
    with pytest.raises(ValueError, match="leaves no episode"):
        RobotDataset(data["aloha"], "aloha", exclude_episodes=[0, 1])
    with pytest.raises(ValueError, match="list of episode indices"):
        RobotDataset(data["aloha"], "aloha", episodes="first")


def test_episode_frames_window(data):
    whole = RobotDataset(data["aloha"], "aloha", spec=SampleSpec(chunk_size=10, image_size=32, action_dim=32))
    window = RobotDataset(data["aloha"], "aloha", spec=SampleSpec(chunk_size=10, image_size=32, action_dim=32),
                          episode_frames=[5, 45])
    # episode 0 has 40 frames (5..39 kept), episode 1 has 60 (5..44 kept)
    assert len(window) == 35 + 40
    assert window.hours == pytest.approx(whole.hours * 75 / 100)
    for i, j in [(0, 5), (34, 39), (35, 45), (74, 84)]:
        a, b = window[i], whole[j]
        np.testing.assert_array_equal(a["state"].numpy(), b["state"].numpy())
        # chunks still read past the window's end
        np.testing.assert_array_equal(a["actions"].numpy(), b["actions"].numpy())
        np.testing.assert_array_equal(a["images"].numpy(), b["images"].numpy())
    window = DataConfig(datasets=[{"path": data["aloha"], "embodiment": "aloha", "episode_frames": [0, 3]}],
                        num_workers=0)
    loader = make_dataloader(window,
                             SampleSpec(chunk_size=10, image_size=32), batch_size=6,
                             norm_stats=data["stats"])
    assert len(loader.dataset) == 6
    with pytest.raises(ValueError, match="episode_frames"):
        RobotDataset(data["aloha"], "aloha", episode_frames=[10, 5])
    with pytest.raises(ValueError, match="selects no frame"):
        RobotDataset(data["aloha"], "aloha", episode_frames=[100, None])


def test_preloaded_images_equal_decoded_ones(data):
    """preload_images decodes each episode once into memory; every sample (whole dataset, a window
    of a selected episode, two cameras of another embodiment) equals the per-sample decode."""
    cases = [(data["aloha"], "aloha", {}), (data["aloha"], "aloha", {"episodes": [1], "episode_frames": [5, 45]}),
             (data["franka"], "franka_pair", {})]
    for root, emb, select in cases:
        kw = dict(spec=SampleSpec(chunk_size=10, image_size=32, action_dim=32), norm_stats=data["stats"],
                  registry=data["registry"], **select)
        decoded, held = RobotDataset(root, emb, **kw), RobotDataset(root, emb, preload_images=True, **kw)
        assert len(held) == len(decoded)
        for i in range(len(held)):
            a, b = held[i], decoded[i]
            assert a["prompt"] == b["prompt"]
            for key in ("images", "image_mask", "state", "actions", "action_is_pad"):
                np.testing.assert_array_equal(a[key].numpy(), b[key].numpy(), err_msg=f"{root.name} {i} {key}")
    loader = make_dataloader(DataConfig(datasets=[data["aloha"]], preload_images=True, num_workers=0),
                             SampleSpec(chunk_size=10, image_size=32), batch_size=4,
                             norm_stats=data["stats"])
    assert next(iter(loader))["images"].shape == (4, 3, 3, 32, 32)


def test_training_samples_and_the_served_policy_share_one_transform(tmp_path):
    """The state a training sample holds is what the served policy feeds the model for the same
    raw state, and the policy's output maps back through the inverse of the actions' transform."""
    import numpy as np

    from lingvla import checkpoint_dir
    from lingvla.config import tiny_config
    from lingvla.data.samples import RobotDataset
    from lingvla.data.synthetic import write_synthetic_dataset
    from lingvla.serve.policy import Policy

    root = write_synthetic_dataset(tmp_path / "data", num_episodes=1, episode_length=12, image_hw=(32, 32))
    directory = checkpoint_dir.write_random(tmp_path / "ckpt", tiny_config(image_size=56), stats="random")
    policy = Policy.from_checkpoint(directory)
    dataset = RobotDataset(root, "aloha", spec=SampleSpec(action_dim=32, chunk_size=4, image_size=56),
                           norm_stats=str(directory / "norm_stats.json"))
    sample = dataset.sample(3)
    src = dataset.source
    columns, first = src.episode_rows(0)
    raw_state = dataset.embodiment.gather("state", {c: columns[c][first + 3:first + 4] for c in dataset._columns})[0]
    raw_actions = dataset.embodiment.gather("action", {c: columns[c][first + 3:first + 7] for c in dataset._columns})
    frame = src.camera_frame("observation.images.top", 0, 3)
    batch = policy.batch_from_obs({"images": {"top": frame, "left_wrist": frame, "right_wrist": frame},
                                   "state": raw_state, "prompt": "open"})
    torch.testing.assert_close(batch["state"][0], sample["state"])
    assert torch.equal(batch["action_dim_mask"][0], sample["action_dim_mask"])
    np.testing.assert_allclose(policy.actions_from_model(sample["actions"]), raw_actions, rtol=1e-5, atol=1e-5)


def test_sample_spec_checks_its_fields_and_reads_a_model_config():
    from lingvla.config import preset
    from lingvla.data.embodiments import CAMERA_SLOTS

    for bad, match in ((dict(image_resize="crop"), "image_resize"), (dict(normalization="minmax"), "normalization"),
                       (dict(chunk_size=0), "chunk_size"), (dict(camera_slots=("head", "tail")), "camera_slots"),
                       (dict(image_resize="squash", depth=True), "padding")):
        with pytest.raises(ValueError, match=match):
            SampleSpec(**bad)
    model = preset("tiny")
    model.num_cameras, model.image_resize, model.chunk_size = 2, "squash", 7
    spec = SampleSpec.for_model(model, normalization="mean_std")
    assert spec == SampleSpec(action_dim=model.action_dim, chunk_size=7, image_size=model.image_size,
                              camera_slots=CAMERA_SLOTS[:2], image_resize="squash", normalization="mean_std")
    model.num_cameras = 4
    with pytest.raises(ValueError, match="num_cameras"):
        SampleSpec.for_model(model)
