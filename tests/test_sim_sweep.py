"""`lingvla sweep`: a grid of tiny cells runs end to end, a kill keeps the finished cells (they are
not run again), a failing cell is logged while the others finish, and the CSV and plot come out."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from lingvla.cli import main

SPEC = {
    "task": "transfer_cube", "demonstrations": [2, 3], "train_seeds": [0],
    "variants": {"base": [], "broken": ["model.image_size=57"]},
    "overrides": ["batch_size=4", "model.vision.hidden_size=32", "model.llm.hidden_size=32",
                  "model.expert.hidden_size=32", "model.llm.intermediate_size=64", "model.vision.intermediate_size=64",
                  "model.expert.intermediate_size=64", "save_every=1"],
    "steps": 2, "eval_episodes": 2, "eval_seed": 900000, "image_size": 56, "workers": 1, "eval_max_steps": 10,
}


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_sweep_resumes_after_a_kill_and_survives_a_failing_cell(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({**SPEC, "out": str(tmp_path / "sweep")}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "lingvla.cli", "sweep", str(spec), "--no-progress"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = tmp_path / "sweep" / "results.csv"
    deadline = time.time() + 400
    while time.time() < deadline and not (results.is_file() and len(rows(results)) >= 1):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = rows(results)
    assert len(first) == 1 and first[0]["cell"] == "base-n2-s0"
    kept = tmp_path / "sweep" / "cells" / "base-n2-s0" / "eval" / "results.json"
    stamp = kept.stat().st_mtime_ns

    assert main(["sweep", str(spec), "--no-progress"]) == 1  # the broken variant's cells fail
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["failed"] == ["broken-n2-s0", "broken-n3-s0"] and summary["cells"] == 2
    table = rows(results)
    assert [r["cell"] for r in table] == ["base-n2-s0", "base-n3-s0"]
    assert table[0] == first[0] and kept.stat().st_mtime_ns == stamp  # not run again
    for row in table:
        assert int(row["episodes"]) == 2 and 0 <= float(row["success_rate"]) <= 1
        assert float(row["ci_low"]) <= float(row["success_rate"]) <= float(row["ci_high"])
    n3 = yaml.safe_load((tmp_path / "sweep" / "cells" / "base-n3-s0" / "train" / "train_config.yaml").read_text())
    assert n3["data"]["datasets"][0]["episodes"] == [0, 1, 2] and n3["steps"] == 2
    failures = [json.loads(line) for line in (tmp_path / "sweep" / "failures.jsonl").read_text().splitlines()]
    assert {f["cell"] for f in failures} == {"broken-n2-s0", "broken-n3-s0"}
    assert all("image_size=57" in f["error"] for f in failures)
    assert (tmp_path / "sweep" / "sweep.png").stat().st_size > 1000
    assert main(["sweep", str(tmp_path / "missing.yaml")]) == 2

    # A grown grid: more demonstrations than the data holds. The data is generated again from the
    # same seeds (its first episodes unchanged), the finished cells stand, the new cell trains on all.
    import numpy as np

    from lingvla.data.lerobot import LeRobotDataset

    def first_actions():
        ds = LeRobotDataset(tmp_path / "sweep" / "data")
        return ds.num_episodes, np.concatenate([c["action"] for _, c in ds.iter_data_files(["action"])])

    count, before = first_actions()
    grown = {**SPEC, "demonstrations": [2, 3, 4], "variants": {"base": []}, "out": str(tmp_path / "sweep")}
    spec.write_text(yaml.safe_dump(grown))
    assert main(["sweep", str(spec), "--no-progress"]) == 0
    count_after, after = first_actions()
    assert (count, count_after) == (3, 4)
    np.testing.assert_array_equal(after[:len(before)], before)
    table = rows(results)
    assert [r["cell"] for r in table] == ["base-n2-s0", "base-n3-s0", "base-n4-s0"]
    assert table[0] == first[0] and kept.stat().st_mtime_ns == stamp


def test_jobs_share_a_grid_and_leave_a_held_cell_to_its_holder(tmp_path):
    """Two jobs run a four-cell grid, each cell once; a cell another process holds is not run but
    reported, and is run by the next sweep once its holder lets go."""
    from lingvla.sim.sweep import cell_lock, file_lock

    out = tmp_path / "sweep"
    grid = {**SPEC, "demonstrations": [2, 3], "train_seeds": [0, 1], "variants": {"base": []}, "out": str(out)}
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(grid))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "lingvla.cli", "sweep", str(spec), "--no-progress"]
    with file_lock(cell_lock(out, "base-n3-s1")) as held:
        assert held
        run = subprocess.run([*cmd, "--jobs", "2"], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["running_elsewhere"] == ["base-n3-s1"] and summary["failed"] == [] and summary["cells"] == 3
    table = rows(out / "results.csv")
    assert sorted(r["cell"] for r in table) == ["base-n2-s0", "base-n2-s1", "base-n3-s0"]  # each once
    by_parent = {json.loads(line)["cell"] for line in run.stdout.splitlines() if line.startswith('{"cell"')}
    job_log = (out / "jobs" / "job-1.log").read_text()
    by_job = {json.loads(line)["cell"] for line in job_log.splitlines() if line.startswith('{"cell"')}
    assert by_job and by_parent and not by_job & by_parent  # both ran cells, none twice

    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)  # the holder let go
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert json.loads(run.stdout.strip().splitlines()[-1])["running_elsewhere"] == []
    assert [r["cell"] for r in rows(out / "results.csv")][3:] == ["base-n3-s1"]

    # comparisons.csv: 2 against 3 demonstrations, per training seed and pooled, episode by episode
    def successes(cell):
        report = json.loads((out / "cells" / cell / "eval" / "results.json").read_text())
        return [e["success"] for e in report["episodes"]]

    comparisons = rows(out / "comparisons.csv")
    assert [(c["a"], c["b"], c["train_seeds"]) for c in comparisons] == [
        ("base-n2", "base-n3", "0"), ("base-n2", "base-n3", "1"), ("base-n2", "base-n3", "0 1")]
    for c, seeds in zip(comparisons, ([0], [1], [0, 1])):
        a = sum((successes(f"base-n2-s{s}") for s in seeds), [])
        b = sum((successes(f"base-n3-s{s}") for s in seeds), [])
        assert int(c["pairs"]) == len(a) == 2 * len(seeds)
        assert (int(c["only_a"]), int(c["only_b"])) == (sum(x and not y for x, y in zip(a, b)),
                                                        sum(y and not x for x, y in zip(a, b)))
        assert 0 < float(c["p"]) <= 1


def test_a_depth_variant_gets_its_depth_maps_and_cache_without_a_separate_step(tmp_path, capsys):
    """A depth variant added to a grid whose data has no depth maps: without `depth: true` the spec
    is refused, naming the variant; with it the data is generated again with depth maps (the
    finished cell stands) and the sweep computes the depth cache the variant reads, keeps it while it
    fits, and computes it again for a variant whose model needs other tokens."""
    from lingvla.data.lerobot import LeRobotDataset
    from lingvla.sim.sweep import SweepSpec, depth_variants, ensure_depth_caches

    out = tmp_path / "sweep"
    spec_path = tmp_path / "spec.yaml"
    grid = {**SPEC, "demonstrations": [2], "variants": {"base": []}, "out": str(out)}
    spec_path.write_text(yaml.safe_dump(grid))
    assert main(["sweep", str(spec_path), "--no-progress"]) == 0
    assert not any(k.startswith("observation.depth.") for k in LeRobotDataset(out / "data").features)
    first = rows(out / "results.csv")

    depth = ["model.depth.enabled=true", "data.depth_cache=true"]
    grid["variants"] = {"base": [], "depth": depth}
    spec_path.write_text(yaml.safe_dump(grid))
    capsys.readouterr()
    assert main(["sweep", str(spec_path), "--no-progress"]) == 2
    refused = capsys.readouterr().out
    assert "variant 'depth'" in refused and "depth: true" in refused
    assert rows(out / "results.csv") == first  # nothing run, nothing lost
    spec_path.write_text(yaml.safe_dump({**grid, "depth": True}))
    assert main(["sweep", str(spec_path), "--no-progress"]) == 0
    assert "observation.depth.top" in LeRobotDataset(out / "data").features
    table = rows(out / "results.csv")
    assert [r["cell"] for r in table] == ["base-n2-s0", "depth-n2-s0"] and table[0] == first[0]
    meta_path = out / "data" / "depth_cache" / "sim-depth" / "meta.json"
    meta = json.loads(meta_path.read_text())
    assert meta["num_frames"] == LeRobotDataset(out / "data").num_frames and meta["image_size"] == 56
    assert list(meta["cameras"]) == ["observation.images.top"]
    trained = yaml.safe_load((out / "cells" / "depth-n2-s0" / "train" / "train_config.yaml").read_text())
    assert trained["data"]["depth_cache"] is True and trained["model"]["depth"]["enabled"] is True

    spec = SweepSpec.load(spec_path)
    stamp = meta_path.stat().st_mtime_ns
    kept = ensure_depth_caches(depth_variants(spec, out / "data", out), out / "data", progress=False)
    assert kept == []  # it fits: kept
    assert meta_path.stat().st_mtime_ns == stamp
    narrower = SweepSpec(**{**spec.__dict__, "variants": {"depth": [*depth, "model.depth.teacher_dim=8"]}})
    logged = []
    made = ensure_depth_caches(depth_variants(narrower, out / "data", out), out / "data", progress=False,
                               log=lambda *a, **k: logged.append(a[0]))
    assert made == [meta_path.parent] and json.loads(meta_path.read_text())["teacher_dim"] == 8
    assert "teacher_dim=32" in logged[0]  # says why it computed it again


def test_comparisons_pair_variants_and_sizes_on_shared_seeds(tmp_path):
    """compare_cells on written reports: each variant against the first at the same size, the first
    variant's consecutive sizes, per training seed and pooled; sizes a variant lacks are skipped."""
    from lingvla.sim.sweep import compare_cells, runs_permutation_p

    rng = __import__("random").Random(0)
    outcome, table = {}, []
    for variant, sizes in (("base", (10, 50, 200)), ("depth", (50,))):
        for n in sizes:
            for seed in (0, 1):
                cell = f"{variant}-n{n}-s{seed}"
                outcome[cell] = {900000 + i: rng.random() < n / 250 for i in range(20)}
                (tmp_path / "cells" / cell / "eval").mkdir(parents=True)
                (tmp_path / "cells" / cell / "eval" / "results.json").write_text(json.dumps(
                    {"episodes": [{"seed": s, "success": v} for s, v in outcome[cell].items()]}))
                table.append({"cell": cell, "variant": variant, "demonstrations": str(n), "train_seed": str(seed)})
    found = compare_cells(tmp_path, table)
    assert [(c["a"], c["b"], c["train_seeds"]) for c in found] == [
        ("base-n50", "depth-n50", "0"), ("base-n50", "depth-n50", "1"), ("base-n50", "depth-n50", "0 1"),
        ("base-n10", "base-n50", "0"), ("base-n10", "base-n50", "1"), ("base-n10", "base-n50", "0 1"),
        ("base-n50", "base-n200", "0"), ("base-n50", "base-n200", "1"), ("base-n50", "base-n200", "0 1")]
    pooled = found[2]
    a = [*outcome["base-n50-s0"].values(), *outcome["base-n50-s1"].values()]
    b = [*outcome["depth-n50-s0"].values(), *outcome["depth-n50-s1"].values()]
    assert pooled["pairs"] == 40 and pooled["successes_a"] == sum(a) and pooled["successes_b"] == sum(b)
    assert pooled["only_a"] == sum(x and not y for x, y in zip(a, b))
    assert all("runs_p" not in c for c in found if " " not in c["train_seeds"])  # per seed: one run a side
    rates = lambda cell: sum(outcome[cell].values()) / 20  # noqa: E731
    assert pooled["runs_p"] == runs_permutation_p([rates("base-n50-s0"), rates("base-n50-s1")],
                                                  [rates("depth-n50-s0"), rates("depth-n50-s1")])


