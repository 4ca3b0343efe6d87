"""`lingvla eval-open`: open-loop error of the served policy on recorded episodes - the metrics
checked against a direct computation, the command's JSON line and plots, and named errors."""

import json

import numpy as np
import pytest

from lingvla import checkpoint_dir
from lingvla.cli import main
from lingvla.config import tiny_config
from lingvla.data.embodiments import get_embodiment
from lingvla.data.lerobot import LeRobotDataset
from lingvla.data.synthetic import write_synthetic_dataset
from lingvla.serve.open_loop import evaluate_open_loop
from lingvla.serve.policy import Policy


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("open_loop")
    data = write_synthetic_dataset(tmp / "data", lengths=[23, 17], image_hw=(32, 40))
    ckpt = checkpoint_dir.write_random(tmp / "ckpt" / "export", tiny_config(image_size=56, chunk_size=8))
    return data, ckpt


def recorded(data, ep):
    src = LeRobotDataset(data)
    columns, first = src.episode_rows(ep)
    length = src.episodes[ep].length
    emb = get_embodiment("aloha")
    rows = {c: columns[c][first:first + length] for c in emb.columns()}
    return emb.gather("action", rows).astype(np.float64)


def test_metrics_match_a_direct_computation(setup):
    data, ckpt = setup
    policy = Policy.from_checkpoint(ckpt)
    constant = np.linspace(-1, 1, 14)
    calls = []

    def infer(obs, noise=None):
        calls.append(obs)
        return {"actions": np.tile(constant, (8, 1)).astype(np.float32)}

    policy.infer = infer
    report = evaluate_open_loop(policy, data, stride=5, progress=False)
    assert report["episodes"] == [0, 1] and report["chunks"] == len(calls) == 5 + 4
    assert set(calls[0]["images"]) == {"head", "left_wrist", "right_wrist"} and calls[0]["prompt"]
    errors, executed, jumps = [], [], []
    for ep in (0, 1):
        actions = recorded(data, ep)
        for t in range(0, len(actions), 5):
            window = actions[t:t + 8]
            errors.append(np.abs(window - np.float32(constant)))
            executed.append(np.abs(window[:5] - np.float32(constant)))
            if t:
                jumps.append(np.abs(actions[t] - actions[t - 1]))
    assert report["mae"] == pytest.approx(np.concatenate(errors).mean(), rel=1e-6)
    assert report["mae_executed"] == pytest.approx(np.concatenate(executed).mean(), rel=1e-6)
    assert report["mae_per_dim"]["left_gripper"] == pytest.approx(np.concatenate(errors)[:, 6].mean(), rel=1e-5)
    assert report["boundary_jump"] == 0.0  # a constant policy never jumps
    assert report["recorded_jump"] == pytest.approx(np.mean(jumps), rel=1e-6)


def test_command_writes_a_json_line_plots_and_names_errors(setup, tmp_path, capsys):
    data, ckpt = setup
    assert main(["eval-open", str(ckpt), str(data), "--episodes", "1", "--out", str(tmp_path / "out"),
                 "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["episodes"] == [1] and report["stride"] == 8 and report["chunks"] == 3
    assert report["embodiment"] == "aloha" and len(report["mae_per_dim"]) == 14 and report["mae"] > 0
    assert (tmp_path / "out" / "episode_000001.png").stat().st_size > 1000
    assert json.loads((tmp_path / "out" / "report.json").read_text())["mae"] == report["mae"]
    assert main(["eval-open", str(ckpt), str(data), "--episodes", "7", "--no-progress"]) == 2
    assert "episodes [7] are not in" in capsys.readouterr().out
    other = write_synthetic_dataset(tmp_path / "narrow", num_episodes=1, episode_length=10, dim=6, image_hw=(32, 40))
    assert main(["eval-open", str(ckpt), str(other), "--no-progress"]) == 2
    assert "has 6 dims but embodiment 'aloha'" in capsys.readouterr().out
    assert main(["eval-open", str(ckpt), str(data), "--stride", "9", "--no-progress"]) == 2
    assert "stride=9" in capsys.readouterr().out
