"""`lingvla demo` wiring: demonstrations -> dataset -> training -> evaluation -> report, minimal sizes."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("gym_aloha")
pytest.importorskip("mujoco")

from lingvla.sim.demo import MARKER, prepare_out, run_demo  # noqa: E402

TINY = ["steps=4", "batch_size=4", "optim.warmup_steps=2", "data.num_workers=0",
        "model.vision.hidden_size=32", "model.vision.intermediate_size=64",
        "model.llm.hidden_size=32", "model.llm.intermediate_size=64",
        "model.expert.hidden_size=32", "model.expert.intermediate_size=64", "model.chunk_size=10"]


def test_demo_pipeline_runs_end_to_end(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MuJoCo logs an unstable random policy to ./MUJOCO_LOG.TXT
    out = tmp_path / "demo"
    lines: list[str] = []
    result = run_demo(out, minutes=10, episodes=2, eval_episodes=1, image_size=56,
                      train_overrides=TINY, eval_max_steps=25, workers=1, progress=False,
                      log=lambda text, **_: lines.append(text))
    assert [line[:5] for line in lines if line.startswith("[")] == ["[1/4]", "[2/4]", "[3/4]", "[4/4]"]
    assert any("s/step" in line for line in lines)  # the timed warm-up sized the run

    info = json.loads((out / "data" / "meta" / "info.json").read_text())
    assert info["total_episodes"] == 2 and info["features"]["observation.images.top"]["shape"] == [56, 56, 3]
    train_info = json.loads((out / "train" / "export" / "train_info.json").read_text())
    assert train_info["summary"]["steps"] == 4 == result.train_steps
    assert train_info["train_config"]["model"]["chunk_size"] == 10

    results = json.loads((out / "eval" / "results.json").read_text())
    assert len(results["episodes"]) == 1 and results["episodes"][0]["steps"] == 25
    assert results["summary"]["image_size"] == 56
    assert result.success_rate == results["summary"]["success_rate"]
    assert (out / "eval" / "chart.png").is_file()

    report = (out / "report.md").read_text()
    assert report.startswith("# lingvla demo: transfer_cube") and "Success rate" in report
    assert result.report == str(out / "report.md")
    saved = json.loads((out / "demo.json").read_text())
    assert saved["success_rate"] == result.success_rate and saved["train_steps"] == 4
    assert set(saved["stage_s"]) == {"demonstrations", "training", "evaluation"}


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
