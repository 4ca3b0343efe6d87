"""Configs, presets, the tokenizer, and the 4B model's exact shape (on the meta device)."""

import pytest
import torch

from lingvla.config import ModelConfig, preset, tiny_config
from lingvla.model.lingvla import LingVLA, empty_parameters
from lingvla.model.released import released_to_ours
from lingvla.model.tokenizer import TINY_VOCAB_SIZE, PromptTokenizer, build_tiny_tokenizer


def test_yaml_round_trip(tmp_path):
    for name in ("tiny", "lingbot-4b"):
        config = preset(name)
        config.save_yaml(tmp_path / f"{name}.yaml")
        assert ModelConfig.load_yaml(tmp_path / f"{name}.yaml") == config
    custom = tiny_config(action_dim=20, loss="l1", time_sampling="uniform", image_size=112)
    custom.save_yaml(tmp_path / "custom.yaml")
    assert ModelConfig.load_yaml(tmp_path / "custom.yaml") == custom


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="image_size=100"):
        tiny_config(image_size=100)
    with pytest.raises(ValueError, match="loss"):
        tiny_config(loss="huber")
    with pytest.raises(ValueError, match="unknown ModelConfig field"):
        ModelConfig.from_dict({"action_dimm": 3})
    with pytest.raises(ValueError, match="unknown preset"):
        preset("huge")


def test_tiny_tokenizer_is_deterministic_and_small():
    a, b = build_tiny_tokenizer(), build_tiny_tokenizer()
    assert len(a) <= TINY_VOCAB_SIZE
    text = "<bos>pick up the red cube and insert the peg\n"
    assert a.encode(text) == b.encode(text)
    assert len(a.encode(" cube")) == 1  # task words are whole tokens
    assert a.decode(a.encode("zebra-42 \u00fc")) == "zebra-42 \u00fc"  # anything still encodes
    tok = PromptTokenizer(a, 16, TINY_VOCAB_SIZE)
    ids, mask = tok(["pick up the cube", "open"])
    assert ids.shape == mask.shape == (2, 16)
    assert mask[0].sum() > mask[1].sum() > 0
    assert (ids[~mask] == tok.pad_id).all()
    with pytest.raises(ValueError, match="max_token_len=16"):
        tok(["a very long prompt that will not fit into sixteen tokens at all, no way"])


def test_lingbot_4b_matches_the_released_checkpoint_layout():
    with empty_parameters():
        model = LingVLA(preset("lingbot-4b"), tokenizer=build_tiny_tokenizer())
    state = model.state_dict()
    assert len(state) == 1555
    assert abs(sum(v.numel() for v in state.values()) / 1e9 - 4.197) < 0.001
    released = {
        "model.state_proj.weight": (768, 75),
        "model.action_in_proj.weight": (768, 75),
        "model.action_out_proj.weight": (75, 768),
        "model.action_time_mlp_in.weight": (768, 1536),
        "model.action_time_mlp_out.weight": (768, 768),
        "model.qwenvl_with_expert.qwen_expert.model.layers.35.input_layernorm.weight": (768,),
        "model.qwenvl_with_expert.qwen_expert.model.layers.0.input_layernorm.gamma.weight": (768, 768),
        "model.qwenvl_with_expert.qwen_expert.model.layers.0.post_attention_layernorm.beta.bias": (768,),
        "model.qwenvl_with_expert.qwen_expert.model.layers.0.self_attn.q_proj.weight": (2048, 768),
        "model.qwenvl_with_expert.qwen_expert.model.layers.0.self_attn.k_proj.bias": (256,),
        "model.qwenvl_with_expert.qwen_expert.model.layers.0.self_attn.o_proj.weight": (768, 2048),
        "model.qwenvl_with_expert.qwen_expert.model.layers.0.mlp.gate_proj.weight": (2752, 768),
        "model.qwenvl_with_expert.qwen_expert.model.norm.weight": (768,),
        "model.qwenvl_with_expert.qwenvl.model.embed_tokens.weight": (151936, 2048),
        "model.qwenvl_with_expert.qwenvl.model.layers.7.self_attn.q_proj.bias": (2048,),
        "model.qwenvl_with_expert.qwenvl.model.layers.7.mlp.down_proj.weight": (2048, 11008),
        "model.qwenvl_with_expert.qwenvl.model.norm.weight": (2048,),
        "model.qwenvl_with_expert.qwenvl.visual.blocks.31.attn.qkv.weight": (3840, 1280),
        "model.qwenvl_with_expert.qwenvl.visual.merger.mlp.2.weight": (2048, 5120),
    }
    for key, shape in released.items():
        ours = released_to_ours(key)
        assert ours in state, key
        assert tuple(state[ours].shape) == shape, key
    assert released_to_ours("lm_head.weight") is None
    # Parameters were never allocated, but buffers (RoPE tables, pixel mean/std) are real.
    assert all(p.is_meta for p in model.parameters())
    assert not any(b.is_meta for b in model.buffers())


def test_tiny_preset_is_small():
    torch.manual_seed(0)
    model = LingVLA(tiny_config())
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    assert model.config.tokens_per_image == 64


def test_key_value_overrides():
    from lingvla.config import apply_overrides

    data = tiny_config().to_dict()
    apply_overrides(data, ["llm.num_layers=4", "loss=l1", "vision.fullatt_block_indexes=[0, 1]"])
    config = ModelConfig.from_dict(data)
    assert config.llm.num_layers == 4 and config.loss == "l1"
    assert config.vision.fullatt_block_indexes == [0, 1]
    with pytest.raises(ValueError, match="unknown key 'num_layer'"):
        apply_overrides(data, ["llm.num_layer=3"])
    with pytest.raises(ValueError, match="key=value"):
        apply_overrides(data, ["loss"])
