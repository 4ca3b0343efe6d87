"""Real Qwen2.5-VL pieces: our image preprocessing equals the official image processor, and a
local Qwen2.5-VL directory (a tiny random one saved by transformers) loads into the policy."""

import numpy as np
import pytest
import torch

from lingvla.config import tiny_config
from lingvla.model.backbone import ImageEncoder, patchify
from lingvla.model.lingvla import LingVLA, build_model
from lingvla.model.tokenizer import build_tiny_tokenizer


def test_pixel_patches_match_qwen_image_processor():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    processor = Qwen2VLImageProcessorPil(min_pixels=224 * 224, max_pixels=224 * 224)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    expected = processor(images=list(images), return_tensors="pt")
    assert expected["image_grid_thw"].tolist() == [[1, 16, 16], [1, 16, 16]]
    config = tiny_config()
    encoder = ImageEncoder(torch.nn.Identity(), config.vision, 224)
    ours = encoder.pixel_patches(torch.from_numpy(images).permute(0, 3, 1, 2), torch.float32)
    assert ours.shape == (512, 1176)
    torch.testing.assert_close(ours, expected["pixel_values"].float(), atol=1e-5, rtol=1e-5)


def test_patchify_keeps_merge_windows_contiguous():
    # Label every pixel with its patch's (row, col); the first 4 patches must be one 2x2 window.
    grid = 4
    rows = torch.arange(grid).repeat_interleave(14)
    cols = torch.arange(grid).repeat_interleave(14)
    image = torch.stack([rows[:, None].expand(56, 56), cols[None, :].expand(56, 56),
                         torch.zeros(56, 56, dtype=torch.long)])[None].float()
    patches = patchify(image, patch=14, merge=2, temporal=2)
    first = patches.view(16, 3, 2, 14, 14)[:, :2, 0, 0, 0]
    assert first[:4].tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]
    assert first[4:8].tolist() == [[0, 2], [0, 3], [1, 2], [1, 3]]


@pytest.fixture(scope="module")
def local_qwen(tmp_path_factory):
    """A tiny random Qwen2.5-VL written by transformers itself, with a tokenizer beside it."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    config = tiny_config()
    hf_config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
                         bos_token_id=None, eos_token_id=None, pad_token_id=0),
        vision_config=dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2,
                           out_hidden_size=64, fullatt_block_indexes=[1]),
    )
    torch.manual_seed(0)
    hf = Qwen2_5_VLForConditionalGeneration(hf_config).eval()
    path = tmp_path_factory.mktemp("qwen")
    hf.save_pretrained(path)
    build_tiny_tokenizer().save_pretrained(path)
    assert config.llm.hidden_size == 64
    return path, hf


def test_local_qwen_directory_loads_into_the_policy(local_qwen):
    path, hf = local_qwen
    model = build_model(tiny_config(vlm_path=str(path), tokenizer=None, vision=dict(depth=1)))
    # Sizes come from the checkpoint, not from the (deliberately wrong) vision depth we passed.
    assert model.config.vision.depth == 2
    inner = hf.model
    text = getattr(inner, "language_model", inner)
    torch.testing.assert_close(model.embed_tokens.weight, text.embed_tokens.weight)
    torch.testing.assert_close(model.layers[1].vlm.mlp.up_proj.weight, text.layers[1].mlp.up_proj.weight)
    torch.testing.assert_close(model.vlm_norm.weight, text.norm.weight)
    # The vision tower gives what transformers' own image-feature path gives for the same pixels.
    images = torch.randint(0, 256, (1, 3, 3, 224, 224), dtype=torch.uint8)
    ours = model.vision(images)
    patches = model.vision.pixel_patches(images.flatten(0, 1), torch.float32)
    grid = torch.tensor([[1, 16, 16]] * 3)
    with torch.no_grad():
        features = hf.model.get_image_features(pixel_values=patches, image_grid_thw=grid)
    features = features.pooler_output if hasattr(features, "pooler_output") else features
    features = torch.cat(list(features)) if isinstance(features, (list, tuple)) else features
    torch.testing.assert_close(ours.reshape(-1, 64), features.reshape(-1, 64), atol=1e-5, rtol=1e-5)
    # And the policy trains/samples on top of it.
    assert model.sample_actions({
        "images": images, "image_mask": torch.ones(1, 3, dtype=torch.bool), "prompt": ["open"],
        "state": torch.zeros(1, 32), "action_dim_mask": torch.ones(1, 32, dtype=torch.bool),
    }).shape == (1, 50, 32)


def test_missing_local_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json|does not exist"):
        build_model(tiny_config(vlm_path=str(tmp_path / "nowhere"), tokenizer=None))
    with pytest.raises(FileNotFoundError, match="tokenizer directory"):
        LingVLA(tiny_config(tokenizer=str(tmp_path / "nothing")))
