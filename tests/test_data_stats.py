"""Normalization statistics (`lingvla stats`) and the Normalizer."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from lingvla.cli import main
from lingvla.data.errors import MissingStatsError
from lingvla.data.lerobot import LeRobotDatasetWriter
from lingvla.data.normalize import Normalizer, cut_from_unified, pad_to_unified
from lingvla.data.running_stats import RunningStats
from lingvla.data.stats import compute_norm_stats

QS = {"q01": 0.01, "q02": 0.02, "q50": 0.5, "q98": 0.98, "q99": 0.99}


def _columns(length: int, e: int) -> dict:
    rng = np.random.default_rng(e)
    state = rng.normal(size=(length, 14)).astype(np.float32) * np.arange(1, 15, dtype=np.float32)
    state[:, 6] = rng.choice([0.0, 1.0], size=length)       # bimodal gripper
    state[:, 13] = 0.25                                       # constant dim
    action = (rng.standard_exponential(size=(length, 14)) - 1).astype(np.float32)
    return {"observation.state": state, "action": action}


@pytest.fixture(scope="module")
def parquet_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("stats") / "ds"
    w = LeRobotDatasetWriter(root, fps=30, robot_type="aloha", data_files_size_in_mb=0.05, features={
        "observation.state": {"dtype": "float32", "shape": [14]}, "action": {"dtype": "float32", "shape": [14]}})
    for e, n in enumerate([700, 1300, 400, 900]):
        w.add_episode(task="t", frames=_columns(n, e))
    w.finalize()
    assert len(list((root / "data/chunk-000").glob("*.parquet"))) > 1  # streaming over several files
    return root


def test_running_stats_matches_numpy():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(size=(5000, 3)), rng.normal(loc=40, size=(5000, 3))])
    x[:, 2] = 7.0
    s = RunningStats(num_bins=4096)
    for part in np.array_split(x, 7):
        s.update(part)
    for part in np.array_split(x, 3):
        s.update_histogram(part)
    out = s.result(QS)
    np.testing.assert_allclose(out["mean"], x.mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out["std"], x.std(0), rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(out["min"], x.min(0))
    np.testing.assert_array_equal(out["max"], x.max(0))
    bound = np.asarray(out["quantile_error_bound"])
    for name, q in QS.items():
        err = np.abs(np.asarray(out[name]) - np.quantile(x, q, axis=0))
        assert (err <= bound + 1e-12).all(), (name, err, bound)
    assert out["q50"][2] == 7.0 and bound[2] == 0


def test_stats_equal_numpy_on_columns(parquet_dataset):
    stats = compute_norm_stats([parquet_dataset], "aloha", num_bins=1 << 16)
    cols = [_columns(n, e) for e, n in enumerate([700, 1300, 400, 900])]
    for key, column in (("state", "observation.state"), ("action", "action")):
        x = np.concatenate([c[column] for c in cols]).astype(np.float64)
        s = stats[key]
        assert s["count"] == len(x) == stats["count"]
        np.testing.assert_allclose(s["mean"], x.mean(0), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(s["std"], x.std(0), rtol=1e-10, atol=1e-12)
        np.testing.assert_array_equal(s["min"], x.min(0))
        np.testing.assert_array_equal(s["max"], x.max(0))
        for name in ("q01", "q02", "q10", "q50", "q90", "q98", "q99"):
            err = np.abs(np.asarray(s[name]) - np.quantile(x, int(name[1:]) / 100, axis=0))
            assert (err <= np.asarray(s["quantile_error_bound"]) + 1e-12).all(), (key, name)
    assert stats["state"]["names"][6] == "left_gripper"


def test_stats_of_selected_episodes_skip_files_holding_none_of_them(parquet_dataset):
    """Episodes 0 and 2 of four, several files: files with neither are skipped (they used to fail
    on their empty selection), and the figures are those of the two episodes alone."""
    stats = compute_norm_stats([{"path": parquet_dataset, "episodes": [0, 2]}], "aloha", num_bins=1 << 16)
    x = np.concatenate([_columns(n, e)["action"] for e, n in ((0, 700), (2, 400))]).astype(np.float64)
    assert stats["action"]["count"] == 1100
    np.testing.assert_allclose(stats["action"]["mean"], x.mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(stats["action"]["max"], x.max(0))
    empty = RunningStats()
    empty.update(np.zeros((0, 14)))
    assert empty.count == 0


def test_stats_cli_writes_and_merges(parquet_dataset, tmp_path, capsys):
    out = tmp_path / "norm_stats.json"
    assert main(["stats", str(parquet_dataset), "--out", str(out)]) == 0  # embodiment from robot_type
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["embodiment"] == "aloha" and line["count"] == 3300
    assert main(["stats", str(parquet_dataset), "--embodiment", "agilex", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert set(data["norm_stats"]) == {"aloha", "agilex"} and data["count"] == 6600
    s = data["norm_stats"]["aloha"]["state"]
    assert {"mean", "std", "min", "max", "q01", "q99", "q02", "q98", "count"} <= set(s)


def test_normalizer_modes_floor_and_torch(parquet_dataset, tmp_path):
    stats = compute_norm_stats([parquet_dataset], "aloha")
    data = {"norm_stats": {"aloha": {"state": stats["state"], "action": stats["action"]}}}
    with pytest.warns(UserWarning, match=r"dims \[13\] \['right_gripper'\]"):
        norm = Normalizer.from_file(data, "aloha", mode="quantile")
    assert norm.floored == {"state": [13], "action": []}
    q01, q99 = np.asarray(stats["action"]["q01"]), np.asarray(stats["action"]["q99"])
    np.testing.assert_allclose(norm.normalize_action(np.stack([q01, q99])), [[-1] * 14, [1] * 14], atol=1e-5)
    x = np.random.default_rng(0).normal(size=(5, 50, 14)).astype(np.float32)
    np.testing.assert_allclose(norm.unnormalize_action(norm.normalize_action(x)), x, rtol=1e-5, atol=1e-5)
    t = torch.from_numpy(x)
    np.testing.assert_allclose(norm.normalize_action(t).numpy(), norm.normalize_action(x), rtol=1e-6, atol=1e-6)
    assert isinstance(norm.unnormalize_action(t), torch.Tensor)
    # the constant dim (0.25) maps to 0, and a deviation of 0.01 stays moderate thanks to the floor
    assert norm.normalize_state(np.full(14, 0.26, np.float32))[13] == pytest.approx(10.0, rel=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ms = Normalizer.from_file(data, "aloha", mode="mean_std", clip=3.0)
    y = ms.normalize_action(np.asarray(stats["action"]["mean"]) + 10 * np.asarray(stats["action"]["std"]))
    np.testing.assert_allclose(y, 3.0)
    # the released single-robot layout is accepted
    released = {"norm_stats": {"state": {k: stats["state"][k] for k in ("mean", "std", "q01", "q99")},
                               "actions": {k: stats["action"][k] for k in ("mean", "std", "q01", "q99")}},
                "count": 3300}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flat = Normalizer.from_file(released, "aloha")
    np.testing.assert_allclose(flat.normalize_action(x), norm.normalize_action(x))


def test_missing_stats_errors(tmp_path):
    data = {"norm_stats": {"aloha": {"state": {"mean": [0.0], "std": [1.0]}}}}
    with pytest.raises(MissingStatsError, match="no normalization stats for embodiment 'franka'"):
        Normalizer.from_file(data, "franka")
    with pytest.raises(MissingStatsError, match="no 'action' stats .* for embodiment 'aloha'"):
        Normalizer.from_file(data, "aloha")
    data["norm_stats"]["aloha"]["action"] = {"mean": [0.0], "std": [1.0]}
    with pytest.raises(MissingStatsError, match=r"'state' stats of embodiment 'aloha' lack \['q01', 'q99'\]"):
        Normalizer.from_file(data, "aloha", mode="quantile")
    with pytest.raises(MissingStatsError, match="does not exist"):
        Normalizer.from_file(tmp_path / "nope.json", "aloha")


def test_pad_and_cut_helpers():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    y = pad_to_unified(x, 8, [0, 1, 5])
    assert y.shape == (2, 8) and y[1, 5] == 5 and y[:, [2, 3, 4, 6, 7]].sum() == 0
    np.testing.assert_array_equal(cut_from_unified(y, [0, 1, 5]), x)
    t = pad_to_unified(torch.from_numpy(x), 8)
    assert torch.equal(cut_from_unified(t, 3), torch.from_numpy(x))
    with pytest.raises(ValueError, match="do not fit"):
        pad_to_unified(x, 2)


def test_released_split_layout_joins_arm_and_effector_and_matches_the_released_formula():
    """RoboTwin's released stats split the 14-D vector: arm (12) and effector (2) per key; joined
    they normalize as the released deploy code does: (x - q01) / (q99 - q01 + 1e-6) * 2 - 1."""
    rng = np.random.default_rng(3)

    def part(n):
        q01 = rng.uniform(-2, 0, n)
        q99 = q01 + rng.uniform(0.5, 2, n)
        return {"mean": ((q01 + q99) / 2).tolist(), "std": rng.uniform(0.1, 1, n).tolist(),
                "q01": q01.tolist(), "q99": q99.tolist(), "q02": q01.tolist(), "q98": q99.tolist()}

    parts = {f"{p}.{b}.position": part(12 if b == "arm" else 2)
             for p in ("observation.state", "action") for b in ("arm", "effector")}
    data = {"norm_stats": parts, "count": 1000}
    norm = Normalizer.from_file(data, "aloha", mode="quantile")
    arm, eff = parts["action.arm.position"], parts["action.effector.position"]
    q01 = np.array(arm["q01"][:6] + eff["q01"][:1] + arm["q01"][6:] + eff["q01"][1:])
    q99 = np.array(arm["q99"][:6] + eff["q99"][:1] + arm["q99"][6:] + eff["q99"][1:])
    x = rng.uniform(-3, 3, (4, 14))
    released = (x - q01) / (q99 - q01 + 1e-6) * 2 - 1
    np.testing.assert_allclose(norm.normalize_action(x), released, rtol=1e-5, atol=1e-5)
    exact = Normalizer.from_file(data, "aloha", mode="bounds_99_woclip")
    np.testing.assert_allclose(exact.normalize_action(x), released, rtol=1e-12, atol=1e-12)
    # the released formula has no floor: a constant dim is blown up as the release does
    flat = {k: dict(v) for k, v in parts.items()}
    flat["action.effector.position"]["q99"] = list(flat["action.effector.position"]["q01"])
    blown = Normalizer.from_file({"norm_stats": flat}, "aloha", mode="bounds_99_woclip")
    assert blown.scale["action"][6] == pytest.approx(5e-7) and blown.floored["action"] == []
    s_arm = parts["observation.state.arm.position"]
    assert norm.center["state"][6] == pytest.approx(
        (parts["observation.state.effector.position"]["q01"][0] + parts["observation.state.effector.position"]["q99"][0]) / 2)
    assert norm.center["state"][7] == pytest.approx((s_arm["q01"][6] + s_arm["q99"][6]) / 2)
    del parts["action.effector.position"]
    with pytest.raises(MissingStatsError, match="'action.arm.position' but not 'action.effector.position'"):
        Normalizer.from_file(data, "aloha")
