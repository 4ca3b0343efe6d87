"""Closed-loop evaluation (lingvla.sim.evaluate, `lingvla eval-sim`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

pytest.importorskip("gym_aloha")
pytest.importorskip("mujoco")

from conftest import HoldStill, ReplayPolicy, make_tiny_checkpoint, run_sim_cli  # noqa: E402
from lingvla.serve.broker import Execution  # noqa: E402
from lingvla.sim import evaluate as evaluate_module  # noqa: E402
from lingvla.sim.evaluate import CheckpointMismatchError, evaluate  # noqa: E402
from lingvla.sim.seeds import EVAL_SEED_START, SeedRangeError  # noqa: E402

SIZE = 56  # the tiny checkpoint's input size (a multiple of 28)
RENDER = 32  # test doubles have no image size: render small
SEED = EVAL_SEED_START + 7


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("eval") / "export", image_size=SIZE)


def test_eval_sim_cli_writes_report(checkpoint, tmp_path, capsys, monkeypatch):
    import av

    monkeypatch.chdir(tmp_path)  # MuJoCo logs an unstable random policy to ./MUJOCO_LOG.TXT
    out = tmp_path / "report"
    assert run_sim_cli(["eval-sim", str(checkpoint), "--task", "transfer_cube", "--episodes", "2",
                    "--seed", str(SEED), "--actions-per-chunk", "20", "--max-steps", "45",
                    "--videos", "1", "--out", str(out), "--no-progress", "--num-steps", "3"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["task"] == "transfer_cube" and line["checkpoint"] == str(checkpoint)
    assert line["episodes"] == 2 and line["seed"] == SEED and line["image_size"] == SIZE
    assert line["success_rate"] == 0.0 and 0.0 <= line["progress"] <= 1.0  # a random tiny model
    assert line["actions_per_chunk"] == 20 and line["wall_s"] > 0 and line["report"] == str(out)
    assert line["num_steps"] == 3  # the checkpoint's config says 10

    results = json.loads((out / "results.json").read_text())
    assert results["summary"] == line
    episodes = results["episodes"]
    assert [e["seed"] for e in episodes] == [SEED, SEED + 1]
    assert all(e["steps"] == 45 and e["inferences"] == 3 for e in episodes)  # steps 0, 20, 40
    # One failure video (the quota), the three cameras side by side, one frame per step + reset.
    assert episodes[0]["video"] == f"videos/episode_000_seed{SEED}_failure.mp4"
    assert episodes[1]["video"] is None
    assert sorted(p.name for p in (out / "videos").iterdir()) == [f"episode_000_seed{SEED}_failure.mp4"]
    with av.open(str(out / episodes[0]["video"])) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 46
    height = frames[0].shape[0]
    assert height >= evaluate_module.VIDEO_MIN_HEIGHT and frames[0].shape[1] == 3 * height
    assert (out / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_scripted_replay_succeeds_and_holding_still_fails():
    replay = ReplayPolicy("transfer_cube", SEED, every=50)
    good = evaluate(None, "transfer_cube", 1, seed=SEED, policy=replay,
                    execution=Execution(execute_horizon=50), image_size=RENDER, progress=False)
    assert good.success_rate == 1.0 and good.progress == 1.0
    first = good.episodes[0]
    assert first.success and first.max_reward == 4
    assert first.steps == first.first_success_step < 400  # the episode ends at the first success
    assert first.inferences == -(-first.steps // 50)

    still = evaluate(None, "transfer_cube", 2, seed=SEED, policy=HoldStill(),
                     execution=Execution(execute_horizon=50), image_size=RENDER, progress=False)
    assert still.success_rate == 0.0 and still.progress == 0.0
    assert [e.steps for e in still.episodes] == [400, 400]
    assert [e.max_reward for e in still.episodes] == [0, 0]


def test_temporal_ensembling_of_a_consistent_policy_replays_it():
    replay = ReplayPolicy("transfer_cube", SEED, every=10)
    report = evaluate(None, "transfer_cube", 1, seed=SEED, policy=replay,
                      execution=Execution("ensemble", execute_horizon=10, ensemble_decay=0.01),
                      image_size=RENDER, progress=False)
    assert report.success_rate == 1.0
    summary = report.summary()
    assert summary["actions_per_chunk"] == 10 and summary["ensemble_decay"] == 0.01 and summary["rtc"] is None
    assert report.episodes[0].inferences == -(-report.episodes[0].steps // 10)


class Counting:
    """A test double holding still with chunks of `length` actions."""

    def __init__(self, length: int = 50):
        self.length = length

    def infer(self, obs: dict) -> dict:
        return {"actions": np.tile(np.asarray(obs["state"], np.float32), (self.length, 1))}


def test_episodes_run_through_the_broker_and_render_only_for_requests(monkeypatch, tmp_path):
    """eval-sim executes chunks with serve's ActionBroker (the path a robot runs): requests at
    the broker's ticks, cameras rendered for those ticks only, and a short chunk named."""
    from lingvla.serve import broker as broker_module
    from lingvla.sim.env import make_env

    monkeypatch.chdir(tmp_path)
    made = []
    original = broker_module.ActionBroker.__init__

    def spy(self, source, execution, **kwargs):
        made.append(execution)
        original(self, source, execution, **kwargs)

    monkeypatch.setattr(broker_module.ActionBroker, "__init__", spy)
    env = make_env("transfer_cube", image_size=RENDER, max_steps=45)
    renders = []
    step = env.step

    def counting_step(action, render=True):
        renders.append(render)
        return step(action, render=render)

    env.step = counting_step
    policy = Counting()
    try:
        every_20 = Execution(execute_horizon=20)
        result, _ = evaluate_module.run_episode(policy, env, SEED, every_20, max_steps=45)
        assert made[-1].mode == "chunk" and made[-1].execute_horizon == 20
        assert result.inferences == 3  # ticks 0, 20, 40
        # rendered after steps 20 and 40 only (the reset renders tick 0)
        assert [i + 1 for i, r in enumerate(renders) if r] == [20, 40]
        ensemble = Execution("ensemble", execute_horizon=10, ensemble_decay=0.01)
        ensembled, _ = evaluate_module.run_episode(Counting(), env, SEED, ensemble, max_steps=45)
        assert made[-1].mode == "ensemble" and made[-1].ensemble_decay == 0.01
        assert ensembled.inferences == 5
        with pytest.raises(CheckpointMismatchError, match="a chunk of 15 actions cannot cover 20 steps"):
            evaluate_module.run_episode(Counting(length=15), env, SEED, every_20, max_steps=45)
    finally:
        env.close()


