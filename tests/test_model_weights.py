"""Starting from existing weights and writing the released layout: the released names of every 4B
tensor (meta device), released -> ours -> released bit-identical, strict loading that names every
missing, unexpected and misshaped tensor, a Qwen2.5-VL directory for the VLM alone, and training
and export through the config and the CLI."""

import json
import re

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from lingvla.config import preset, tiny_config
from lingvla.model import released
from lingvla.model.lingvla import LingVLA, empty_parameters
from lingvla.model.tokenizer import build_tiny_tokenizer
from lingvla.model.weights import WeightsMismatchError, detect_kind, init_from
from lingvla.train.config import load_train_config
from lingvla.train.loop import export_checkpoint, train

# The released names as documented for the 4B checkpoint (P = model.qwenvl_with_expert), written
# independently of the renamer under test.
RELEASED_PATTERNS = [
    r"model\.qwenvl_with_expert\.qwenvl\.visual\.(patch_embed|blocks\.\d+|merger)\..+",
    r"model\.qwenvl_with_expert\.qwenvl\.model\.embed_tokens\.weight",
    r"model\.qwenvl_with_expert\.qwenvl\.model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj|"
    r"input_layernorm|post_attention_layernorm)\.(weight|bias)",
    r"model\.qwenvl_with_expert\.qwenvl\.model\.norm\.weight",
    r"model\.qwenvl_with_expert\.qwen_expert\.model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj|"
    r"(input|post_attention)_layernorm(\.(gamma|beta))?)\.(weight|bias)",
    r"model\.qwenvl_with_expert\.qwen_expert\.model\.norm\.weight",
    r"model\.(state_proj|action_in_proj|action_out_proj|action_time_mlp_in|action_time_mlp_out)\.(weight|bias)",
]


def tiny_model(seed, **overrides):
    torch.manual_seed(seed)
    return LingVLA(tiny_config(**overrides))


def released_dir(tmp_path, model, name="released", shard_bytes=150_000, dtype=None, **kwargs):
    state = model.state_dict()
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    return released.write_released(tmp_path / name, state, model.config, shard_bytes=shard_bytes, **kwargs)


def read_all(directory):
    out = {}
    for path in sorted(directory.glob("model-*.safetensors")):
        out.update(load_file(str(path)))
    return out


def test_every_4b_tensor_has_one_released_name_and_back():
    with empty_parameters():
        model = LingVLA(preset("lingbot-4b"), tokenizer=build_tiny_tokenizer())
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    names = {ours: released.ours_to_released(ours) for ours in shapes}
    assert len(names) == 1555
    assert None not in names.values() and len(set(names.values())) == 1555
    for ours, key in names.items():
        assert released.released_to_ours(key) == ours
        assert any(re.fullmatch(p, key) for p in RELEASED_PATTERNS), key
    assert shapes[released.released_to_ours("model.state_proj.weight")] == (768, 75)
    assert shapes[released.released_to_ours(
        "model.qwenvl_with_expert.qwen_expert.model.layers.35.post_attention_layernorm.gamma.weight")] == (768, 768)
    # Our own depth head has no released names; built with the released head's structure, its 19
    # tensors take the released names and shapes, and only the never-saved queries have none.
    with empty_parameters():
        depth = LingVLA(preset("lingbot-4b", depth=dict(enabled=True)), tokenizer=build_tiny_tokenizer())
    extra = [n for n in depth.state_dict() if n not in shapes]
    assert extra and all(released.ours_to_released(n) is None for n in extra)
    with empty_parameters():
        depth = LingVLA(preset("lingbot-4b", depth=dict(enabled=True, head="released")),
                        tokenizer=build_tiny_tokenizer())
    extra = {n: tuple(v.shape) for n, v in depth.state_dict().items() if n not in shapes}
    assert len(extra) == 20 and released.ours_to_released("depth_embeddings") is None
    head = {released.ours_to_released(n): s for n, s in extra.items() if n != "depth_embeddings"}
    P = "model.depth_align_head.projector."
    assert all(k.startswith(P) for k in head) and len(head) == 19
    expected = {"proj_in1.weight": (2048, 2048), "proj_in2.weight": (2048, 2048), "proj_out.weight": (1024, 2048),
                "norm_out.weight": (1024,), "layers.0.0.to_q.weight": (128, 2048),
                "layers.0.0.to_kv.weight": (256, 2048), "layers.0.0.to_out.weight": (2048, 128),
                "layers.0.1.1.weight": (2048, 2048), "layers.0.1.3.weight": (2048, 2048)}
    for key, shape in expected.items():
        assert head[P + key] == shape, key
    assert all(released.released_to_ours(k) in extra for k in head)


