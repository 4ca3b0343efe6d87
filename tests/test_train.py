"""The trainer on CPU: FSDP2 (gloo, 2 processes) == 1 process, kill -9 + resume == uninterrupted,
a short run learns and exports a checkpoint that loads and predicts, non-finite loss handling."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lingvla.config import tiny_config
from lingvla.train.config import TrainConfig, load_train_config
from lingvla.train.flops import train_flops_per_sample
from lingvla.train.loop import apply_freezing, lr_factor, param_groups, train

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from lingvla.data.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("train_data") / "aloha"
    return write_synthetic_dataset(root, num_episodes=2, episode_length=60, image_hw=(56, 56))


def overrides(dataset, out, **extra):
    base = {"model.preset": "tiny", "model.image_size": 56, "batch_size": 4, "steps": 6,
            "output_dir": str(out), "data.num_workers": 0, "save_every": 2, "tensorboard": "false",
            "optim.warmup_steps": 0, "optim.lr": 1e-3, "log_every": 1,
            "data.datasets": f"[{{path: {dataset}, embodiment: aloha}}]"}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def losses(out: Path) -> dict[int, float]:
    by_step = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        by_step[record["step"]] = record["loss"]
    return by_step


def run_cli(args, **kwargs):
    return subprocess.run([sys.executable, "-m", "lingvla.cli", "train", *args, "--no-progress"],
                          env=ENV, capture_output=True, text=True, timeout=600, **kwargs)


def test_lr_schedule_and_param_groups():
    config = load_train_config(None, ["steps=100", "optim.warmup_steps=10", "optim.min_lr_ratio=0.1"])
    assert lr_factor(0, config) == pytest.approx(0.1)
    assert lr_factor(9, config) == pytest.approx(1.0)
    assert lr_factor(10, config) == pytest.approx(1.0)
    assert lr_factor(55, config) == pytest.approx(0.55)
    assert lr_factor(100, config) == pytest.approx(0.1)
    config.optim.schedule = "constant"
    assert lr_factor(80, config) == 1.0

    from lingvla.model.lingvla import LingVLA

    model = LingVLA(tiny_config(image_size=56))
    config.optim.freeze_vision = True
    config.optim.lr_multipliers = {"state_proj": 10.0}
    apply_freezing(model, config)
    groups = param_groups(model, config)
    assert not any(p.requires_grad for p in model.vision.parameters())
    by_mult = {g["lr_mult"]: g for g in groups}
    assert set(by_mult) == {1.0, 10.0}
    assert {id(p) for p in by_mult[10.0]["params"]} == {id(p) for p in model.state_proj.parameters()}
    assert by_mult[10.0]["lr"] == pytest.approx(10 * config.optim.lr)


def test_config_yaml_round_trip_and_errors(tmp_path):
    config = load_train_config(None, ["model.preset=tiny", "steps=7", "optim.betas=[0.8, 0.9]"])
    config.save_yaml(tmp_path / "c.yaml")
    again = load_train_config(tmp_path / "c.yaml")
    assert again.to_dict() == config.to_dict()
    assert again.optim.betas == (0.8, 0.9)
    with pytest.raises(ValueError, match="unknown key 'stepz'"):
        load_train_config(None, ["stepz=3"])
    with pytest.raises(ValueError, match="mixed_precision"):
        load_train_config(None, ["parallel.mixed_precision=fp8"])
    with pytest.raises(ValueError, match="data.datasets entry.*episode_frame"):  # a typo is not ignored
        load_train_config(None, ["data.datasets=[{path: d, episode_frame: [0, 5]}]"])


def test_dataset_windows_and_selection_reach_the_loader_and_stats(dataset, tmp_path, monkeypatch):
    """A dataset entry's episode_frames and exclude_episodes are what the run samples and what its
    norm stats count (they were once dropped on the way to the loader)."""
    import lingvla.data.mixture as mixture

    made = []

    def recording(*args, **kwargs):
        made.append(mixture_make(*args, **kwargs))
        return made[-1]

    mixture_make = mixture.make_dataloader
    monkeypatch.setattr(mixture, "make_dataloader", recording)
    spec = f"[{{path: {dataset}, embodiment: aloha, episode_frames: [0, 10], exclude_episodes: [1]}}]"
    config = load_train_config(None, overrides(dataset, tmp_path / "run", steps=1, **{"data.datasets": spec}))
    train(config, progress=False, save=False)
    assert len(made) == 1 and len(made[0].dataset) == 10  # frames 0-9 of episode 0 only
    stats = json.loads((tmp_path / "run" / "norm_stats.json").read_text())
    assert stats["counts"]["aloha"] == 60  # episode 0's frames (a window does not narrow the stats)


def test_flops_count_matches_the_papers_figures():
    from lingvla.config import preset

    parts = train_flops_per_sample(preset("lingbot-4b"))
    # REFERENCE: ~7.4 TFLOP per sample (ViT 3.1, LLM 4.2, expert 0.1); we count matmuls only.
    assert parts["total"] / 1e12 == pytest.approx(7.4, rel=0.06)
    assert parts["vit"] / 1e12 == pytest.approx(3.1, rel=0.06)
    assert parts["llm"] / 1e12 == pytest.approx(4.2, rel=0.06)
    assert parts["expert"] / 1e12 == pytest.approx(0.12, rel=0.2)
    # Frozen and LoRA parts: no weight gradients, and no backward at all before the first part
    # that trains.
    from lingvla.train.config import OptimConfig
    from lingvla.train.flops import forward_flops, training_modes

    fwd = forward_flops(preset("lingbot-4b"))
    frozen = train_flops_per_sample(preset("lingbot-4b"),
                                    modes=training_modes(OptimConfig(freeze_vision=True, freeze_llm=True)))
    assert (frozen["vit"], frozen["llm"], frozen["expert"]) == (fwd["vit"], fwd["llm"], 3 * fwd["expert"])
    lora = train_flops_per_sample(preset("lingbot-4b"),
                                  modes=training_modes(OptimConfig(lora_rank=16, lora_targets=["vision", "vlm"])))
    assert (lora["vit"], lora["llm"], lora["expert"]) == (2 * fwd["vit"], 2 * fwd["llm"], 3 * fwd["expert"])
    llm_only = training_modes(OptimConfig(freeze_llm=True))
    assert train_flops_per_sample(preset("lingbot-4b"), modes=llm_only)["llm"] == 2 * fwd["llm"]
    with pytest.raises(ValueError, match="part modes"):
        train_flops_per_sample(preset("lingbot-4b"), modes={"vit": "half"})


def test_short_run_learns_and_exports(dataset, tmp_path):
    from lingvla.model.lingvla import LingVLA

    config = load_train_config(None, overrides(dataset, tmp_path / "run", steps=40, save_every=100,
                                               **{"optim.lr": 3e-3}))
    summary = train(config, progress=False)
    curve = losses(tmp_path / "run")
    first, last = sum(curve[s] for s in range(1, 9)) / 8, sum(curve[s] for s in range(33, 41)) / 8
    assert last < 0.9 * first, (first, last)
    export = Path(summary["export"])
    assert {"model.safetensors", "config.yaml", "norm_stats.json", "embodiments.yaml"} <= {
        p.name for p in export.iterdir()}
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000
    model = LingVLA.from_pretrained(export)
    batch = {"images": torch.zeros(1, 3, 3, 56, 56, dtype=torch.uint8),
             "image_mask": torch.ones(1, 3, dtype=torch.bool), "prompt": ["pick up the cube"],
             "state": torch.zeros(1, 32), "action_dim_mask": torch.ones(1, 32, dtype=torch.bool)}
    actions = model.sample_actions(batch)
    assert actions.shape == (1, 50, 32) and torch.isfinite(actions).all()
    assert list_complete(tmp_path / "run") == [40]


def test_unsaved_run_writes_no_checkpoint_or_export(dataset, tmp_path):
    """What `bench train` uses: the metrics are written, no checkpoint and no export."""
    config = load_train_config(None, overrides(dataset, tmp_path / "bench", steps=2, save_every=1))
    summary = train(config, progress=False, save=False)
    assert summary["export"] is None and sorted(losses(tmp_path / "bench")) == [1, 2]
    assert not (tmp_path / "bench" / "checkpoints").exists() and not (tmp_path / "bench" / "export").exists()


def list_complete(out):
    from lingvla.train.checkpoint import list_checkpoints

    return [step for step, _ in list_checkpoints(out / "checkpoints")]


def test_two_process_fsdp_matches_one_process(dataset, tmp_path):
    # With an EMA of the weights (kept shard by shard under FSDP), exported by both, and state
    # dropout and image shifts (each rank takes its rows of the global draw, so the ranks do not
    # repeat one pattern).
    dropout = {"model.state_dropout": 0.5, "data.image_shift": 2}
    single = run_cli(overrides(dataset, tmp_path / "one", steps=4, save_every=100, ema_decay=0.6, **dropout))
    assert single.returncode == 0, single.stderr[-3000:]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517",
           "-m", "lingvla.cli", "train", *overrides(dataset, tmp_path / "two", steps=4, save_every=2, ema_decay=0.6,
                                                    **dropout),
           "--no-progress"]
    double = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert double.returncode == 0, double.stderr[-3000:]
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(one) == sorted(two) == [1, 2, 3, 4]
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-4, abs=1e-6), (step, one, two)
    assert one[4] != one[1]  # training moved
    # The FSDP export holds the same weights as a plain model would load.
    from lingvla.model.lingvla import LingVLA

    LingVLA.from_pretrained(tmp_path / "two" / "export")
    assert list_complete(tmp_path / "two") == [2, 4]
    # `lingvla export`: the step-4 checkpoint (written by 2 FSDP ranks) exports the final weights.
    from safetensors.torch import load_file

    from lingvla.cli import main as cli
    from lingvla.train.loop import export_checkpoint

    assert cli(["export", str(tmp_path / "two")]) == 0
    final = load_file(tmp_path / "two" / "export" / "model.safetensors")
    latest = load_file(tmp_path / "two" / "export_step_00000004" / "model.safetensors")
    early = load_file(export_checkpoint(tmp_path / "two", step=2) / "model.safetensors")
    assert final.keys() == latest.keys() == early.keys()
    assert all(torch.equal(final[k], latest[k]) for k in final)
    assert any(not torch.equal(final[k], early[k]) for k in final)
    alone = load_file(tmp_path / "one" / "export" / "model.safetensors")
    raw = load_file(export_checkpoint(tmp_path / "two", step=4, raw=True) / "model.safetensors")
    assert alone.keys() == final.keys()
    for k in final:
        torch.testing.assert_close(final[k], alone[k], rtol=1e-4, atol=1e-5)
    assert any(not torch.equal(final[k], raw[k]) for k in final)
    LingVLA.from_pretrained(tmp_path / "two" / "export_step_00000002")
    with pytest.raises(FileNotFoundError, match=r"steps saved: \[2, 4\]"):
        export_checkpoint(tmp_path / "two", step=3)


@pytest.mark.parametrize("state_dropout,image_shift", [(0.0, 0), (0.5, 2)])
def test_kill_and_resume_matches_uninterrupted(dataset, tmp_path, state_dropout, image_shift):
    """Bit-exact resume, with state dropout and image shifts too: their draws come from per-step
    generators."""
    extra = {"model.state_dropout": state_dropout, "data.image_shift": image_shift}
    args = overrides(dataset, tmp_path / "ref", steps=8, save_every=3, **extra)
    ref = run_cli(args)
    assert ref.returncode == 0, ref.stderr[-3000:]

    args = overrides(dataset, tmp_path / "killed", steps=8, save_every=3, **extra)
    proc = subprocess.Popen([sys.executable, "-m", "lingvla.cli", "train", *args, "--no-progress"],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not list_complete(tmp_path / "killed"):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = list_complete(tmp_path / "killed")
    assert done and done[-1] < 8, "the run should have been killed mid-way"
    resumed = run_cli(args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout
    ref_losses, got = losses(tmp_path / "ref"), losses(tmp_path / "killed")
    for step in range(done[-1] + 1, 9):
        assert got[step] == pytest.approx(ref_losses[step], rel=1e-6, abs=1e-7), step


def torchrun(nproc: int, port: int, args: list[str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-port", str(port),
           "-m", "lingvla.cli", "train", *args, "--no-progress"]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)


def test_resume_on_another_number_of_processes_and_hsdp(dataset, tmp_path):
    """2 -> 1 and 1 -> 2 processes: DCP reshards model, optimizer and EMA, the loader resumes at
    the same place of the global sample order, and every loss is the uninterrupted run's. HSDP
    (2 replicas x 2 shards, 4 processes) computes the same losses too."""
    fixed = {"optim.schedule": "constant", "model.state_dropout": 0.5, "ema_decay": 0.6}
    base = run_cli(overrides(dataset, tmp_path / "base", steps=4, save_every=100, **fixed))
    assert base.returncode == 0, base.stderr[-3000:]
    expected = losses(tmp_path / "base")
    assert sorted(expected) == [1, 2, 3, 4]

    first = torchrun(2, 29521, overrides(dataset, tmp_path / "two_one", steps=2, save_every=2, **fixed))
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_cli(overrides(dataset, tmp_path / "two_one", steps=4, save_every=2, **fixed))
    assert second.returncode == 0, second.stderr[-3000:]
    assert "written by 2 processes, resharded onto 1" in second.stdout

    first = run_cli(overrides(dataset, tmp_path / "one_two", steps=2, save_every=2, **fixed))
    assert first.returncode == 0, first.stderr[-3000:]
    second = torchrun(2, 29523, overrides(dataset, tmp_path / "one_two", steps=4, save_every=2, **fixed))
    assert second.returncode == 0, second.stderr[-3000:]
    assert "written by 1 processes, resharded onto 2" in second.stdout

    hsdp = torchrun(4, 29525, overrides(dataset, tmp_path / "hsdp", steps=4, save_every=100,
                                        **{**fixed, "parallel.dp_replicate": 2}))
    assert hsdp.returncode == 0, hsdp.stderr[-3000:]
    for run in ("two_one", "one_two", "hsdp"):
        got = losses(tmp_path / run)
        assert sorted(got) == [1, 2, 3, 4], run
        for step in expected:
            assert got[step] == pytest.approx(expected[step], rel=1e-4, abs=1e-6), (run, step, got, expected)
    assert expected[4] != expected[1]
    # the EMA went through the resharding too: the exports agree with the uninterrupted run's
    from safetensors.torch import load_file

    reference = load_file(tmp_path / "base" / "export" / "model.safetensors")
    for run in ("two_one", "one_two", "hsdp"):
        got = load_file(tmp_path / run / "export" / "model.safetensors")
        for key in reference:
            torch.testing.assert_close(got[key], reference[key], rtol=1e-4, atol=1e-5)


def test_cpu_offload_trains_as_without_it(dataset, tmp_path):
    """parallel.cpu_offload (FSDP2's CPUOffloadPolicy; one process gets an FSDP group of its own)
    computes the losses of a plain run."""
    plain = run_cli(overrides(dataset, tmp_path / "plain", steps=3, save_every=100))
    assert plain.returncode == 0, plain.stderr[-3000:]
    offload = run_cli(overrides(dataset, tmp_path / "offload", steps=3, save_every=3, **{"parallel.cpu_offload": "true"}))
    assert offload.returncode == 0, offload.stderr[-3000:]
    expected, got = losses(tmp_path / "plain"), losses(tmp_path / "offload")
    assert sorted(got) == [1, 2, 3]
    for step in expected:
        assert got[step] == pytest.approx(expected[step], rel=1e-4, abs=1e-6), (step, got, expected)
    from lingvla.model.lingvla import LingVLA

    LingVLA.from_pretrained(tmp_path / "offload" / "export")


def test_eight_bit_adamw_states_through_fsdp_and_a_resharded_resume(dataset, tmp_path):
    """optim.states=8bit in training: 2 FSDP processes compute the losses of one; a checkpoint
    written by 2 resumes on 1 (the quantized states are DTensors placed like their weights) and
    continues the uninterrupted run."""
    fixed = {"optim.schedule": "constant", "optim.states": "8bit", "optim.weight_decay": 0.01}
    base = run_cli(overrides(dataset, tmp_path / "base", steps=4, save_every=100, **fixed))
    assert base.returncode == 0, base.stderr[-3000:]
    expected = losses(tmp_path / "base")
    plain = run_cli(overrides(dataset, tmp_path / "plain", steps=4, save_every=100,
                              **{**fixed, "optim.states": "fp32"}))
    assert plain.returncode == 0, plain.stderr[-3000:]
    fp32 = losses(tmp_path / "plain")
    assert expected[1] == pytest.approx(fp32[1], rel=1e-6)  # same start
    assert expected[4] == pytest.approx(fp32[4], rel=0.05) and expected[4] != fp32[4]
    first = torchrun(2, 29531, overrides(dataset, tmp_path / "two_one", steps=2, save_every=2, **fixed))
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_cli(overrides(dataset, tmp_path / "two_one", steps=4, save_every=2, **fixed))
    assert second.returncode == 0, second.stderr[-3000:]
    assert "written by 2 processes, resharded onto 1" in second.stdout
    got = losses(tmp_path / "two_one")
    assert sorted(got) == [1, 2, 3, 4]
    for step in expected:
        assert got[step] == pytest.approx(expected[step], rel=1e-4, abs=1e-6), (step, got, expected)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(dataset, tmp_path, monkeypatch):
    from lingvla.model.lingvla import LingVLA
    from lingvla.train.loop import NonFiniteLossError

    calls = {"n": 0}
    original = LingVLA.compute_loss

    def flaky(self, batch, **kwargs):
        calls["n"] += 1
        loss, info = original(self, batch, **kwargs)
        return (loss * float("nan") if calls["n"] == 5 else loss), info

    monkeypatch.setattr(LingVLA, "compute_loss", flaky)
    config = load_train_config(None, overrides(dataset, tmp_path / "nan", steps=8, save_every=2))
    with pytest.raises(NonFiniteLossError, match="step 5.*step_00000004"):
        train(config, progress=False)
    assert list_complete(tmp_path / "nan") == [2, 4]
    assert not (tmp_path / "nan" / "export").exists()


def test_activation_checkpointing_changes_nothing_but_memory(dataset, tmp_path):
    plain = load_train_config(None, overrides(dataset, tmp_path / "plain", steps=3, save_every=100))
    ckpt = load_train_config(None, overrides(dataset, tmp_path / "ac", steps=3, save_every=100,
                                             **{"parallel.activation_checkpointing": "true"}))
    train(plain, progress=False)
    train(ckpt, progress=False)
    a, b = losses(tmp_path / "plain"), losses(tmp_path / "ac")
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-5)
    # The export holds plain parameter names (no wrapper prefixes): it loads strictly.
    from lingvla.model.lingvla import LingVLA

    LingVLA.from_pretrained(tmp_path / "ac" / "export")


def test_bf16_fsdp_tracks_fp32(dataset, tmp_path):
    args = overrides(dataset, tmp_path / "bf16", steps=3, save_every=100,
                     **{"parallel.mixed_precision": "bf16"})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29519",
           "-m", "lingvla.cli", "train", *args, "--no-progress"]
    run = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    ref = load_train_config(None, overrides(dataset, tmp_path / "fp32", steps=3, save_every=100))
    train(ref, progress=False)
    low, full = losses(tmp_path / "bf16"), losses(tmp_path / "fp32")
    for step in full:
        assert low[step] == pytest.approx(full[step], rel=3e-2), (low, full)
    # Master weights stay fp32: the export is fp32.
    from safetensors.torch import load_file

    state = load_file(str(tmp_path / "bf16" / "export" / "model.safetensors"))
    assert all(v.dtype == torch.float32 for v in state.values())


@pytest.mark.slow
def test_compiled_layers_match_eager(dataset, tmp_path):
    eager = load_train_config(None, overrides(dataset, tmp_path / "eager", steps=2, save_every=100))
    compiled = load_train_config(None, overrides(dataset, tmp_path / "compiled", steps=2, save_every=100,
                                                 **{"parallel.compile": "true"}))
    train(eager, progress=False)
    train(compiled, progress=False)
    a, b = losses(tmp_path / "eager"), losses(tmp_path / "compiled")
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-4)


def test_deadline_replans_the_step_count(dataset, tmp_path, monkeypatch):
    """With a deadline the trainer re-plans its step count at its own pace: a far deadline grows
    the run up to max_steps, a near one ends it at the next re-plan; the export says how many."""
    import lingvla.train.loop as loop

    monkeypatch.setattr(loop, "REPLAN_EVERY", 2)
    far = load_train_config(None, overrides(dataset, tmp_path / "far", steps=4, save_every=100))
    summary = train(far, progress=False, deadline=time.perf_counter() + 3600, max_steps=9)
    assert summary["steps"] == 9 and sorted(losses(tmp_path / "far")) == list(range(1, 10))
    assert list_complete(tmp_path / "far") == [9]
    near = load_train_config(None, overrides(dataset, tmp_path / "near", steps=8, save_every=100))
    summary = train(near, progress=False, deadline=time.perf_counter(), max_steps=8)
    assert summary["steps"] == 3 and sorted(losses(tmp_path / "near")) == [1, 2, 3]
    info = json.loads((tmp_path / "near" / "export" / "train_info.json").read_text())
    assert info["train_config"]["steps"] == 3
