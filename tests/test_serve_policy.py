"""Policy: checkpoint directory -> robot-unit chunks, with the same preprocessing as training."""

import numpy as np
import pytest
import torch

from lingvla.data.video import resize_with_pad
from lingvla.serve.policy import ObservationError, Policy


def observation(seed=0, size=(48, 64)):
    rng = np.random.default_rng(seed)
    return {"images": {cam: rng.integers(0, 256, (*size, 3), dtype=np.uint8)
                       for cam in ("top", "left_wrist", "right_wrist")},
            "state": rng.uniform(-1, 1, 14).astype(np.float32), "prompt": "transfer the cube"}


@pytest.fixture(scope="module")
def policy(tiny_checkpoint):
    return Policy.from_checkpoint(tiny_checkpoint)


def noise():
    return torch.randn(1, 50, 32, generator=torch.Generator().manual_seed(3))


def test_infer_equals_the_model_on_a_hand_built_batch(policy):
    obs = observation()
    out = policy.infer(obs, noise=noise())["actions"]
    assert out.dtype == np.float32 and out.shape == (50, 14)
    # The same thing by hand: resize-with-pad, normalize, pad, sample, cut, un-normalize.
    norm = policy.normalizer
    size = policy.config.image_size
    images = np.stack([resize_with_pad(obs["images"][c], size).transpose(2, 0, 1)
                       for c in ("top", "left_wrist", "right_wrist")])[None]
    state = np.zeros((1, 32), np.float32)
    state[0, :14] = norm.normalize_state(obs["state"])
    mask = torch.zeros(1, 32, dtype=torch.bool)
    mask[0, :14] = True
    batch = {"images": torch.from_numpy(images), "image_mask": torch.ones(1, 3, dtype=torch.bool),
             "prompt": [obs["prompt"]], "state": torch.from_numpy(state), "action_dim_mask": mask}
    chunk = policy.model.sample_actions(batch, noise=noise())[0, :, :14].numpy()
    np.testing.assert_allclose(out, norm.unnormalize_action(chunk), rtol=1e-5, atol=1e-5)
    # Un-normalization really maps back to robot units (q01..q99 from [-1, 1]).
    lo = np.asarray(norm.unnormalize_action(-np.ones(14, np.float32)))
    assert np.allclose(lo, policy.normalizer.center["action"] - policy.normalizer.scale["action"])


def test_graphed_policy_gives_the_same_actions(policy, tiny_checkpoint):
    """graphed=True samples through GraphedSampler (CUDA graphs on a GPU, its buffer path here)."""
    graphed = Policy.from_checkpoint(tiny_checkpoint, graphed=True)
    assert graphed.sampler is not None and graphed.config.attn_backend == "sdpa"
    for seed in (0, 1):
        np.testing.assert_allclose(graphed.infer(observation(seed), noise=noise())["actions"],
                                   policy.infer(observation(seed), noise=noise())["actions"], rtol=1e-5, atol=1e-5)


def test_warmup_fills_the_shapes_every_request_uses(tiny_checkpoint):
    """Policy.warmup runs one chunk on a blank observation; a graphed policy keeps one input slot
    for it and for real requests (other prompts, fewer cameras, other image sizes)."""
    graphed = Policy.from_checkpoint(tiny_checkpoint, graphed=True, allow_missing_cameras=True)
    assert graphed.warmup() > 0 and len(graphed.sampler.slots) == 1
    obs = observation(3)
    obs["prompt"] = "a different and longer prompt than the warm-up one"
    obs["images"] = {"top": np.zeros((30, 70, 3), np.uint8)}
    graphed.infer(obs)
    graphed.infer(observation(4))
    assert len(graphed.sampler.slots) == 1


def test_serve_refuses_cuda_graphs_on_cpu(tiny_checkpoint):
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "lingvla.cli", "serve", str(tiny_checkpoint), "--cuda-graphs"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "--cuda-graphs needs a CUDA --device" in run.stderr
    run = subprocess.run([sys.executable, "-m", "lingvla.cli", "serve", str(tiny_checkpoint), "--compile"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "--compile needs --cuda-graphs" in run.stderr
    with pytest.raises(ValueError, match="compile_layers needs graphed=True"):
        Policy.from_checkpoint(tiny_checkpoint, compile_layers=True)


def test_camera_names_layouts_and_missing_cameras(policy):
    obs = observation()
    ref = policy.infer(obs, noise=noise())["actions"]
    renamed = dict(obs, images={"head": obs["images"]["top"],
                                "observation.images.left_wrist": obs["images"]["left_wrist"],
                                "right_wrist": obs["images"]["right_wrist"].transpose(2, 0, 1)})
    np.testing.assert_array_equal(policy.infer(renamed, noise=noise())["actions"], ref)
    partial = dict(obs, images={"top": obs["images"]["top"]})
    with pytest.raises(ObservationError, match=r"lacks camera\(s\) \['left_wrist', 'right_wrist'\]"):
        policy.infer(partial)
    policy.allow_missing_cameras = True  # explicitly: serve with the slots masked out
    try:
        batch = policy.batch_from_obs(partial)
        assert batch["image_mask"].tolist() == [[True, False, False]]
        assert not np.allclose(policy.infer(partial, noise=noise())["actions"], ref)
    finally:
        policy.allow_missing_cameras = False
    meta = policy.metadata
    assert meta["action_dim"] == 14 and meta["action_horizon"] == 50
    assert "top" in meta["cameras"]["head"]


@pytest.mark.parametrize("change, message", [
    (lambda o: o["images"].update(front=o["images"]["top"]), "unknown camera 'front'"),
    (lambda o: o["images"].update(top=o["images"]["top"].astype(np.float32)), r"images\['top'\] must be uint8"),
    (lambda o: o["images"].update(top=np.zeros((8, 8), np.uint8)), "HxWx3"),
    (lambda o: o.update(state=np.zeros(7, np.float32)), "state_dim=14"),
    (lambda o: o.update(state=np.full(14, np.nan, np.float32)), "NaN"),
    (lambda o: o.update(state=np.array(["a"] * 14)), "numeric"),
    (lambda o: o.pop("prompt"), "missing"),
    (lambda o: o.update(prompt=3), "prompt must be a str"),
    (lambda o: o.update(prompt="word " * 200), "max_token_len"),
    (lambda o: o.update(images={}), "non-empty"),
])
def test_bad_observations_are_clear_errors(policy, change, message):
    obs = observation()
    change(obs)
    with pytest.raises(ObservationError, match=message):
        policy.infer(obs)


def test_checkpoint_errors(tmp_path, tiny_checkpoint):
    with pytest.raises(FileNotFoundError, match="norm_stats.json"):
        Policy.from_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="embodiment 'franka'"):
        Policy.from_checkpoint(tiny_checkpoint, embodiment="franka")
