"""Demonstrations recorded in the joint task and written as a LeRobot v3.0 dataset by gen-demos."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("gym_aloha")
pytest.importorskip("mujoco")

from conftest import run_sim_cli  # noqa: E402
from lingvla.sim.demonstrations import ARM_JOINT_INDICES, generate_demo, iter_demos  # noqa: E402
from lingvla.sim.seeds import EVAL_SEED_START, SeedRangeError  # noqa: E402
from lingvla.sim.tasks import CAMERAS, JOINT_NAMES, LEFT_GRIPPER, RIGHT_GRIPPER  # noqa: E402

SIZE = 32


def test_gen_demos_writes_a_lerobot_dataset(tmp_path, capsys):
    from lingvla.data.lerobot import LeRobotDataset

    out = tmp_path / "demos"
    assert run_sim_cli(["gen-demos", "--task", "transfer_cube", "--episodes", "2", "--out", str(out),
                    "--image-size", str(SIZE), "--seed-start", "40", "--workers", "2",
                    "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["episodes"] == 2 and report["success_rate"] == 1.0
    assert report["seeds"] == [40, 41] and report["dataset"] == str(out)

    info = json.loads((out / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == 50
    assert info["robot_type"] == "aloha" and info["total_episodes"] == 2
    assert info["total_frames"] == 800
    features = info["features"]
    assert features["observation.state"]["shape"] == [14]
    assert features["observation.state"]["names"] == list(JOINT_NAMES)
    assert features["action"]["shape"] == [14]
    for cam in CAMERAS:
        assert features[f"observation.images.{cam}"]["dtype"] == "video"
        assert features[f"observation.images.{cam}"]["shape"] == [SIZE, SIZE, 3]

    dataset = LeRobotDataset(out)
    assert list(dataset.tasks.values()) == [
        "pick up the cube with the right arm and transfer it to the left arm"]
    assert sorted(dataset.video_keys) == sorted(f"observation.images.{c}" for c in CAMERAS)
    episode = dataset.episode_data(1)
    assert episode["action"].shape == (400, 14)
    assert episode["next.reward"].max() == 4  # kept because the replay succeeded
    # The episode is seed 41's demonstration, frame for frame (its first 120 steps suffice:
    # the replay is deterministic).
    demo = generate_demo("transfer_cube", 41, image_size=SIZE, steps=120)
    np.testing.assert_allclose(episode["observation.state"][:120], demo.states)
    np.testing.assert_allclose(episode["action"][:120], demo.actions)
    frame = dataset.video_frame("observation.images.top", 1, 100)
    assert frame.shape == (SIZE, SIZE, 3)
    # Lossy video: close to the rendered frame, not equal.
    assert np.abs(frame.astype(float) - demo.images["top"][100]).mean() < 12


def test_demo_frames_line_up():
    demo = generate_demo("insertion", 5, image_size=16, steps=40)
    assert not demo.success  # 40 steps are too few to insert
    assert demo.images["top"].shape == (40, 16, 16, 3)
    assert demo.states.shape == demo.actions.shape == (40, 14) and demo.rewards.shape == (40,)
    # Frame 0 is the state at reset; the arms then move toward the targets.
    np.testing.assert_allclose(demo.states[0][[1, 2]], [-0.96, 1.16], atol=1e-6)


def test_workers_keep_seed_order_and_results():
    seeds = [3, 4, 5]
    kwargs = dict(image_size=16, steps=30)
    alone = list(iter_demos("transfer_cube", iter(seeds), workers=1, **kwargs))
    pooled = list(iter_demos("transfer_cube", iter(seeds), workers=2, **kwargs))
    assert [d.seed for d in pooled] == seeds
    for a, b in zip(alone, pooled):
        np.testing.assert_array_equal(a.states, b.states)
        np.testing.assert_array_equal(a.rewards, b.rewards)


def test_demos_refuse_evaluation_seeds(tmp_path, capsys):
    with pytest.raises(SeedRangeError):
        generate_demo("transfer_cube", EVAL_SEED_START, image_size=16, steps=5)
    assert run_sim_cli(["gen-demos", "--episodes", "1", "--out", str(tmp_path / "x"),
                    "--seed-start", str(EVAL_SEED_START), "--workers", "1", "--no-progress"]) == 2
    assert "evaluation" in capsys.readouterr().err.lower()


def test_corrective_noise_shape_fade_and_determinism():
    from lingvla.sim.demonstrations import corrective_noise
    from lingvla.sim.tasks import get_task

    end = get_task("transfer_cube").approach_end - 10
    noise = corrective_noise("transfer_cube", 3, 0.2)
    assert noise.shape == (400, 14) and noise.dtype == np.float32
    assert not noise[:, [LEFT_GRIPPER, RIGHT_GRIPPER]].any()  # grippers untouched
    assert not noise[0].any() and not noise[end:].any()  # starts at the plan, back on it before the grasp
    assert np.abs(noise[:end - 20]).max() > 0.1   # and really moves the arms in between
    np.testing.assert_array_equal(noise, corrective_noise("transfer_cube", 3, 0.2))
    assert not np.array_equal(noise, corrective_noise("transfer_cube", 4, 0.2))
    np.testing.assert_allclose(corrective_noise("transfer_cube", 3, 0.1), noise / 2, atol=1e-7)
    assert not corrective_noise("transfer_cube", 3, 0.0).any()
    for bad in (-0.1, float("nan")):
        with pytest.raises(ValueError, match="noise scale"):
            corrective_noise("transfer_cube", 3, bad)


@pytest.mark.parametrize("task", ["transfer_cube", "insertion"])
def test_corrective_noise_in_later_phases(task):
    from lingvla.sim.demonstrations import corrective_noise
    from lingvla.sim.tasks import get_task

    spec = get_task(task)
    (start, end), = spec.later_noise
    assert spec.approach_end < start < end
    approach = corrective_noise(task, 5, 0.2)
    both = corrective_noise(task, 5, 0.2, phases="all")
    # The approach is unchanged; the later window adds offsets only inside it, zero at its ends.
    np.testing.assert_array_equal(both[:start + 1], approach[:start + 1])
    assert not approach[start:].any() and not both[end:].any()
    assert np.abs(both[start + 20:end - 20]).max() > 0.1
    assert not both[:, [LEFT_GRIPPER, RIGHT_GRIPPER]].any()
    with pytest.raises(ValueError, match="noise phases"):
        corrective_noise(task, 5, 0.2, phases="carry")


def test_corrective_demo_records_the_scripted_actions_from_perturbed_states(tmp_path, capsys):
    from lingvla.data.lerobot import LeRobotDataset

    clean = generate_demo("transfer_cube", 1000, image_size=16)
    noisy = generate_demo("transfer_cube", 1000, image_size=16, noise=0.2)
    assert noisy.success  # the noise is faded out before the grasp
    np.testing.assert_array_equal(noisy.actions, clean.actions)  # labels: the plan
    off = np.abs(noisy.states - clean.states)[:, ARM_JOINT_INDICES].max(1)
    assert off[:80].max() > 0.1              # states: off the plan during the approach
    assert not np.array_equal(noisy.images["top"][50], clean.images["top"][50])

    out = tmp_path / "noisy"
    assert run_sim_cli(["gen-demos", "--episodes", "1", "--out", str(out), "--noise", "0.2",
                    "--seed-start", "1000", "--image-size", "16", "--workers", "1",
                    "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["noise"] == 0.2 and report["seeds"] == [1000, 1000]
    episode = LeRobotDataset(out).episode_data(0)
    np.testing.assert_allclose(episode["observation.state"], noisy.states)
    np.testing.assert_allclose(episode["action"], clean.actions)
    # A bad scale is refused before anything is written.
    assert run_sim_cli(["gen-demos", "--episodes", "1", "--out", str(tmp_path / "x"), "--noise", "-1",
                    "--workers", "1", "--no-progress"]) == 2
    assert "noise scale" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    # Perturbed while carrying too: still a success, the same labels, states off the plan later on.
    carried = generate_demo("transfer_cube", 1000, image_size=16, noise=0.2, noise_phases="all")
    assert carried.success
    np.testing.assert_array_equal(carried.actions, clean.actions)
    later = np.abs(carried.states - noisy.states)[:, ARM_JOINT_INDICES].max(1)
    assert later[:120].max() < 1e-6 and later[140:200].max() > 0.05
