"""LeRobot v3.0 / v2.1 writing and reading (our own pyarrow + PyAV code)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from lingvla.data.lerobot import LeRobotDataset, LeRobotDatasetWriter, convert_dataset
from lingvla.data.synthetic import smooth_frames, trajectories

H, W = 48, 64
LENGTHS = [30, 45, 25]


def _episode(e: int, length: int) -> dict:
    state, action = trajectories(length, 14, seed=e)
    rng = np.random.default_rng(e)
    return {
        "observation.state": state,
        "action": action,
        # fast motion (every 8th frame of a smooth clip): neighbouring frames differ clearly
        "observation.images.top": smooth_frames(8 * length, H, W, seed=10 * e)[::8],
        "observation.images.left_wrist": smooth_frames(8 * length, H, W, seed=10 * e + 1)[::8],
        "observation.depth.top": rng.integers(0, 4000, size=(length, 6, 8)).astype(np.uint16),
        "next.reward": rng.random(length).astype(np.float32),
    }


FEATURES = {
    "observation.state": {"dtype": "float32", "shape": [14], "names": [f"j{i}" for i in range(14)]},
    "action": {"dtype": "float32", "shape": [14]},
    "observation.images.top": {"dtype": "video", "shape": [H, W, 3]},
    "observation.images.left_wrist": {"dtype": "video", "shape": [H, W, 3]},
    "observation.depth.top": {"dtype": "uint16", "shape": [6, 8]},
    "next.reward": {"dtype": "float32", "shape": [1]},
}
TASKS = ["pick up the cube", "insert the peg", "pick up the cube"]


def _write(root, version="v3.0", codec="h264", **kwargs):
    w = LeRobotDatasetWriter(root, fps=50, robot_type="aloha", features=FEATURES, codebase_version=version,
                             video_codec=codec, **kwargs)
    for e, n in enumerate(LENGTHS):
        assert w.add_episode(task=TASKS[e], frames=_episode(e, n)) == e
    return w.finalize()


@pytest.fixture(scope="module")
def v3_root(tmp_path_factory):
    return _write(tmp_path_factory.mktemp("v3") / "ds")


def test_v3_layout_and_metadata(v3_root):
    files = sorted(str(p.relative_to(v3_root)) for p in v3_root.rglob("*") if p.is_file())
    assert files == ["data/chunk-000/file-000.parquet", "meta/episodes/chunk-000/file-000.parquet",
                     "meta/info.json", "meta/stats.json", "meta/tasks.parquet",
                     "videos/observation.images.left_wrist/chunk-000/file-000.mp4",
                     "videos/observation.images.top/chunk-000/file-000.mp4"]
    info = json.loads((v3_root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == 50 and info["robot_type"] == "aloha"
    assert info["total_episodes"] == 3 and info["total_frames"] == sum(LENGTHS) and info["total_tasks"] == 2
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    for key in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        assert key in info["features"]
    top = info["features"]["observation.images.top"]
    assert top["shape"] == [H, W, 3] and top["info"]["video.codec"] == "h264"
    assert top["info"]["video.pix_fmt"] == "yuv420p"
    episodes = pq.read_table(v3_root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [e["dataset_from_index"] for e in episodes] == [0, 30, 75]
    assert [e["dataset_to_index"] for e in episodes] == [30, 75, 100]
    assert [e["videos/observation.images.top/from_timestamp"] for e in episodes] == [0.0, 0.6, 1.5]
    assert [e["videos/observation.images.top/to_timestamp"] for e in episodes] == [0.6, 1.5, 2.0]
    assert episodes[1]["tasks"] == ["insert the peg"] and episodes[1]["length"] == 45
    assert "stats/observation.state/mean" in episodes[0]
    tasks = pq.read_table(v3_root / "meta/tasks.parquet")
    assert tasks.column("task").to_pylist() == ["pick up the cube", "insert the peg"]
    assert b"pandas" in tasks.schema.metadata  # pandas (LeRobot) reads "task" back as the index
    data = pq.read_table(v3_root / "data/chunk-000/file-000.parquet")
    assert data.column("index").to_pylist() == list(range(100))
    assert data.column("frame_index").to_pylist()[30:33] == [0, 1, 2]
    stats = json.loads((v3_root / "meta/stats.json").read_text())
    allstate = np.concatenate([_episode(e, n)["observation.state"] for e, n in enumerate(LENGTHS)])
    np.testing.assert_allclose(stats["observation.state"]["mean"], allstate.mean(0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(stats["observation.state"]["std"], allstate.std(0), rtol=1e-5, atol=1e-7)
    assert np.asarray(stats["observation.images.top"]["mean"]).shape == (3, 1, 1)
    assert "q01" in stats["action"]


def test_v3_round_trip(v3_root):
    ds = LeRobotDataset(v3_root)
    assert ds.version == "v3.0" and ds.num_frames == 100 and ds.num_episodes == 3
    assert ds.video_keys == ["observation.images.top", "observation.images.left_wrist"]
    errors = []
    for e, n in enumerate(LENGTHS):
        src = _episode(e, n)
        data = ds.episode_data(e)
        np.testing.assert_array_equal(data["observation.state"], src["observation.state"])
        np.testing.assert_array_equal(data["action"], src["action"])
        np.testing.assert_array_equal(data["observation.depth.top"], src["observation.depth.top"])
        np.testing.assert_array_equal(data["next.reward"][:, 0], src["next.reward"])
        for f in (0, n // 2, n - 1):
            frame = ds.frame(ds.episode_start(e) + f)
            assert frame["task"] == TASKS[e]
            for key in ds.video_keys:
                err = np.abs(frame[key][None].astype(int) - src[key].astype(int)).mean(axis=(1, 2, 3))
                assert err.argmin() == f  # the right frame, not a neighbour
                errors.append(err[f])
    assert max(errors) < 5.0, errors  # codec loss on small smooth images: a few levels


def test_v3_many_files_and_av1(tmp_path):
    # Tiny file-size limits: every episode opens new data and video files; AV1 video.
    root = _write(tmp_path / "ds", codec="av1", data_files_size_in_mb=1e-6, video_files_size_in_mb=1e-6)
    assert len(list((root / "data/chunk-000").glob("file-*.parquet"))) == 3
    assert len(list((root / "videos/observation.images.top/chunk-000").glob("file-*.mp4"))) == 3
    ds = LeRobotDataset(root)
    assert ds.features["observation.images.top"]["info"]["video.codec"] == "av1"
    src = _episode(1, LENGTHS[1])
    np.testing.assert_array_equal(ds.episode_data(1)["action"], src["action"])
    frame = ds.frame(ds.episode_start(1) + 44)
    assert np.abs(frame["observation.images.top"].astype(int) - src["observation.images.top"][44]).mean() < 5


def test_data_files_are_held_by_size_not_count(tmp_path, monkeypatch):
    """Random frames over many small data files read each file from disk once while they fit the
    byte budget; a budget smaller than one file keeps only the last file read."""
    w = LeRobotDatasetWriter(tmp_path / "ds", fps=50, robot_type="aloha", data_files_size_in_mb=1e-6,
                             features={k: FEATURES[k] for k in ("observation.state", "action")})
    for e in range(8):
        w.add_episode(task="t", frames={k: _episode(e, 20)[k] for k in ("observation.state", "action")})
    root = w.finalize()
    assert len(list((root / "data/chunk-000").glob("file-*.parquet"))) == 8
    reads = []
    real = pq.read_table
    monkeypatch.setattr(pq, "read_table", lambda path, **k: (reads.append(path) if "/data/" in str(path) else None)
                        or real(path, **k))
    order = np.random.default_rng(0).permutation(np.tile(np.arange(8), 6))
    ds = LeRobotDataset(root)
    for ep in order:
        np.testing.assert_array_equal(ds.episode_data(int(ep))["action"], _episode(int(ep), 20)["action"])
    assert len(reads) == 8  # more than the old limit of 4 files, each read once
    reads.clear()
    small = LeRobotDataset(root, data_cache_mb=1e-6)
    for ep in order:
        small.episode_data(int(ep))
    assert len(reads) == 1 + sum(a != b for a, b in zip(order[1:], order[:-1])) and len(small._files) == 1


def test_v21_write_read_and_convert(tmp_path, v3_root):
    root = _write(tmp_path / "v21", version="v2.1")
    assert (root / "data/chunk-000/episode_000001.parquet").exists()
    assert (root / "videos/chunk-000/observation.images.top/episode_000002.mp4").exists()
    assert (root / "meta/episodes.jsonl").read_text().count("\n") == 3
    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v2.1" and info["total_videos"] == 6
    a, b = LeRobotDataset(root), LeRobotDataset(v3_root)
    assert a.version == "v2.1" and a.tasks == b.tasks and a.num_frames == b.num_frames
    for position in (0, 29, 30, 74, 99):
        fa, fb = a.frame(position), b.frame(position)
        np.testing.assert_array_equal(fa["observation.state"], fb["observation.state"])
        assert fa["task"] == fb["task"]
        assert np.abs(fa["observation.images.top"].astype(int) - fb["observation.images.top"]).mean() < 6
    # training samples agree too (numeric parts exactly, images within codec loss)
    from lingvla.data.samples import RobotDataset, SampleSpec

    sa, sb = (RobotDataset(r, "aloha", spec=SampleSpec(image_size=32, chunk_size=20)) for r in (root, v3_root))
    for position in (0, 15, 29, 60, 99):
        x, y = sa[position], sb[position]
        for key in ("state", "actions", "action_is_pad", "action_dim_mask", "image_mask"):
            assert torch.equal(x[key], y[key]), key
        assert x["prompt"] == y["prompt"] and x["image_mask"].tolist() == [True, True, False]
        assert (x["images"].int() - y["images"].int()).abs().float().mean() < 6
    # converter: v2.1 -> v3.0 keeps numeric data exactly
    back = LeRobotDataset(convert_dataset(root, tmp_path / "back", codebase_version="v3.0"))
    assert back.version == "v3.0"
    np.testing.assert_array_equal(back.episode_data(2)["observation.depth.top"],
                                  a.episode_data(2)["observation.depth.top"])


def test_writer_rejects_bad_input(tmp_path):
    w = LeRobotDatasetWriter(tmp_path / "x", fps=50, features={"action": {"dtype": "float32", "shape": [3]}})
    with pytest.raises(ValueError, match="missing"):
        w.add_episode(task="t", frames={})
    with pytest.raises(ValueError, match=r"expected \[T, 3\]"):
        w.add_episode(task="t", frames={"action": np.zeros((5, 4))})
    with pytest.raises(FileExistsError):
        w.add_episode(task="t", frames={"action": np.zeros((5, 3))})
        w.finalize()
        LeRobotDatasetWriter(tmp_path / "x", fps=50, features={})
    with pytest.raises(ValueError, match="written by the writer"):
        LeRobotDatasetWriter(tmp_path / "y", fps=50, features={"timestamp": {"dtype": "float32", "shape": [1]}})


def _remux_concat(parts, out):
    """Join separately encoded MP4s into one by copying packets (how LeRobot builds v3.0 video files)."""
    import av

    listing = out.with_suffix(".ffconcat")
    listing.write_text("ffconcat version 1.0\n" + "".join(f"file '{p.resolve()}'\n" for p in parts))
    with av.open(str(listing), format="concat", options={"safe": "0"}) as src, av.open(str(out), "w") as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is None:
                continue
            packet.stream = stream
            dst.mux(packet)
    listing.unlink()


def test_reads_lerobot_style_v3(tmp_path):
    """A v3.0 dataset laid out the way LeRobot writes it, not by our writer: variable-size list
    columns, a bool scalar, PNG image cells, per-episode videos remuxed into one file with
    from_timestamp = the previous episodes' duration, stats/ columns in the episodes table."""
    import io

    import av
    import pyarrow as pa
    from PIL import Image

    from lingvla.data.video import VideoEncoder

    root = tmp_path / "lr"
    lengths, fps = [12, 9], 30
    (root / "data/chunk-000").mkdir(parents=True)
    (root / "meta/episodes/chunk-000").mkdir(parents=True)
    video_dir = root / "videos/observation.images.cam_high/chunk-000"
    video_dir.mkdir(parents=True)
    rows, parts, episodes, start, offset = [], [], [], 0, 0.0
    for e, n in enumerate(lengths):
        state, action = trajectories(n, 14, seed=e)
        frames = smooth_frames(8 * n, 32, 48, seed=e)[::8]  # fast motion: neighbours differ clearly
        part = tmp_path / f"ep{e}.mp4"
        enc = VideoEncoder(part, fps, 48, 32)
        enc.write(frames)
        enc.close()
        parts.append(part)
        with av.open(str(part)) as c:
            duration = float(c.streams.video[0].duration * c.streams.video[0].time_base)
        for f in range(n):
            png = io.BytesIO()
            Image.fromarray(frames[f]).save(png, format="PNG")
            rows.append({"observation.state": state[f].tolist(), "action": action[f].tolist(),
                         "observation.images.wrist": {"bytes": png.getvalue(), "path": None},
                         "next.done": f == n - 1, "timestamp": f / fps, "frame_index": f,
                         "episode_index": e, "index": start + f, "task_index": e})
        episodes.append({"episode_index": e, "tasks": [f"task {e}"], "length": n,
                         "data/chunk_index": 0, "data/file_index": 0, "dataset_from_index": start,
                         "dataset_to_index": start + n,
                         "videos/observation.images.cam_high/chunk_index": 0,
                         "videos/observation.images.cam_high/file_index": 0,
                         "videos/observation.images.cam_high/from_timestamp": offset,
                         "videos/observation.images.cam_high/to_timestamp": offset + duration,
                         "stats/observation.state/mean": state.mean(0).tolist(),
                         "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
        start, offset = start + n, offset + duration
    _remux_concat(parts, video_dir / "file-000.mp4")
    schema = pa.schema([("observation.state", pa.list_(pa.float32())), ("action", pa.list_(pa.float32())),
                        ("observation.images.wrist", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                        ("next.done", pa.bool_()), ("timestamp", pa.float32()), ("frame_index", pa.int64()),
                        ("episode_index", pa.int64()), ("index", pa.int64()), ("task_index", pa.int64())])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), root / "data/chunk-000/file-000.parquet")
    pq.write_table(pa.Table.from_pylist(episodes), root / "meta/episodes/chunk-000/file-000.parquet")
    pq.write_table(pa.table({"task_index": [0, 1], "task": ["task 0", "task 1"]}), root / "meta/tasks.parquet")
    features = {"observation.state": {"dtype": "float32", "shape": [14], "names": None},
                "action": {"dtype": "float32", "shape": [14], "names": None},
                "observation.images.cam_high": {"dtype": "video", "shape": [32, 48, 3],
                                                "names": ["height", "width", "channels"]},
                "observation.images.wrist": {"dtype": "image", "shape": [32, 48, 3],
                                             "names": ["height", "width", "channel"]},
                "next.done": {"dtype": "bool", "shape": [1], "names": None},
                **{k: {"dtype": "int64" if k != "timestamp" else "float32", "shape": [1], "names": None}
                   for k in ("timestamp", "frame_index", "episode_index", "index", "task_index")}}
    (root / "meta/info.json").write_text(json.dumps({
        "codebase_version": "v3.0", "robot_type": "aloha", "total_episodes": 2, "total_frames": 21,
        "total_tasks": 2, "chunks_size": 1000, "data_files_size_in_mb": 100, "video_files_size_in_mb": 500,
        "fps": fps, "splits": {"train": "0:2"},
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
        "features": features}))

    ds = LeRobotDataset(root)
    assert ds.num_frames == 21 and ds.tasks == {0: "task 0", 1: "task 1"}
    assert ds.video_keys == ["observation.images.cam_high"] and ds.image_keys == ["observation.images.wrist"]
    for e, n in enumerate(lengths):
        src = smooth_frames(8 * n, 32, 48, seed=e)[::8].astype(int)
        np.testing.assert_array_equal(ds.episode_data(e)["observation.state"], trajectories(n, 14, seed=e)[0])
        for f in range(n):
            frame = ds.frame(ds.episode_start(e) + f)
            err = np.abs(frame["observation.images.cam_high"][None].astype(int) - src).mean(axis=(1, 2, 3))
            assert err.argmin() == f and err[f] < 6, (e, f, err)
            np.testing.assert_array_equal(frame["observation.images.wrist"], src[f])  # PNG is lossless
            assert bool(frame["next.done"][0]) == (f == n - 1) and frame["task"] == f"task {e}"