def test_released_round_trip_is_bit_identical(tmp_path):
    source = tiny_model(0)
    first = released_dir(tmp_path, source, "first", dtype=torch.bfloat16)
    index = json.loads((first / released.INDEX_NAME).read_text())
    shards = sorted(p.name for p in first.glob("model-*.safetensors"))
    assert len(shards) > 1 and sorted(set(index["weight_map"].values())) == shards
    config = json.loads((first / released.CONFIG_NAME).read_text())
    assert config["type"] == "pi0" and config["max_action_dim"] == 32 and config["chunk_size"] == 50
    assert detect_kind(first) == "released"

    target = tiny_model(1)
    report = init_from(target, first)
    assert report.loaded == len(target.state_dict()) and not report.kept and not report.dropped
    again = released.write_released(tmp_path / "again", {k: v.to(torch.bfloat16) for k, v in
                                                          target.state_dict().items()}, target.config,
                                    shard_bytes=150_000)
    a, b = read_all(first), read_all(again)
    assert a.keys() == b.keys() == set(index["weight_map"])
    for key in a:
        assert a[key].dtype == b[key].dtype == torch.bfloat16
        assert torch.equal(a[key].view(torch.int16), b[key].view(torch.int16)), key
    # fp32 weights arrive exactly, and the loaded model acts as the source does.
    exact = released_dir(tmp_path, source, "fp32")
    target = tiny_model(2)
    init_from(target, exact)
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_strict_loading_names_what_does_not_fit(tmp_path):
    source = tiny_model(0)
    good = released_dir(tmp_path, source, shard_bytes=10**9)
    shard = next(good.glob("model-*.safetensors"))
    tensors = load_file(str(shard))

    def variant(name, change):
        state = dict(tensors)
        change(state)
        directory = tmp_path / name
        directory.mkdir()
        save_file(state, str(directory / shard.name))
        index = {"metadata": {}, "weight_map": {k: shard.name for k in state}}
        (directory / released.INDEX_NAME).write_text(json.dumps(index))
        (directory / released.CONFIG_NAME).write_text((good / released.CONFIG_NAME).read_text())
        return directory

    extra = variant("extra", lambda s: s.__setitem__("model.qwenvl_with_expert.qwenvl.lm_head.weight",
                                                     torch.zeros(2, 2)))
    with pytest.raises(WeightsMismatchError, match=r"no place in the model: \['model.qwenvl_with_expert.qwenvl.lm_head"):
        init_from(tiny_model(1), extra)
    missing = variant("missing", lambda s: s.pop("model.state_proj.bias"))
    with pytest.raises(WeightsMismatchError, match=r"not in the checkpoint: \['state_proj.bias'\]"):
        init_from(tiny_model(1), missing)
    shaped = variant("shaped", lambda s: s.__setitem__("model.state_proj.weight", torch.zeros(3, 5)))
    with pytest.raises(WeightsMismatchError, match=r"model.state_proj.weight: \(3, 5\) in the checkpoint, \(32, 32\)"):
        init_from(tiny_model(1), shaped)
    # Dropping on purpose: the tensor is not read, the model's keeps its initialisation.
    target = tiny_model(1)
    before = target.state_proj.weight.clone()
    report = init_from(target, shaped, drop=["model.state_proj.weight"])
    assert report.dropped == ["model.state_proj.weight"] and report.kept == ["state_proj.weight"]
    assert torch.equal(target.state_proj.weight, before)
    assert torch.equal(target.state_proj.bias, source.state_proj.bias)

    # the released depth head loads into a model built with its structure
    torch.manual_seed(8)
    with_head = LingVLA(tiny_config(depth=dict(enabled=True, head="released")))
    head_dir = released.write_released(tmp_path / "with_head", with_head.state_dict(), with_head.config,
                                       drop=("depth_embeddings",))
    target = tiny_model(1, depth=dict(enabled=True, head="released"))
    report = init_from(target, head_dir)
    assert report.kept == ["depth_embeddings"] and not report.dropped
    for key, value in with_head.state_dict().items():
        if key != "depth_embeddings":
            assert torch.equal(target.state_dict()[key], value), key

    head = variant("depth_head", lambda s: s.update({
        "model.depth_align_head.projector.proj_out.weight": torch.zeros(4, 4),
        "model.depth_align_head.projector.norm_out.bias": torch.zeros(4)}))
    with pytest.raises(WeightsMismatchError, match="depth.head=released to load it"):
        init_from(tiny_model(1), head)
    report = init_from(tiny_model(1), head, drop=[released.DEPTH_HEAD_PREFIX])
    assert len(report.dropped) == 2 and report.loaded == len(tensors)

    # With our depth head on: the released query embeddings are never saved (kept, with a note);
    # our head has no released counterpart and must be named.
    with pytest.raises(WeightsMismatchError, match="not in the checkpoint: \\['depth_align_head"):
        init_from(tiny_model(1, depth=dict(enabled=True)), good)
    report = init_from(tiny_model(1, depth=dict(enabled=True)), good, drop=["depth_align_head."])
    assert "depth_embeddings" in report.kept and any("do not save" in n for n in report.notes)

    config = json.loads((good / released.CONFIG_NAME).read_text())
    config["max_action_dim"] = 75
    (good / released.CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(WeightsMismatchError, match="max_action_dim=75, but model.action_dim=32"):
        init_from(tiny_model(1), good)


def test_index_naming_absent_shards_and_unknown_directories_are_errors(tmp_path):
    directory = released_dir(tmp_path, tiny_model(0))
    next(directory.glob("model-00002-*.safetensors")).unlink()
    with pytest.raises(FileNotFoundError, match="names shards that are not in"):
        init_from(tiny_model(1), directory)
    with pytest.raises(ValueError, match="not a lingvla checkpoint"):
        init_from(tiny_model(1), tmp_path)
    with pytest.raises(FileNotFoundError, match="no such directory"):
        init_from(tiny_model(1), tmp_path / "nowhere")


def test_lingvla_directory_and_qwen_directory(tmp_path):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    source = tiny_model(0)
    source.save_pretrained(tmp_path / "ours")
    target = tiny_model(1)
    report = init_from(target, tmp_path / "ours")
    assert report.kind == "lingvla" and report.loaded == len(source.state_dict())
    assert all(torch.equal(target.state_dict()[k], v) for k, v in source.state_dict().items())

    config = tiny_config()
    hf_config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=config.llm.vocab_size, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=config.llm.num_layers, num_attention_heads=4, num_key_value_heads=2,
                         rms_norm_eps=1e-6, bos_token_id=None, eos_token_id=None, pad_token_id=0),
        vision_config=dict(depth=config.vision.depth, hidden_size=config.vision.hidden_size,
                           intermediate_size=config.vision.intermediate_size, num_heads=config.vision.num_heads,
                           out_hidden_size=64, fullatt_block_indexes=[1]))
    torch.manual_seed(5)
    hf = Qwen2_5_VLForConditionalGeneration(hf_config)
    hf.save_pretrained(tmp_path / "qwen")
    target = tiny_model(1)
    vlm = ("vision.", "embed_tokens.", "vlm_norm.")
    expert_before = {k: v.clone() for k, v in target.state_dict().items()
                     if not k.startswith(vlm) and ".vlm." not in k}
    report = init_from(target, tmp_path / "qwen")
    assert report.kind == "qwen2_5_vl" and set(report.dropped) <= {"lm_head.weight"}
    assert report.loaded == len(target.state_dict()) - len(expert_before)
    text = getattr(hf.model, "language_model", hf.model)
    assert torch.equal(target.layers[1].vlm.mlp.up_proj.weight, text.layers[1].mlp.up_proj.weight)
    assert torch.equal(target.embed_tokens.weight, text.embed_tokens.weight)
    visual = getattr(hf.model, "visual", None) or hf.visual
    assert torch.equal(target.vision.visual.patch_embed.proj.weight, visual.patch_embed.proj.weight)
    for key, value in expert_before.items():
        assert torch.equal(target.state_dict()[key], value), key
    assert "layers.N.expert" in report.to_dict()["kept"] and "state_proj" in report.to_dict()["kept"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from lingvla.data.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("weights_data") / "aloha"
    return write_synthetic_dataset(root, num_episodes=2, episode_length=30, image_hw=(56, 56))


def released_split_stats(dataset, path):
    """The dataset's stats in the released RoboTwin layout: 14-D split into arm (12) and effector (2)."""
    from lingvla.data.embodiments import get_embodiment
    from lingvla.data.stats import compute_norm_stats

    stats = compute_norm_stats([{"path": str(dataset)}], get_embodiment("aloha"))
    arm, eff = [*range(6), *range(7, 13)], [6, 13]
    table = {}
    for ours, prefix in (("state", "observation.state"), ("action", "action")):
        for part, idx in (("arm", arm), ("effector", eff)):
            table[f"{prefix}.{part}.position"] = {k: [stats[ours][k][i] for i in idx]
                                                  for k in ("mean", "std", "q01", "q99", "q02", "q98")}
    path.write_text(json.dumps({"norm_stats": table, "count": stats["count"]}))
    return stats


def test_training_starts_from_released_weights_and_exports_them_back(dataset, tmp_path, capsys):
    from lingvla.data.normalize import Normalizer

    source = tiny_model(3, image_size=56)
    start = released_dir(tmp_path, source, "start")
    stats = released_split_stats(dataset, tmp_path / "robotwin_stats.json")
    out = tmp_path / "run"
    config = load_train_config(None, [
        "model.preset=tiny", "model.image_size=56", "batch_size=2", "steps=2", f"output_dir={out}",
        "data.num_workers=0", "save_every=2", "tensorboard=false", "optim.lr=0.0", "optim.warmup_steps=0",
        f"data.datasets=[{{path: {dataset}, embodiment: aloha}}]", f"init_from={start}",
        f"data.norm_stats={tmp_path / 'robotwin_stats.json'}"])
    summary = train(config, progress=False)
    printed = capsys.readouterr().out
    assert "init_from " in printed and "(released): " in printed
    assert ("model.image_resize=pad (released: squash), model.attention_fp32=False (released: True), "
            "data.normalization=quantile (released: bounds_99_woclip)") in printed
    # the released stats file was read as one robot's, joined, and shipped under the embodiment
    shipped = Normalizer.from_file(out / "export" / "norm_stats.json", "aloha")
    expected = Normalizer.from_file({"norm_stats": {"aloha": stats}}, "aloha")
    for key in ("state", "action"):
        assert shipped.center[key] == pytest.approx(expected.center[key])
        assert shipped.scale[key] == pytest.approx(expected.scale[key])
    assert summary["init_from"]["kind"] == "released" and summary["init_from"]["loaded"] == len(source.state_dict())
    trained = LingVLA.from_pretrained(out / "export")
    for key, value in source.state_dict().items():  # lr 0: the run's weights are the released ones
        assert torch.equal(trained.state_dict()[key], value), key

    back = export_checkpoint(out, layout="released")
    assert back.name.endswith("_released")
    a, b = read_all(start), read_all(back)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="layout="):
        export_checkpoint(out, layout="onnx")


