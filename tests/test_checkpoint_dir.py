"""The inference directory (lingvla/checkpoint_dir.py): one writer and one reader for training's
export, `lingvla export`, save_pretrained, the policy, the server and the evaluator."""
import json

import pytest
import torch

from conftest import make_tiny_checkpoint, tiny_model
from lingvla import checkpoint_dir


def test_policy_directory_round_trip_and_normalization_is_explicit(tmp_path):
    from lingvla.serve.policy import Policy

    directory = make_tiny_checkpoint(tmp_path / "export")
    names = sorted(p.name for p in directory.iterdir())
    assert names == ["config.yaml", "embodiments.yaml", "model.safetensors", "norm_stats.json", "policy.json",
                     "tokenizer", "train_info.json"]
    assert json.loads((directory / "policy.json").read_text()) == {"normalization": "quantile"}
    assert Policy.from_checkpoint(directory).normalizer.mode == "quantile"
    # mean/std said by policy.json, whatever the (human-facing) training info says
    (directory / "policy.json").write_text(json.dumps({"normalization": "mean_std"}))
    (directory / "train_info.json").write_text(json.dumps({"train_config": {"data": {"normalization": "quantile"}}}))
    assert Policy.from_checkpoint(directory).normalizer.mode == "mean_std"
    (directory / "policy.json").write_text(json.dumps({"normalization": "minmax"}))
    with pytest.raises(ValueError, match="minmax"):
        Policy.from_checkpoint(directory)


def test_directories_written_before_policy_json_read_the_training_config(tmp_path):
    directory = make_tiny_checkpoint(tmp_path / "export")
    (directory / "policy.json").unlink()
    assert checkpoint_dir.read_policy_files(directory).normalization == "quantile"
    (directory / "train_info.json").write_text(json.dumps({"train_config": {"data": {"normalization": "mean_std"}}}))
    assert checkpoint_dir.read_policy_files(directory).normalization == "mean_std"
    (directory / "embodiments.yaml").unlink()
    with pytest.raises(FileNotFoundError, match="embodiments.yaml is missing"):
        checkpoint_dir.read_policy_files(directory)


def test_write_replaces_the_whole_directory_and_checks_its_parts(tmp_path):
    model = tiny_model(0)
    out = tmp_path / "net"
    out.mkdir()
    (out / "stale.txt").write_text("from before")
    model.save_pretrained(out)
    assert not (out / "stale.txt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(checkpoint_dir.TMP_PREFIX)]
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "model.safetensors", "tokenizer"]
    loaded = type(model).from_pretrained(out)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    tok = model.prompt_tokenizer.tokenizer
    with pytest.raises(ValueError, match="together"):
        checkpoint_dir.write(tmp_path / "bad", model.state_dict(), model.config, tok, norm_stats={})
    with pytest.raises(ValueError, match="normalization"):
        checkpoint_dir.write(tmp_path / "bad", model.state_dict(), model.config, tok, norm_stats={},
                             embodiments={}, normalization="minmax")
    assert not (tmp_path / "bad").exists()


def test_a_tensor_too_many_or_too_few_is_named(tmp_path):
    model = tiny_model(0)
    tok = model.prompt_tokenizer.tokenizer
    state = dict(model.state_dict())
    state["extra.weight"] = torch.zeros(2)
    checkpoint_dir.write(tmp_path / "extra", state, model.config, tok)
    with pytest.raises(ValueError, match="unexpected.*extra.weight"):
        checkpoint_dir.load_model(tmp_path / "extra")
    state.pop("extra.weight")
    dropped = next(iter(state))
    state.pop(dropped)
    checkpoint_dir.write(tmp_path / "short", state, model.config, tok)
    with pytest.raises(ValueError, match="missing"):
        checkpoint_dir.load_model(tmp_path / "short")