def test_runs_permutation_p_is_exact_and_bounded_by_the_number_of_runs():
    """Exact over all splits: 2 runs a side cannot go below 1/3 however far apart, 3 a side reach
    1/10, 5 a side 2/252; equal groups give 1; the test is symmetric."""
    from lingvla.sim.sweep import runs_permutation_p

    assert runs_permutation_p([0.9, 0.95], [0.1, 0.2]) == 0.333
    assert runs_permutation_p([0.9, 0.95, 0.92], [0.1, 0.2, 0.15]) == 0.1
    assert runs_permutation_p([0.9] * 5, [0.1] * 5) == float(f"{2 / 252:.3g}")
    assert runs_permutation_p([0.5, 0.6], [0.5, 0.6]) == 1.0
    a, b = [0.7, 0.79, 0.75], [0.72, 0.41, 0.6]
    assert runs_permutation_p(a, b) == runs_permutation_p(b, a)
    # by hand: splits of {0.7, 0.79, 0.75, 0.72, 0.41, 0.6} into 3 + 3 at least as far apart as a, b
    import itertools
    values, seen = a + b, abs(sum(a) - sum(b)) / 3
    splits = list(itertools.combinations(range(6), 3))
    far = sum(abs(sum(values[i] for i in g) - sum(values[i] for i in range(6) if i not in g)) / 3 >= seen - 1e-12
              for g in splits)
    assert runs_permutation_p(a, b) == float(f"{far / len(splits):.3g}")
    with pytest.raises(ValueError):
        runs_permutation_p([], [0.5])