def test_import_a_released_checkpoint_as_a_policy(dataset, tmp_path, capsys):
    """`lingvla import`: released weights + a released stats file + an embodiment -> a policy
    directory that serves, with the released preprocessing when config.json gives no lingvla sizes."""
    from lingvla.cli import main
    from lingvla.serve.policy import Policy

    source = tiny_model(5, image_size=56)
    directory = released_dir(tmp_path, source, "hf_ckpt")
    released_split_stats(dataset, tmp_path / "robotwin_50.json")
    config = json.loads((directory / released.CONFIG_NAME).read_text())
    del config["lingvla"]  # as the release writes it: sizes from the preset and config.json
    (directory / released.CONFIG_NAME).write_text(json.dumps(config))
    args = ["import", str(directory), "--out", str(tmp_path / "policy"), "--norm-stats",
            str(tmp_path / "robotwin_50.json"), "--embodiment", "aloha", "--preset", "tiny", "--tokenizer", "tiny"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["init_from"]["kind"] == "released"
    policy = Policy.from_checkpoint(tmp_path / "policy")
    assert policy.config.image_resize == "squash" and policy.config.attention_fp32
    assert policy.normalizer.mode == "bounds_99_woclip" and policy.config.action_dim == 32
    for key, value in source.state_dict().items():
        assert torch.equal(policy.model.state_dict()[key], value), key
    frame = np.zeros((48, 64, 3), np.uint8)
    out = policy.infer({"images": {"cam_high": frame, "cam_left_wrist": frame, "cam_right_wrist": frame},
                        "state": np.zeros(14, np.float32), "prompt": "open"})
    assert out["actions"].shape == (50, 14)
    assert main([*args[:3], str(tmp_path / "other"), *args[4:6], "--embodiment", "nobody"]) == 2
    assert "unknown embodiment 'nobody'" in capsys.readouterr().out
    assert main(["import", str(tmp_path), "--out", str(tmp_path / "x"), "--norm-stats", "s", "--embodiment", "aloha"]) == 2
    assert "not a released LingBot-VLA checkpoint" in capsys.readouterr().out
