"""EMA of the weights (ema_decay): the average itself, turning it on when resuming, resuming it
from a checkpoint, the exports (EMA by default, --raw), and that training never reads it."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from lingvla.cli import main as cli
from lingvla.model.lingvla import build_model
from lingvla.train.config import load_train_config
from lingvla.train.ema import EMA, clean_name
from lingvla.train.loop import apply_freezing, export_checkpoint, train
from test_train import overrides


def test_ema_follows_the_recursion_and_restores_the_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    model[1].bias.requires_grad_(False)
    ema = EMA(model, 0.75)
    assert ema.names == ["0.weight", "0.bias", "1.weight"]
    expected = {n: p.detach().clone() for n, p in model.named_parameters()}
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ema.update()
        for n, p in model.named_parameters():
            if p.requires_grad:
                expected[n] = 0.75 * expected[n] + 0.25 * p.detach()
    for n, shadow in ema.state_dict().items():
        torch.testing.assert_close(shadow, expected[n])
    raw = {n: p.detach().clone() for n, p in model.named_parameters()}
    with ema.applied():
        torch.testing.assert_close(model[0].weight, expected["0.weight"])
        assert torch.equal(model[1].bias, raw["1.bias"])  # frozen: not averaged
    assert all(torch.equal(p, raw[n]) for n, p in model.named_parameters())
    ema.reset()
    assert torch.equal(ema.state_dict()["0.weight"], model[0].weight)
    assert clean_name("layers.0._checkpoint_wrapped_module._orig_mod.attn.q.weight") == "layers.0.attn.q.weight"
    with pytest.raises(ValueError, match="ema_decay=1.0"):
        EMA(model, 1.0)
    with pytest.raises(ValueError, match="ema_decay"):
        load_train_config(None, ["ema_decay=1.5"])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from lingvla.data.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("ema_data") / "aloha"
    return write_synthetic_dataset(root, num_episodes=2, episode_length=60, image_hw=(56, 56))


def weights(export_dir) -> dict[str, torch.Tensor]:
    return load_file(Path(export_dir) / "model.safetensors")


def test_ema_on_resume_checkpointed_and_exported(dataset, tmp_path, capsys):
    out = tmp_path / "run"

    def run(steps, **extra):
        config = load_train_config(None, overrides(dataset, out, steps=steps, save_every=1, keep_last=10,
                                                   **extra))
        return config, train(config, progress=False)

    run(2)                                       # steps 1-2 without EMA
    capsys.readouterr()
    config, summary = run(4, ema_decay=0.5)      # EMA on from the step-2 checkpoint
    assert "the checkpoint has no EMA: the average (decay 0.5) starts from its weights at step 2" in \
        capsys.readouterr().out
    assert summary["weights"] == "ema 0.5 since step 2"
    raw = {s: weights(export_checkpoint(out, step=s, raw=True)) for s in (2, 4)}
    assert cli(["export", str(out), "--step", "3", "--raw"]) == 0
    raw[3] = weights(out / "export_step_00000003_raw")
    ema4 = weights(export_checkpoint(out, step=4))

    model = build_model(config.model)
    apply_freezing(model, config)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and trained < set(ema4)
    for name, value in ema4.items():
        if name in trained:
            expected = 0.25 * raw[2][name] + 0.25 * raw[3][name] + 0.5 * raw[4][name]
            torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6)
        else:  # frozen parameters and buffers are the trained ones
            assert torch.equal(value, raw[4][name]), name
    assert any(not torch.equal(ema4[n], raw[4][n]) for n in trained)
    final = weights(out / "export")
    assert all(torch.equal(final[n], ema4[n]) for n in ema4)
    info = json.loads((out / "export" / "train_info.json").read_text())
    assert info["summary"]["weights"] == "ema 0.5 since step 2"
    for name, note in (("export_step_00000004", "ema 0.5 since step 2"), ("export_step_00000004_raw", "raw")):
        assert json.loads((out / name / "train_info.json").read_text())["summary"]["weights"] == note

    # Resuming an EMA checkpoint continues the same average.
    run(6, ema_decay=0.5)
    assert "has no EMA" not in capsys.readouterr().out
    raw5, raw6 = (weights(export_checkpoint(out, step=s, raw=True)) for s in (5, 6))
    ema6 = weights(out / "export")
    for name in trained:
        expected = 0.25 * ema4[name] + 0.25 * raw5[name] + 0.5 * raw6[name]
        torch.testing.assert_close(ema6[name], expected, rtol=1e-5, atol=1e-6)

    # Training never reads the average: the same steps without EMA (2, then resumed to 4: the
    # learning-rate schedule spans `steps`) reach the same weights.
    plain = tmp_path / "plain"
    for steps in (2, 4):
        train(load_train_config(None, overrides(dataset, plain, steps=steps, save_every=1)), progress=False)
    alone = weights(plain / "export")
    for name in raw[4]:
        torch.testing.assert_close(raw[4][name], alone[name], rtol=0, atol=0)