def test_success_trend_counts_runs_and_tells_a_slope_from_seed_noise():
    """The slope per doubling is the least-squares one over runs; a clean rise is significant, the
    same rates shuffled between sizes are not; trends() also fits from each larger size up."""
    import numpy as np

    from lingvla.sim.sweep import success_trend, trends

    sizes = [10, 10, 20, 20, 40, 40, 80, 80, 160, 160]
    rising = [0.10, 0.14, 0.28, 0.31, 0.45, 0.52, 0.66, 0.70, 0.85, 0.88]
    rows = [{"variant": "base", "demonstrations": n, "success_rate": r} for n, r in zip(sizes, rising)]
    fit = success_trend(rows)
    assert fit["runs"] == 10
    assert fit["slope_per_doubling"] == pytest.approx(np.polyfit(np.log2(sizes), rising, 1)[0], abs=1e-4)
    assert fit["p"] < 0.01
    flat = [0.5, 0.2, 0.6, 0.3, 0.4, 0.5, 0.3, 0.6, 0.2, 0.4]  # the seed noise of a flat curve
    assert success_trend([{**r, "success_rate": v} for r, v in zip(rows, flat)])["p"] > 0.2
    found = trends(rows)
    assert [(t["from_demonstrations"], t["sizes"], t["runs"]) for t in found] == [
        (10, "10 20 40 80 160", 10), (20, "20 40 80 160", 8), (40, "40 80 160", 6)]
    with pytest.raises(ValueError, match="two sizes"):
        success_trend(rows[:2])


def test_plot_sets_variants_apart(tmp_path):
    """Variants at one size do not hide each other: side by side on the log axis around each size,
    or along the x axis when the grid has one size."""
    from lingvla.sim.sweep import plot_sweep

    def row(variant, n, seed, k):
        return {"variant": variant, "demonstrations": str(n), "train_seed": str(seed), "successes": str(k),
                "episodes": "100", "success_rate": str(k / 100)}

    one = [row(v, 50, s, 40 + 10 * i + s) for i, v in enumerate(("base", "a", "b")) for s in (0, 1)]
    placed = plot_sweep(one, tmp_path / "one.png", "one size")
    assert placed == {"base": [0.0], "a": [1.0], "b": [2.0]}
    grid = [row(v, n, 0, 50) for v in ("base", "a") for n in (10, 100)]
    placed = plot_sweep(grid, tmp_path / "grid.png", "two sizes")
    for k, n in enumerate((10, 100)):
        left, right = placed["base"][k], placed["a"][k]
        assert left < n < right and right / left < 1.2
    assert (tmp_path / "one.png").stat().st_size > 1000 and (tmp_path / "grid.png").stat().st_size > 1000
