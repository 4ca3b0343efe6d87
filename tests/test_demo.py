"""`lingvla demo` wiring: demonstrations -> dataset -> training -> evaluation -> report, minimal sizes."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("gym_aloha")
pytest.importorskip("mujoco")

from lingvla.sim.demo import MARKER, demo_cameras, demo_train_config, prepare_out, run_demo  # noqa: E402
from lingvla.sim.seeds import EVAL_SEED_START  # noqa: E402

TINY = ["steps=4", "batch_size=4", "optim.warmup_steps=2", "data.num_workers=0",
        "model.vision.hidden_size=32", "model.vision.intermediate_size=64",
        "model.llm.hidden_size=32", "model.llm.intermediate_size=64",
        "model.expert.hidden_size=32", "model.expert.intermediate_size=64", "model.chunk_size=10"]


def test_demo_pipeline_runs_end_to_end(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MuJoCo logs an unstable random policy to ./MUJOCO_LOG.TXT
    out = tmp_path / "demo"
    lines: list[str] = []
    result = run_demo(out, minutes=10, episodes=2, eval_episodes=2, eval_seed=EVAL_SEED_START + 500,
                      image_size=56, train_overrides=TINY, eval_max_steps=25, workers=1, progress=False,
                      log=lambda text, **_: lines.append(text))
    assert [line[:5] for line in lines if line.startswith("[")] == ["[1/4]", "[2/4]", "[3/4]", "[4/4]"]
    assert any("s/step" in line for line in lines)  # the timed warm-up sized the run

    info = json.loads((out / "data" / "meta" / "info.json").read_text())
    cameras = demo_cameras(demo_train_config(out / "data", out / "train", 56, TINY))
    assert info["total_episodes"] == 2 and info["features"]["observation.images.top"]["shape"] == [56, 56, 3]
    assert sorted(k for k in info["features"] if k.startswith("observation.images.")) == \
        sorted(f"observation.images.{cam}" for cam in cameras)  # only the cameras the model takes
    train_info = json.loads((out / "train" / "export" / "train_info.json").read_text())
    assert train_info["summary"]["steps"] == 4 == result.train_steps
    config = train_info["train_config"]
    assert config["model"]["chunk_size"] == 10 and config["data"]["preload_images"]
    window = config["data"]["datasets"][0]["episode_frames"]
    assert window[0] == 0 and 200 < window[1] < 400  # up to shortly after success (step ~218)

    results = json.loads((out / "eval" / "results.json").read_text())
    assert [e["seed"] for e in results["episodes"]] == [EVAL_SEED_START + 500, EVAL_SEED_START + 501]
    assert all(e["steps"] == 25 for e in results["episodes"])
    assert results["summary"]["image_size"] == 56
    assert result.success_rate == results["summary"]["success_rate"]
    assert (out / "eval" / "chart.png").is_file() and (out / "train" / "loss.png").is_file()

    report = (out / "report.md").read_text()
    assert report.startswith("# lingvla demo: transfer_cube") and "Success rate" in report
    assert "95% interval" in report and f"seeds {EVAL_SEED_START + 500}..{EVAL_SEED_START + 501}" in report
    assert "(train/loss.png)" in report and "(eval/chart.png)" in report
    assert result.report == str(out / "report.md")
    saved = json.loads((out / "demo.json").read_text())
    assert saved["success_rate"] == result.success_rate and saved["train_steps"] == 4
    assert saved["eval_seeds"] == [EVAL_SEED_START + 500, EVAL_SEED_START + 501]
    lo, hi = saved["success_ci95"]
    assert 0.0 <= lo <= saved["success_rate"] <= hi <= 1.0
    assert set(saved["stage_s"]) == {"demonstrations", "training", "evaluation"}


def test_demo_refuses_bad_settings_before_writing(tmp_path):
    with pytest.raises(ValueError, match="demonstration seeds"):
        run_demo(tmp_path / "a", eval_seed=5, progress=False)
    with pytest.raises(ValueError, match="unknown task"):
        run_demo(tmp_path / "b", task="juggling", progress=False)
    with pytest.raises(ValueError, match="stepz"):
        run_demo(tmp_path / "c", train_overrides=["stepz=3"], progress=False)
    assert not any(tmp_path.iterdir())


def test_demo_out_is_not_clobbered(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        prepare_out(foreign, overwrite=False)
    with pytest.raises(FileExistsError, match="not written by"):
        prepare_out(foreign, overwrite=True)
    assert (foreign / "notes.txt").read_text() == "keep me"

    earlier = tmp_path / "demo"
    prepare_out(earlier, overwrite=False)
    (earlier / "data").mkdir()
    prepare_out(earlier, overwrite=True)
    assert (earlier / MARKER).is_file() and not (earlier / "data").exists()
