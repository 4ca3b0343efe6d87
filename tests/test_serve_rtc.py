"""Real-time chunking: the soft mask, the guidance weight, Policy.infer with a prefix, and the
broker on a real tiny model."""

import math

import numpy as np
import pytest
import torch

from lingvla.serve.policy import ObservationError, Policy
from lingvla.serve.bench import run_broker, smooth_noise, smooth_source
from lingvla.serve.broker import Execution
from lingvla.model.sampling import guidance_weight
from lingvla.serve.rtc import RTCConfig, prefix_weights


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: oversubscription costs more than it gives
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def policy(tiny_checkpoint):
    return Policy.from_checkpoint(tiny_checkpoint)


def observation(seed=0):
    rng = np.random.default_rng(seed)
    return {"images": {c: rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
                       for c in ("top", "left_wrist", "right_wrist")},
            "state": rng.uniform(-1, 1, 14).astype(np.float32), "prompt": "transfer the cube"}


def test_soft_mask_is_the_papers():
    w = prefix_weights(10, 6, 2)
    c = (6 - np.arange(2, 6)) / 5
    np.testing.assert_allclose(w, [1, 1, *(c * (np.exp(c) - 1) / (math.e - 1)), 0, 0, 0, 0])
    assert np.all(np.diff(w) <= 0) and 0 < w[5] < w[2] < 1
    np.testing.assert_allclose(prefix_weights(10, 6, 2, "linear")[2:6], c)
    np.testing.assert_array_equal(prefix_weights(10, 6, 2, "hard"), [1, 1, 0, 0, 0, 0, 0, 0, 0, 0])
    with pytest.raises(ValueError, match="delay"):
        prefix_weights(10, 3, 4)


def test_guidance_weight():
    assert guidance_weight(0.5, 5.0) == pytest.approx(2.0)  # ((1-t)^2 + t^2) / (t (1-t))
    assert guidance_weight(1.0, 5.0) == 5.0 and guidance_weight(0.05, 5.0) == 5.0
    assert guidance_weight(0.3, 100.0) == pytest.approx((0.49 + 0.09) / 0.21)


@pytest.mark.parametrize("method", ["guidance", "inpaint"])
def test_infer_with_prefix_freezes_and_follows_the_prefix(policy, method):
    obs = observation()
    noise = torch.randn(1, 50, 32, generator=torch.Generator().manual_seed(1))
    previous = policy.infer(obs, noise=torch.randn(1, 50, 32, generator=torch.Generator().manual_seed(2)))["actions"]
    prefix, d = previous[20:], 4  # 30 planned actions, 4 of them committed
    free = policy.infer(obs, noise=noise)["actions"]
    out = policy.infer(obs, noise=noise, prefix_actions=prefix, prefix_delay=d, rtc=RTCConfig(method=method))["actions"]
    assert out.shape == (50, 14) and out.dtype == np.float32
    np.testing.assert_array_equal(out[:d], prefix[:d])  # committed actions: exactly
    # The soft region is pulled toward the plan (most where the weights are high); the tail is free.
    scale = policy.normalizer.scale["action"]
    err = lambda a: np.abs((a[d:12] - prefix[d:12]) / scale).mean()  # noqa: E731
    assert err(out) < 0.3 * err(free)
    assert not np.allclose(out[30:], prefix[-1])
    # Without a prefix, nothing changed.
    np.testing.assert_array_equal(policy.infer(obs, noise=noise)["actions"], free)


@pytest.mark.parametrize("prefix, delay, words", [
    (np.zeros((5, 13), np.float32), 0, r"shape \[k, 14\]"),
    (np.zeros((51, 14), np.float32), 0, r"1 <= k <= 50"),
    (np.full((5, 14), np.nan, np.float32), 0, "NaN or inf"),
    (np.zeros((5, 14), np.float32), 6, r"prefix_delay must be in \[0, 5\]"),
    (np.zeros((5, 14), np.float32), 1.5, "must be an int"),
    (np.array([["a"] * 14]), 0, "numeric"),
])
def test_bad_prefixes_are_observation_errors(policy, prefix, delay, words):
    with pytest.raises(ObservationError, match=words):
        policy.infer(observation(), prefix_actions=prefix, prefix_delay=delay)


def test_rtc_shrinks_boundary_jumps_on_a_real_tiny_model(policy):
    """Random tiny model fed time-correlated noise: chunks are smooth inside and differ across
    calls, so naive asynchronous switching jumps and RTC should not."""
    obs = observation()
    jumps = {}
    for label, mode, rtc in (("async", "chunk", None), ("guidance", "rtc", RTCConfig("guidance")),
                             ("inpaint", "rtc", RTCConfig("inpaint"))):
        broker = run_broker(smooth_source(policy, 0, 6.0, rtc=rtc), obs, 100,
                            Execution(mode, execute_horizon=25, delay=5, rtc=rtc))
        actions = np.stack(broker.actions)
        assert broker.switches == [0, 30, 55, 80]
        k = np.array(broker.switches[1:])
        jumps[label] = np.linalg.norm(actions[k] - actions[k - 1], axis=-1)
        steps = np.linalg.norm(np.diff(actions, axis=0), axis=-1)
        jumps[label + "_within"] = np.delete(steps, k - 1).mean()
    assert jumps["async"].mean() > 4 * jumps["async_within"]
    for method in ("guidance", "inpaint"):
        assert jumps[method].mean() < 0.25 * jumps["async"].mean()
        assert jumps[method].max() < 3 * jumps[method + "_within"]


def test_smooth_noise_is_smooth_and_unit_variance():
    n = smooth_noise(0, 50, 32)[0].numpy()
    assert n.shape == (50, 32) and 0.6 < n.std() < 1.4
    assert np.abs(np.diff(n, axis=0)).mean() < 0.3 * np.abs(n).mean()
