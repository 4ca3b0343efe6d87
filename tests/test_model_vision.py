"""The fixed-grid vision forward against transformers' own Qwen2.5-VL vision forward: same weights,
same tokens, for equal windows, unequal windows (mask path) and a single window; gradients too."""

import copy

import pytest
import torch

from lingvla.config import VisionConfig
from lingvla.model.backbone import ImageEncoder, hf_vision_config
from lingvla.model.vision import grid_layout


def encoders(image_size, depth=4, seed=0):
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

    vision = VisionConfig(depth=depth, hidden_size=64, intermediate_size=96, num_heads=4,
                          fullatt_block_indexes=[1, depth - 1])
    torch.manual_seed(seed)
    visual = Qwen2_5_VisionTransformerPretrainedModel(hf_vision_config(vision, 48, 0.02))
    reference = ImageEncoder(copy.deepcopy(visual), vision, image_size, fixed_grid=False)
    fast = ImageEncoder(visual, vision, image_size)
    assert fast.fixed is not None and reference.fixed is None
    return fast, reference


@pytest.mark.parametrize("image_size, windows", [(224, "4 equal"), (168, "4 unequal"), (56, "1")])
def test_fixed_grid_forward_equals_transformers(image_size, windows):
    fast, reference = encoders(image_size)
    layout = fast.fixed.layout(fast.visual, torch.device("cpu"))
    assert (layout.window_len is None) == (windows == "4 unequal")
    images = torch.randint(0, 256, (2, 3, 3, image_size, image_size), generator=torch.Generator().manual_seed(1),
                           dtype=torch.uint8)
    got, want = fast(images), reference(images)
    assert got.shape == want.shape == (2, 3 * (image_size // 28) ** 2, 48)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)
    # Images are independent: one camera's pixels change only its own tokens.
    other = images.clone()
    other[1, 2] = 255 - other[1, 2]
    changed = (fast(other) - got).abs().amax(-1) > 1e-6
    per_image = (image_size // 28) ** 2
    assert changed[1, 2 * per_image:].all() and not changed[0].any() and not changed[1, :2 * per_image].any()


def test_fixed_grid_gradients_equal_transformers():
    fast, reference = encoders(224, depth=2)
    images = torch.randint(0, 256, (1, 2, 3, 224, 224), generator=torch.Generator().manual_seed(2),
                           dtype=torch.uint8)
    for encoder in (fast, reference):
        encoder(images).square().sum().backward()
    for (name, a), (_, b) in zip(fast.named_parameters(), reference.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-4, rtol=1e-4, msg=name)


def test_switching_back_to_the_transformers_forward():
    fast, reference = encoders(224, depth=2)
    images = torch.randint(0, 256, (1, 2, 3, 224, 224), dtype=torch.uint8)
    fixed_tokens = fast(images)
    fast.use_fixed_grid(False)
    assert fast.fixed is None
    torch.testing.assert_close(fast(images), reference(images), atol=0, rtol=0)
    fast.use_fixed_grid(True)
    torch.testing.assert_close(fast(images), fixed_tokens, atol=0, rtol=0)


def test_grid_layout_orders_windows_row_major():
    layout = grid_layout(grid=8, merge=2, window_units=2, head_dim=8)
    # 4 x 4 units in 2 x 2 windows: window 0 holds units 0, 1, 4, 5; window 1 holds 2, 3, 6, 7 ...
    assert layout.unit_order.tolist() == [0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15]
    assert layout.window_len == 16 and layout.window_mask is None
    assert torch.equal(layout.unit_order[layout.restore], torch.arange(16))
    uneven = grid_layout(grid=12, merge=2, window_units=4, head_dim=8)
    assert uneven.window_len is None and uneven.window_mask.shape == (144, 144)
    assert uneven.window_mask.sum(1).unique().tolist() == [16, 32, 64]
