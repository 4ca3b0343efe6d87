"""Depth in datasets and the loader: uint16 millimetre storage, depth placed like the image, missing
cameras, clear errors, and the depth cache (`lingvla depth-cache`) equal to the online teacher."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lingvla.cli import main as cli
from lingvla.data.depth import (MissingDepthError, decode_depth, depth_key, encode_depth,
                                resize_depth)
from lingvla.data.config import DataConfig
from lingvla.data.lerobot import LeRobotDatasetWriter
from lingvla.data.mixture import make_dataloader
from lingvla.data.samples import RobotDataset, SampleSpec, collate
from lingvla.data.synthetic import smooth_frames, trajectories
from lingvla.data.video import resize_with_pad
from lingvla.model.depth import HFDepthTeacher, SimDepthTeacher

CAMS = ("top", "left_wrist")  # no right_wrist camera: that slot is missing
SIZE = 28                     # the model's image size in these tests
IMAGE_HW, DEPTH_HW = (40, 48), (20, 24)


def depth_maps(length: int, cam: int) -> np.ndarray:
    """float metres [T, 20, 24]: a ramp across columns that moves with time, one far corner."""
    t = np.arange(length, dtype=np.float32)[:, None, None]
    x = np.arange(DEPTH_HW[1], dtype=np.float32)[None, None, :]
    y = np.arange(DEPTH_HW[0], dtype=np.float32)[None, :, None]
    d = 0.3 + 0.05 * x + 0.01 * y + 0.002 * t + 0.1 * cam
    d = np.broadcast_to(d, (length, *DEPTH_HW)).copy()
    d[:, :3, :3] = 80.0  # beyond uint16 millimetres: stored saturated
    return d


def write_depth_dataset(root, lengths=(30, 20), depth=True):
    features = {"observation.state": {"dtype": "float32", "shape": [14]},
                "action": {"dtype": "float32", "shape": [14]}}
    for cam in CAMS:
        features[f"observation.images.{cam}"] = {"dtype": "video", "shape": [*IMAGE_HW, 3]}
        if depth:
            features[f"observation.depth.{cam}"] = {"dtype": "uint16", "shape": list(DEPTH_HW)}
    writer = LeRobotDatasetWriter(root, fps=50, robot_type="aloha", features=features)
    for e, length in enumerate(lengths):
        state, action = trajectories(length, 14, seed=e)
        frames = {"observation.state": state, "action": action}
        for k, cam in enumerate(CAMS):
            frames[f"observation.images.{cam}"] = smooth_frames(length, *IMAGE_HW, seed=10 * e + k)
            if depth:
                frames[f"observation.depth.{cam}"] = encode_depth(depth_maps(length, k) + 0.1 * e)
        writer.add_episode(task="pick up the cube", frames=frames)
    return writer.finalize()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_depth_dataset(tmp_path_factory.mktemp("depth_data") / "d")


def test_millimetre_encoding_and_resize_geometry():
    metres = np.array([0.0, 0.0004, 0.0006, 1.2345, 65.535, 83.0, np.nan, np.inf, -1.0])
    mm = encode_depth(metres)
    assert mm.dtype == np.uint16
    assert mm.tolist() == [0, 0, 1, 1234, 65535, 65535, 0, 65535, 0]
    assert np.abs(decode_depth(mm)[:4] - metres[:4]).max() <= 0.0005 + 1e-6  # float32 metres
    # The depth lands where resize_with_pad puts the image (bars included), by nearest sample.
    for hw in ((20, 24), (24, 20), (40, 48), (7, 13)):
        placed = resize_with_pad(np.full((*hw, 3), 255, np.uint8), SIZE)[..., 0] > 0
        depth = resize_depth(np.ones(hw, np.float32), SIZE)
        assert depth.shape == (SIZE, SIZE) and np.array_equal(depth > 0, placed), hw
    ramp = np.arange(32, dtype=np.float32)[None].repeat(32, 0)
    np.testing.assert_array_equal(resize_depth(ramp, 16), ramp[1::2, 1::2])


def test_loader_returns_depth_placed_like_the_images(dataset):
    ds = RobotDataset(dataset, "aloha", spec=SampleSpec(image_size=SIZE, chunk_size=4, depth=True))
    sample = ds[37]  # episode 1, frame 7
    depth = sample["depth"]
    assert depth.dtype == torch.float32 and depth.shape == (3, SIZE, SIZE)
    assert sample["image_mask"].tolist() == [True, True, False]
    assert torch.count_nonzero(depth[2]) == 0  # the missing camera: zeros, masked
    # 20 x 24 -> 23 x 28 centred: rows 2..24 hold the map; the bars are 0.
    assert torch.count_nonzero(depth[:, :2]) == 0 and torch.count_nonzero(depth[:, 25:]) == 0
    truth = depth_maps(20, 1)[7] + 0.1  # left_wrist of episode 1, frame 7
    rows = np.minimum(((np.arange(23) + 0.5) * 20 / 23).astype(int), 19)
    cols = np.minimum(((np.arange(28) + 0.5) * 24 / 28).astype(int), 23)
    expected = np.minimum(truth[rows[:, None], cols[None, :]], 65.535)
    np.testing.assert_allclose(depth[1, 2:25].numpy(), expected, atol=0.0005 + 1e-6)
    assert depth[0, 2, 0] == pytest.approx(65.535)  # the far corner saturates
    batch = collate([ds[0], ds[37]])
    assert batch["depth"].shape == (2, 3, SIZE, SIZE) and batch["depth"].dtype == torch.float32
    torch.testing.assert_close(batch["depth"][1], depth)
    plain = collate([RobotDataset(dataset, "aloha", spec=SampleSpec(image_size=SIZE, chunk_size=4))[0]])
    assert "depth" not in plain and "depth_targets" not in plain


def test_missing_depth_is_an_error_naming_dataset_and_key(tmp_path, dataset):
    bare = write_depth_dataset(tmp_path / "bare", lengths=(5,), depth=False)
    with pytest.raises(MissingDepthError, match=r"bare.*observation\.depth\.top"):
        RobotDataset(bare, "aloha", spec=SampleSpec(image_size=SIZE, chunk_size=4, depth=True))
    with pytest.raises(MissingDepthError, match="lingvla depth-cache"):
        RobotDataset(dataset, "aloha", spec=SampleSpec(image_size=SIZE, chunk_size=4, depth_cache="sim-depth"))
    assert cli(["depth-cache", str(bare), "--teacher", "sim-depth", "--no-progress"]) == 2


def test_depth_cache_round_trip_equals_the_online_teacher(tmp_path, dataset, capsys):
    # sim-depth: tokens of the loader's depth maps.
    assert cli(["depth-cache", str(dataset), "--teacher", "sim-depth", "--num-latents", "16",
                "--teacher-dim", "32", "--image-size", str(SIZE), "--batch-size", "16", "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["frames"] == 50 and report["tokens"] == [16, 32]
    meta = json.loads((dataset / "depth_cache" / "sim-depth" / "meta.json").read_text())
    assert meta["image_size"] == SIZE and set(meta["cameras"]) == {f"observation.images.{c}" for c in CAMS}
    assert np.load(dataset / "depth_cache" / "sim-depth" / "observation.images.top.npy",
                   mmap_mode="r").dtype == np.float16
    loader = make_dataloader(DataConfig(datasets=[(dataset, "aloha")], num_workers=0),
                             SampleSpec(image_size=SIZE, chunk_size=4, depth=True, depth_cache="sim-depth"),
                             batch_size=6, norm_stats=_stats(dataset))
    batch = next(iter(loader))
    targets = batch["depth_targets"]
    assert targets.shape == (6, 3, 16, 32) and targets.dtype == torch.float32
    online = SimDepthTeacher(32, grid=4)(batch["depth"])
    torch.testing.assert_close(targets[:, :2], online[:, :2], atol=1e-3, rtol=0)
    assert torch.count_nonzero(targets[:, 2]) == 0  # missing camera
    assert targets[:, :2].abs().amax() > 0.1
    # Not silently stale or mismatched.
    assert cli(["depth-cache", str(dataset), "--teacher", "sim-depth", "--no-progress"]) == 2
    with pytest.raises(MissingDepthError, match="image_size=28"):
        RobotDataset(dataset, "aloha", spec=SampleSpec(image_size=56, chunk_size=4, depth_cache="sim-depth"))

    # hf-depth: backbone tokens of the loader's images (a tiny random Depth Anything).
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                            patch_size=14, image_size=28, out_indices=[1])
    config = DepthAnythingConfig(backbone_config=backbone, fusion_hidden_size=16, neck_hidden_sizes=[8],
                                 reassemble_factors=[1], head_hidden_size=8)
    torch.manual_seed(0)
    DepthAnythingForDepthEstimation(config).save_pretrained(tmp_path / "da")
    assert cli(["depth-cache", str(dataset), "--teacher", "hf-depth", "--teacher-path", str(tmp_path / "da"),
                "--image-size", str(SIZE), "--no-progress"]) == 0
    ds = RobotDataset(dataset, "aloha", spec=SampleSpec(image_size=SIZE, chunk_size=4, depth_cache="hf-depth"))
    batch = collate([ds[i] for i in (0, 29, 49)])
    online = HFDepthTeacher(tmp_path / "da")(batch["images"])
    assert batch["depth_targets"].shape == (3, 3, 4, 32)
    torch.testing.assert_close(batch["depth_targets"][:, :2], online[:, :2], atol=2e-3, rtol=2e-3)


def _stats(dataset):
    from lingvla.data.embodiments import get_embodiment
    from lingvla.data.stats import compute_norm_stats

    return {"norm_stats": {"aloha": compute_norm_stats([dataset], get_embodiment("aloha"))}}


def test_depth_key():
    assert depth_key("observation.images.cam_high") == "observation.depth.cam_high"
