"""Bad data: each case gives a clear error naming file/episode/frame, or is skipped and counted."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from lingvla.cli import main
from lingvla.data.errors import NonFiniteValueError, VideoDecodeError
from lingvla.data.config import DataConfig
from lingvla.data.embodiments import CAMERA_SLOTS
from lingvla.data.lerobot import LeRobotDatasetWriter
from lingvla.data.mixture import make_dataloader
from lingvla.data.samples import RobotDataset, SampleSpec
from lingvla.data.stats import compute_norm_stats, write_norm_stats
from lingvla.data.synthetic import smooth_frames, trajectories, write_synthetic_dataset
from lingvla.data.video import VideoEncoder


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    root = write_synthetic_dataset(tmp / "v21", lengths=[20, 20, 20], image_hw=(32, 32), cameras=("top",),
                                   codebase_version="v2.1")
    stats = tmp / "norm_stats.json"
    write_norm_stats(stats, "aloha", compute_norm_stats([root], "aloha"))
    return tmp, root, stats


def _copy(base, name):
    tmp, root, stats = base
    dst = tmp / name
    shutil.copytree(root, dst)
    return dst, stats


def _video(root, episode):
    return root / f"videos/chunk-000/observation.images.top/episode_{episode:06d}.mp4"


def test_missing_video(base):
    root, stats = _copy(base, "missing")
    _video(root, 1).unlink()
    ds = RobotDataset(root, "aloha", spec=SampleSpec(image_size=16, chunk_size=5), norm_stats=stats)
    ds[5]  # other episodes still load
    with pytest.raises(VideoDecodeError, match=r"video file is missing \(file .*episode_000001.mp4, episode 1, frame 3\)"):
        ds[23]


def test_corrupt_video(base):
    root, stats = _copy(base, "corrupt")
    _video(root, 2).write_bytes(b"\x00not an mp4 at all" * 100)
    ds = RobotDataset(root, "aloha", spec=SampleSpec(image_size=16, chunk_size=5), norm_stats=stats)
    with pytest.raises(VideoDecodeError, match=r"cannot open video .*episode_000002.mp4, episode 2, frame 0"):
        ds[40]


def test_frame_past_video_end(base):
    root, stats = _copy(base, "short")
    encoder = VideoEncoder(_video(root, 0), 50, 32, 32)
    encoder.write(smooth_frames(8, 32, 32))  # 8 of the episode's 20 frames
    encoder.close()
    ds = RobotDataset(root, "aloha", spec=SampleSpec(image_size=16, chunk_size=5), norm_stats=stats)
    ds[7]
    with pytest.raises(VideoDecodeError, match=r"video may be shorter than the episode.*episode 0, frame 12"):
        ds[12]


def test_nan_in_state_and_action(tmp_path):
    w = LeRobotDatasetWriter(tmp_path / "nan", fps=50, robot_type="aloha", features={
        "observation.state": {"dtype": "float32", "shape": [14]}, "action": {"dtype": "float32", "shape": [14]}})
    for e in range(2):
        state, action = trajectories(20, 14, seed=e)
        if e == 1:
            state[7, 3] = np.nan
            action[12, 13] = np.inf
        if e == 1:
            with pytest.warns(UserWarning) as record:
                w.add_episode(task="t", frames={"observation.state": state, "action": action})
            assert [str(r.message).split(";")[0] for r in record] == [
                "episode 1 observation.state: non-finite values at frames [7]",
                "episode 1 action: non-finite values at frames [12]"]
        else:
            w.add_episode(task="t", frames={"observation.state": state, "action": action})
    w.finalize()
    assert np.isfinite(json.loads((tmp_path / "nan/meta/stats.json").read_text())["action"]["q99"]).all()
    ds = RobotDataset(tmp_path / "nan", "aloha", spec=SampleSpec(chunk_size=4, image_size=16))
    with pytest.raises(NonFiniteValueError, match=r"state dim 3 \(left_arm.3\) is nan \(file .*file-000.parquet, "
                                                  r"key 'state', episode 1, frame 7\)"):
        ds[20 + 7]
    with pytest.raises(NonFiniteValueError, match=r"action dim 13 \(right_gripper\) is inf .*episode 1, frame 12"):
        ds[20 + 10]  # the chunk reaches frame 12
    with pytest.raises(NonFiniteValueError, match=r"episode 1, frame 7"):
        compute_norm_stats([tmp_path / "nan"], "aloha")


def test_skip_and_count(base):
    root, stats = _copy(base, "skip")
    _video(root, 1).unlink()
    loader = make_dataloader(DataConfig(datasets=[root], on_bad_sample="skip", num_workers=0),
                             SampleSpec(image_size=16, chunk_size=5, camera_slots=CAMERA_SLOTS[:1]),
                             batch_size=6, norm_stats=stats, seed=0)
    it = iter(loader)
    batches = [next(it) for _ in range(10)]  # 60 draws over 60 frames: episode 1's 20 are all bad
    assert all(len(b["prompt"]) == 6 for b in batches)
    assert all(b["image_mask"].all() for b in batches)  # skipped samples are replaced, never zero images
    assert loader.skipped >= 20 and "video file is missing" in loader.report()["skip_reasons"][0]
    strict = make_dataloader(DataConfig(datasets=[root], num_workers=0),
                             SampleSpec(image_size=16, chunk_size=5, camera_slots=CAMERA_SLOTS[:1]),
                             batch_size=6, norm_stats=stats, seed=0)
    with pytest.raises(VideoDecodeError):
        for _ in range(10):
            next(iter(strict))


def test_missing_stats_for_embodiment(base, tmp_path):
    _, root, _ = base
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"norm_stats": {"agilex": {}}, "count": 0}))
    with pytest.raises(KeyError, match="no normalization stats for embodiment 'aloha'"):
        make_dataloader(DataConfig(datasets=[root], num_workers=0), SampleSpec(), batch_size=2,
                        norm_stats=other)


def test_bench_data_smoke(capsys):
    assert main(["bench", "data", "--workers", "0", "--batches", "1", "--batch-size", "2",
                 "--source-size", "32x48", "--image-size", "32", "--stats-frames", "2000"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    metrics = {x["metric"]: x for x in lines}
    assert metrics["loader_samples_per_s"]["value"] > 0
    assert metrics["stats_seconds_per_million_frames"]["extrapolated"] is True


def test_preload_names_a_bad_video_or_skips_its_episode(base):
    """preload_images meets a corrupt or short video at start: an error naming the file and episode,
    or with on_bad_sample="skip" that episode's samples are skipped and the others served."""
    root, stats = _copy(base, "preload")
    _video(root, 2).write_bytes(b"\x00not an mp4 at all" * 100)
    encoder = VideoEncoder(_video(root, 0), 50, 32, 32)
    encoder.write(smooth_frames(8, 32, 32))
    encoder.close()
    with pytest.raises(VideoDecodeError, match=r"video may be shorter than the episode.*episode_000000.mp4, "
                                               r"episode 0, frame 8"):
        RobotDataset(root, "aloha", spec=SampleSpec(image_size=16, chunk_size=5), norm_stats=stats,
                     preload_images=True)
    ds = RobotDataset(root, "aloha", spec=SampleSpec(image_size=16, chunk_size=5), norm_stats=stats,
                      preload_images=True, on_bad_sample="skip")
    decoded = RobotDataset(root, "aloha", spec=SampleSpec(image_size=16, chunk_size=5), norm_stats=stats)
    np.testing.assert_array_equal(ds[25]["images"].numpy(), decoded[25]["images"].numpy())
    assert ds[3]["_skipped"] and ds.skipped == 17  # episode 0's frames 3..19, then episode 1's first
    np.testing.assert_array_equal(ds[3]["state"].numpy(), decoded[20]["state"].numpy())
    with pytest.raises(VideoDecodeError, match="cannot open video"):
        RobotDataset(root, "aloha", spec=SampleSpec(image_size=16, chunk_size=5), norm_stats=stats,
                     preload_images=True, exclude_episodes=[0])
