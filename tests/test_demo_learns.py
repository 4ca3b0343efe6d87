"""The demo's training learns: after a short run of the demo's recipe on two scripted
demonstrations, the open-loop action error on a third, held-out demonstration falls well below a
randomly initialised policy's and below always predicting the mean action."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("gym_aloha")
pytest.importorskip("mujoco")

from lingvla.data.samples import RobotDataset, SampleSpec  # noqa: E402
from lingvla.model.lingvla import LingVLA  # noqa: E402
from lingvla.sim.demo import demo_cameras, demo_train_config, window_stop_from_dataset  # noqa: E402
from lingvla.sim.demonstrations import generate_dataset  # noqa: E402
from lingvla.train.loop import train  # noqa: E402
from lingvla.train.open_loop import open_loop_error  # noqa: E402

IMAGE = 56


def test_short_demo_training_beats_untrained_policy_on_held_out_episode(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    cameras = demo_cameras(demo_train_config(data, tmp_path / "train", IMAGE))  # the recipe's
    generate_dataset(data, "transfer_cube", 3, image_size=IMAGE, cameras=cameras, workers=1, progress=False)
    stop = window_stop_from_dataset(data)
    assert stop is not None and 200 < stop < 400  # success around step 218, then holding still
    entry = f"{{path: {data}, embodiment: aloha, episodes: [0, 1], episode_frames: [0, {stop}]}}"
    config = demo_train_config(data, tmp_path / "train", IMAGE, [
        "steps=300", "batch_size=16", "optim.warmup_steps=20", f"data.datasets=[{entry}]"])
    summary = train(config, progress=False)
    trained = LingVLA.from_pretrained(summary["export"])
    untrained = LingVLA(trained.config)  # same classes and sizes, its own random initialisation

    held_out = RobotDataset(data, "aloha",
                            spec=SampleSpec.for_model(trained.config, normalization=config.data.normalization),
                            norm_stats=f"{summary['export']}/norm_stats.json", episodes=[2],
                            episode_frames=[0, stop])
    frames = np.arange(0, len(held_out), 8)
    after = open_loop_error(trained, held_out, frames)
    before = open_loop_error(untrained, held_out, frames)
    assert after["mean_action"] == pytest.approx(before["mean_action"])
    assert after["policy"] < 0.5 * before["policy"], (after, before)
    assert after["policy"] < 0.8 * after["mean_action"], after