class Recording:
    """A Policy whose infer calls (prefix given, chunk returned) are kept."""

    def __init__(self, policy):
        self.policy, self.calls = policy, []

    def infer(self, obs, **kwargs):
        out = self.policy.infer(obs, **kwargs)
        self.calls.append((kwargs.get("prefix_actions"), kwargs.get("prefix_delay"), kwargs.get("rtc"),
                           out["actions"]))
        return out


@pytest.mark.parametrize("method", ["inpaint", "guidance"])
def test_rtc_chunks_continue_the_unexecuted_actions(checkpoint, tmp_path, monkeypatch, method):
    """mode "rtc": every chunk after the first is asked to continue the previous chunk's unexecuted
    actions, and its first `delay` actions are those actions exactly."""
    from lingvla.serve.policy import Policy
    from lingvla.serve.rtc import RTCConfig
    from lingvla.sim.env import make_env

    monkeypatch.chdir(tmp_path)
    policy = Recording(Policy.from_checkpoint(checkpoint))
    env = make_env("transfer_cube", image_size=SIZE, max_steps=45)
    try:
        execution = Execution("rtc", execute_horizon=20, delay=3, rtc=RTCConfig(method, max_guidance=2.0))
        result, _ = evaluate_module.run_episode(policy, env, SEED, execution, max_steps=45)
    finally:
        env.close()
    assert result.inferences == 3 and len(policy.calls) == 3  # steps 0, 20, 40
    assert policy.calls[0][0] is None
    for (_, _, _, before), (prefix, delay, config, chunk) in zip(policy.calls, policy.calls[1:]):
        assert delay == 3 and config.method == method and config.max_guidance == 2.0
        np.testing.assert_array_equal(prefix, before[20:])  # 30 unexecuted actions
        np.testing.assert_array_equal(chunk[:3], before[20:23])
        assert not np.allclose(chunk[3:30], before[23:])  # the rest of the overlap is sampled, not copied


def _edit_embodiment(checkpoint, edit) -> None:
    path = checkpoint / "embodiments.yaml"
    specs = yaml.safe_load(path.read_text())
    edit(specs["aloha"])
    path.write_text(yaml.safe_dump(specs, sort_keys=False))


