"""The released model's preprocessing and numerics as options: images squashed to the square by
bilinear interpolation (checked against an independent implementation, in training samples and
in the served policy alike) and the joint attention in fp32."""

import numpy as np
import pytest
import torch

from lingvla.config import tiny_config
from lingvla.data.video import fit_image
from lingvla.model.lingvla import LingVLA


def frame(h=120, w=160, phase=0.0):
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([(128 + 100 * np.sin(x / 11 + c + phase) * np.cos(y / 13)).astype(np.uint8) for c in range(3)], -1)


def released_resize(image: np.ndarray, size: int) -> np.ndarray:
    """Independent reference: bilinear (antialiased when shrinking) to size x size, aspect ignored."""
    t = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    out = torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def test_squash_is_bilinear_to_the_square_and_pad_keeps_the_aspect():
    image = frame(480, 640)
    squashed = fit_image(image, 224, "squash")
    diff = np.abs(squashed.astype(int) - released_resize(image, 224).astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.2
    padded = fit_image(image, 224, "pad")
    assert padded[:20].max() == 0 and padded[-20:].max() == 0  # 640 wide -> 168 rows, black above and below
    assert squashed[:20].max() > 100
    with pytest.raises(ValueError, match="image resize 'crop'"):
        fit_image(image, 224, "crop")


def test_training_samples_and_the_served_policy_fit_frames_the_same_way(tmp_path):
    from lingvla import checkpoint_dir
    from lingvla.data.samples import RobotDataset, SampleSpec
    from lingvla.data.synthetic import write_synthetic_dataset
    from lingvla.serve.policy import Policy

    root = write_synthetic_dataset(tmp_path / "data", num_episodes=1, episode_length=4, image_hw=(48, 80))
    dataset = RobotDataset(root, "aloha",
                           spec=SampleSpec(action_dim=32, chunk_size=4, image_size=56, image_resize="squash"))
    native = dataset.source.camera_frame("observation.images.top", 0, 2)
    assert native.shape == (48, 80, 3)
    sample = dataset.sample(2)
    expected = fit_image(native, 56, "squash")
    # the loader scales the decoded YUV frame in one pass, a live frame is scaled from RGB: the
    # chroma rounding differs by a few levels, the geometry not at all
    decoded = sample["images"][0].permute(1, 2, 0).numpy().astype(int)
    assert np.abs(decoded - expected.astype(int)).mean() < 4
    assert np.abs(decoded - fit_image(native, 56, "pad").astype(int)).mean() > 10
    preloaded = RobotDataset(root, "aloha",
                             spec=SampleSpec(action_dim=32, chunk_size=4, image_size=56, image_resize="squash"),
                             preload_images=True)
    assert torch.equal(preloaded.sample(2)["images"], sample["images"])
    diff = np.abs(expected.astype(int) - released_resize(native, 56).astype(int))
    assert diff.max() <= 2

    directory = checkpoint_dir.write_random(tmp_path / "ckpt", tiny_config(image_size=56, image_resize="squash"))
    policy = Policy.from_checkpoint(directory)
    obs = {"images": {"top": native, "left_wrist": native, "right_wrist": native},
           "state": np.zeros(14, np.float32), "prompt": "pick up the cube"}
    batch = policy.batch_from_obs(obs)
    assert np.array_equal(batch["images"][0, 0].permute(1, 2, 0).numpy(), expected)
    with pytest.raises(ValueError, match="image_resize must be pad"):
        tiny_config(image_resize="squash", depth=dict(enabled=True))


def test_attention_fp32_upcasts_the_joint_attention(monkeypatch):
    from lingvla.model import mot

    seen = []
    real = mot.attend

    def recording(q, k, v, mask):
        seen.append((q.dtype, k.dtype, v.dtype))
        return real(q, k, v, mask)

    monkeypatch.setattr(mot, "attend", recording)
    batch = {"images": torch.randint(0, 256, (1, 3, 3, 56, 56), dtype=torch.uint8),
             "image_mask": torch.ones(1, 3, dtype=torch.bool), "prompt": ["open"],
             "state": torch.zeros(1, 32), "action_dim_mask": torch.ones(1, 32, dtype=torch.bool)}
    noise = torch.randn(1, 50, 32, generator=torch.Generator().manual_seed(0))
    outputs = {}
    for fp32 in (False, True):
        torch.manual_seed(0)
        model = LingVLA(tiny_config(image_size=56, attention_fp32=fp32)).eval().to(torch.bfloat16)
        seen.clear()
        outputs[fp32] = model.sample_actions(batch, noise=noise.to(torch.bfloat16), num_steps=2)
        assert seen and all(d == ((torch.float32,) * 3 if fp32 else (torch.bfloat16,) * 3) for d in seen)
        assert outputs[fp32].dtype == torch.bfloat16
    # the same weights: bf16 rounding apart, the same actions
    torch.testing.assert_close(outputs[True].float(), outputs[False].float(), atol=0.1, rtol=0.1)
    # in fp32 the option changes nothing
    torch.manual_seed(0)
    a = LingVLA(tiny_config(image_size=56)).eval().sample_actions(batch, noise=noise, num_steps=2)
    torch.manual_seed(0)
    b = LingVLA(tiny_config(image_size=56, attention_fp32=True)).eval().sample_actions(batch, noise=noise, num_steps=2)
    assert torch.equal(a, b)
