"""Depth distillation in the trainer: targets from the online teacher or the depth cache, depth_loss
logged and falling on a generated (simulator) dataset, 10x depth lr by default, clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from lingvla.cli import main as cli
from lingvla.data.depth import MissingDepthError
from lingvla.train.config import load_train_config
from lingvla.train.loop import lr_multipliers, param_groups, train

SIZE = 28  # one token per camera: the cheapest image size of the tiny preset


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sim_dataset(tmp_path_factory):
    pytest.importorskip("gym_aloha")
    pytest.importorskip("mujoco")
    from lingvla.sim.demonstrations import generate_dataset

    out = tmp_path_factory.mktemp("sim_depth") / "transfer_cube"
    # 230 steps reach the first success (~218) of seed 0; one episode is enough here.
    generate_dataset(out, "transfer_cube", 1, image_size=SIZE, steps=230, workers=1, progress=False,
                     depth=True)
    return out


def overrides(dataset, out, **extra):
    base = {"model.preset": "tiny", "model.image_size": SIZE, "model.depth.enabled": "true",
            "model.depth.loss_weight": 1.0, "batch_size": 8, "steps": 12, "output_dir": str(out),
            "data.num_workers": 0, "save_every": 1000, "tensorboard": "false", "optim.warmup_steps": 0,
            "optim.lr": 1e-3, "optim.schedule": "constant", "log_every": 1,
            "data.datasets": f"[{{path: {dataset}, embodiment: aloha}}]"}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_depth_config_defaults_and_errors():
    off = load_train_config(None, ["model.preset=tiny"])
    assert off.data.depth_teacher == "sim-depth" and not off.data.depth_cache
    assert lr_multipliers(off) == {}
    on = load_train_config(None, ["model.preset=tiny", "model.depth.enabled=true"])
    assert lr_multipliers(on) == {"depth": 10.0}
    mine = load_train_config(None, ["model.preset=tiny", "model.depth.enabled=true",
                                    "optim.lr_multipliers={vision: 0.5}"])
    assert lr_multipliers(mine) == {"vision": 0.5}

    from lingvla.model.lingvla import LingVLA

    model = LingVLA(on.model)
    by_mult = {g["lr_mult"]: g for g in param_groups(model, on)}
    depth_params = {id(p) for n, p in model.named_parameters() if "depth" in n}
    assert {id(p) for p in by_mult[10.0]["params"]} == depth_params and len(depth_params) > 2
    assert by_mult[10.0]["lr"] == pytest.approx(10 * on.optim.lr)

    with pytest.raises(ValueError, match="depth_teacher"):
        load_train_config(None, ["data.depth_teacher=midas"])
    with pytest.raises(ValueError, match="depth_teacher_path"):
        load_train_config(None, ["model.depth.enabled=true", "data.depth_teacher=hf-depth"])
    load_train_config(None, ["model.depth.enabled=true", "data.depth_teacher=hf-depth", "data.depth_cache=true"])


def test_missing_depth_fails_before_training(tmp_path, one_thread):
    from lingvla.data.synthetic import write_synthetic_dataset

    plain = write_synthetic_dataset(tmp_path / "plain", num_episodes=1, episode_length=20, image_hw=(SIZE, SIZE))
    config = load_train_config(None, overrides(plain, tmp_path / "run"))
    with pytest.raises(MissingDepthError, match=r"plain.*'observation\.depth\.top'"):
        train(config, progress=False)
    config = load_train_config(None, overrides(plain, tmp_path / "run", **{"data.depth_cache": "true"}))
    with pytest.raises(MissingDepthError, match="lingvla depth-cache"):
        train(config, progress=False)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # no step was taken


def test_train_with_depth_logs_a_falling_depth_loss(tmp_path, sim_dataset, one_thread):
    out = tmp_path / "online"
    assert cli(["train", *overrides(sim_dataset, out), "--no-progress"]) == 0
    online = records(out)
    depth = [r["depth_loss"] for r in online]
    assert len(depth) == 12 and all(d > 0 for d in depth)
    assert sum(depth[-3:]) / 3 < 0.8 * sum(depth[:3]) / 3, depth
    assert (out / "export" / "model.safetensors").is_file()

    # The cache gives the same targets: the same run reads them instead (first steps agree).
    assert cli(["depth-cache", str(sim_dataset), "--teacher", "sim-depth", "--model-config",
                str(out / "train_config.yaml"), "--no-progress"]) == 0
    cached = tmp_path / "cached"
    assert cli(["train", *overrides(sim_dataset, cached, steps=2, **{"data.depth_cache": "true"}),
                "--no-progress"]) == 0
    for a, b in zip(online[:2], records(cached)):
        assert b["depth_loss"] == pytest.approx(a["depth_loss"], rel=1e-2)
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-2)