@pytest.fixture
def no_rollouts(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a rollout started")

    monkeypatch.setattr(evaluate_module, "run_episode", forbidden)


def test_a_checkpoint_with_another_action_width_is_refused(tmp_path, no_rollouts, capsys):
    ckpt = make_tiny_checkpoint(tmp_path / "franka", image_size=SIZE, embodiment="bimanual_franka")
    with pytest.raises(CheckpointMismatchError, match="action_dim=16.*needs 14"):
        evaluate(ckpt, "transfer_cube", 1, seed=SEED, progress=False)
    assert run_sim_cli(["eval-sim", str(ckpt), "--episodes", "1", "--out", str(tmp_path / "r"),
                    "--no-progress"]) == 2
    assert "action_dim=16" in capsys.readouterr().err
    assert not (tmp_path / "r" / "results.json").exists()


def test_a_checkpoint_without_the_sim_cameras_is_refused(tmp_path, no_rollouts):
    ckpt = make_tiny_checkpoint(tmp_path / "cams", image_size=SIZE)

    def other_cameras(spec):
        spec["cameras"] = {"head": "observation.images.cam_high",
                           "left_wrist": "observation.images.cam_left_wrist",
                           "right_wrist": "observation.images.cam_right_wrist"}

    _edit_embodiment(ckpt, other_cameras)
    with pytest.raises(CheckpointMismatchError, match=r"slot\(s\) \['head'\] map to no simulator camera"):
        evaluate(ckpt, "insertion", 1, seed=SEED, progress=False)


def test_a_top_camera_policy_gets_only_the_top_camera(tmp_path, monkeypatch):
    """A policy trained on the top camera alone is evaluated with only that camera rendered and
    sent (its videos show it alone); a three-camera policy gets all three."""
    monkeypatch.chdir(tmp_path)
    from lingvla.serve.policy import Policy

    ckpt = make_tiny_checkpoint(tmp_path / "top", image_size=SIZE, num_cameras=1)
    assert evaluate_module.policy_cameras(Policy.from_checkpoint(ckpt)) == ("top",)
    three = make_tiny_checkpoint(tmp_path / "three", image_size=SIZE)
    assert evaluate_module.policy_cameras(Policy.from_checkpoint(three)) == ("top", "left_wrist", "right_wrist")
    seen = []
    real = Policy.infer

    def infer(self, obs, **kwargs):
        seen.append(sorted(obs["images"]))
        return real(self, obs, **kwargs)

    monkeypatch.setattr(Policy, "infer", infer)
    report = evaluate(ckpt, "transfer_cube", 1, seed=SEED, max_steps=12,
                      execution=Execution(execute_horizon=10), out=tmp_path / "r", videos=1, progress=False)
    assert len(report.episodes) == 1 and seen and all(names == ["top"] for names in seen)
    import av

    with av.open(str(tmp_path / "r" / report.episodes[0].video)) as container:
        frame = next(container.decode(video=0)).to_ndarray(format="rgb24")
    assert frame.shape[0] == frame.shape[1]  # one camera, not three side by side


def test_an_image_size_other_than_the_training_images_is_refused(tmp_path, no_rollouts):
    ckpt = make_tiny_checkpoint(tmp_path / "sized", image_size=SIZE)
    data = tmp_path / "data"
    (data / "meta").mkdir(parents=True)
    (data / "meta" / "info.json").write_text(json.dumps({"features": {
        f"observation.images.{cam}": {"dtype": "video", "shape": [84, 84, 3]}
        for cam in ("top", "left_wrist", "right_wrist")}}))
    info = json.loads((ckpt / "train_info.json").read_text())
    info["train_config"]["data"]["datasets"] = [{"path": str(data), "embodiment": "aloha"}]
    (ckpt / "train_info.json").write_text(json.dumps(info))
    assert evaluate_module.training_image_size(ckpt) == 84
    with pytest.raises(CheckpointMismatchError, match="trained on 84 px"):
        evaluate(ckpt, "transfer_cube", 1, seed=SEED, image_size=224, progress=False)


def test_bad_settings_are_refused_before_rollouts(checkpoint, no_rollouts):
    with pytest.raises(SeedRangeError, match="demonstration seeds"):
        evaluate(checkpoint, "transfer_cube", 2, seed=5, progress=False)
    with pytest.raises(ValueError, match="must be >= 1 and >= delay"):
        evaluate(checkpoint, "transfer_cube", 1, seed=SEED,
                 execution=Execution("rtc", execute_horizon=40, delay=11), progress=False)
    with pytest.raises(ValueError, match="is for real-time chunking"):
        evaluate(checkpoint, "transfer_cube", 1, seed=SEED, execution=Execution(delay=2), progress=False)
    with pytest.raises(ValueError, match="ensemble_decay must be a finite number >= 0"):
        evaluate(checkpoint, "transfer_cube", 1, seed=SEED,
                 execution=Execution("ensemble", ensemble_decay=-0.1), progress=False)
    with pytest.raises(ValueError, match="num_steps=0"):
        evaluate(checkpoint, "transfer_cube", 1, seed=SEED, num_steps=0, progress=False)
    with pytest.raises(ValueError, match="execute_horizon=51"):
        evaluate(checkpoint, "transfer_cube", 1, seed=SEED, execution=Execution(execute_horizon=51),
                 progress=False)
    with pytest.raises(CheckpointMismatchError, match="not an inference checkpoint"):
        evaluate(checkpoint.parent, "transfer_cube", 1, seed=SEED, progress=False)


def test_eval_sim_flags_that_do_not_combine_are_refused(checkpoint, tmp_path, no_rollouts, capsys):
    base = ["eval-sim", str(checkpoint), "--episodes", "1", "--seed", str(SEED), "--out", str(tmp_path / "r"),
            "--no-progress"]
    for flags, words in ((["--rtc", "guidance", "--ensemble-decay", "0.01"], "choose one"),
                         (["--rtc-delay", "2"], "give --rtc too"),
                         (["--rtc", "guidance", "--rtc-max-guidance", "0"], "max_guidance must be > 0"),
                         (["--rtc", "inpaint", "--actions-per-chunk", "5", "--rtc-delay", "6"],
                          "delay must be in")):
        assert run_sim_cli(base + flags) == 2
        assert words in capsys.readouterr().err
    assert not (tmp_path / "r" / "results.json").exists()


def test_the_report_writes_the_execution_under_its_json_keys():
    from lingvla.serve.rtc import RTCConfig

    keys = ("actions_per_chunk", "ensemble_decay", "rtc", "rtc_delay", "rtc_max_guidance")

    def summary(execution):
        report = evaluate_module.EvalReport(task="transfer_cube", checkpoint="ckpt", seed=SEED,
                                            execution=execution, image_size=SIZE, workers=1, wall_s=1.0)
        return tuple(report.summary()[k] for k in keys)

    assert summary(Execution(execute_horizon=50)) == (50, None, None, None, None)
    ensemble = Execution("ensemble", execute_horizon=1, ensemble_decay=0.02)
    assert summary(ensemble) == (1, 0.02, None, None, None)
    guided = Execution("rtc", execute_horizon=25, delay=3, rtc=RTCConfig("guidance", max_guidance=2.0))
    assert summary(guided) == (25, None, "guidance", 3, 2.0)
    inpainted = Execution("rtc", execute_horizon=25, rtc=RTCConfig("inpaint"))
    assert summary(inpainted) == (25, None, "inpaint", 0, None)


def test_check_policy_resolves_the_execution(checkpoint):
    from lingvla.serve.policy import Policy
    from lingvla.serve.rtc import RTCConfig

    policy = Policy.from_checkpoint(checkpoint)
    chunk = policy.config.chunk_size
    check = evaluate_module.check_policy
    assert check(policy, "transfer_cube", Execution()) == Execution(execute_horizon=chunk)
    assert check(policy, "transfer_cube", Execution("ensemble")) == Execution("ensemble", execute_horizon=1)
    assert check(policy, "transfer_cube", Execution("rtc", delay=2)) == \
        Execution("rtc", execute_horizon=chunk // 2, delay=2, rtc=RTCConfig())
    with pytest.raises(ValueError, match="execute_horizon must be given"):
        check(HoldStill(), "transfer_cube", Execution())


def test_mcnemar_exact_and_paired_successes(tmp_path, capsys):
    """The p-value agrees with the two-sided binomial test done from its definition (sum the
    probabilities of every split no more likely than the one seen), and episodes pair by seed."""
    import json
    import math

    from lingvla.cli import main
    from lingvla.sim.evaluate import mcnemar_exact, paired_successes

    def by_definition(b, c):
        n = b + c
        prob = [math.comb(n, i) / 2 ** n for i in range(n + 1)]
        return min(1.0, sum(q for q in prob if q <= prob[b] * (1 + 1e-12)))

    for b, c in [(15, 18), (0, 5), (30, 9), (7, 7), (1, 0), (40, 12)]:
        assert mcnemar_exact(b, c) == pytest.approx(by_definition(b, c), rel=1e-12)
        assert mcnemar_exact(b, c) == mcnemar_exact(c, b)
    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(0, 5) == pytest.approx(2 / 32)

    a = {900000: True, 900001: True, 900002: False, 900003: False, 900004: True}
    b = {900001: False, 900002: True, 900003: False, 900004: True, 900005: True}
    result = paired_successes(a, b)  # seeds 900001-900004 are shared
    assert result == {"pairs": 4, "successes_a": 2, "successes_b": 2, "only_a": 1, "only_b": 1, "p": 1.0}
    with pytest.raises(ValueError, match="share no seed"):
        paired_successes({1: True}, {2: True})

    for name, episodes in (("a", a), ("b", b)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(
            {"summary": {}, "episodes": [{"seed": s, "success": v} for s, v in episodes.items()]}))
    assert main(["eval-compare", str(tmp_path / "a"), str(tmp_path / "b" / "results.json")]) == 0
    printed = json.loads(capsys.readouterr().out.strip())
    assert printed["only_a"] == 1 and printed["pairs"] == 4
    assert main(["eval-compare", str(tmp_path / "a"), str(tmp_path / "missing")]) == 2
    assert "no evaluation report" in capsys.readouterr().err
