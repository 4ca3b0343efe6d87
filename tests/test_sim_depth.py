"""`lingvla gen-demos --depth`: the rendered depth of every camera stored in the dataset (uint16
millimetres in the parquet) and read back - by LeRobotDataset and by the loader - within 1 mm."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("gym_aloha")
pytest.importorskip("mujoco")

from lingvla.cli import main as cli  # noqa: E402
from lingvla.data.depth import MM_PER_M, encode_depth  # noqa: E402
from lingvla.sim.demonstrations import demo_frames, generate_dataset, generate_demo  # noqa: E402
from lingvla.sim.tasks import CAMERAS  # noqa: E402

SIZE = 32
MAX_M = 65535 / MM_PER_M  # farther than this (the background, ~83 m) is stored saturated


def test_gen_demos_stores_depth_within_a_millimetre(tmp_path, capsys):
    from lingvla.data.lerobot import LeRobotDataset
    from lingvla.data.samples import RobotDataset, SampleSpec

    out = tmp_path / "demos"
    assert cli(["gen-demos", "--task", "transfer_cube", "--episodes", "1", "--out", str(out),
                "--image-size", str(SIZE), "--seed-start", "40", "--workers", "1", "--depth",
                "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["episodes"] == 1
    features = json.loads((out / "meta" / "info.json").read_text())["features"]
    for cam in CAMERAS:
        assert features[f"observation.depth.{cam}"]["dtype"] == "uint16"
        assert features[f"observation.depth.{cam}"]["shape"] == [SIZE, SIZE]
    dataset = LeRobotDataset(out)
    stored = dataset.episode_data(0, [f"observation.depth.{c}" for c in CAMERAS])
    # Seed 40 again, rendered (deterministic replay): its first 60 steps suffice.
    demo = generate_demo("transfer_cube", 40, image_size=SIZE, render_depth=True, steps=60)
    for cam in CAMERAS:
        got = stored[f"observation.depth.{cam}"][:60].astype(np.float64) / MM_PER_M
        truth = demo.depth[cam].astype(np.float64)
        near = truth < MAX_M
        assert near.mean() > 0.4 and (truth.max() - truth[near].min()) > 0.2  # a real scene
        assert np.abs(got[near] - truth[near]).max() <= 0.001
        assert (got[~near] == MAX_M).all()
    # The loader hands the same depth out per camera slot (sizes equal: no resampling).
    sample = RobotDataset(out, spec=SampleSpec(image_size=SIZE, chunk_size=4, depth=True))[50]
    for slot, cam in enumerate(CAMERAS):
        truth = np.minimum(demo.depth[cam][50], MAX_M)
        assert np.abs(sample["depth"][slot].numpy() - truth).max() <= 0.001

    # --depth-size: nearest samples of the image-size render (every second pixel at half size).
    frames = demo_frames(demo, depth_size=SIZE // 2)
    assert frames["observation.depth.top"].shape == (60, SIZE // 2, SIZE // 2)
    np.testing.assert_array_equal(frames["observation.depth.top"], encode_depth(demo.depth["top"][:, 1::2, 1::2]))
    with pytest.raises(ValueError, match="depth"):
        generate_dataset(tmp_path / "x", "transfer_cube", 1, depth_size=16)
